"""The one timer: wall-clock seconds, read after synchronising the device."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager

import torch


def sync(device) -> None:
    """Wait for the device's queued work (CUDA), so that the clock measures it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall-clock seconds per named phase (`with timer("decode"): ...`), synchronised."""

    def __init__(self, device):
        self.device, self.times = torch.device(device), {}

    @contextmanager
    def __call__(self, name: str, when: bool = True):
        """Time the block as phase `name` (when `when` is false, run it untimed: work skipped)."""
        if not when:
            yield
            return
        sync(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0


def timed(fn: Callable, device, calls=None):
    """(fn(), seconds, UNet evaluations or None): `calls` a denoiser.UNetCalls, counted from zero."""
    if calls is not None:
        calls.reset()
    timer = Timer(device)
    with timer("run"):
        out = fn()
    return out, timer.times["run"], (calls.take() if calls is not None else None)
