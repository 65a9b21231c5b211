"""Running tasks on workers that each load a state once (a model): a local process pool
(concurrent.futures, spawned processes) or Ray actors on a cluster. The batch editor and the
benchmark use the same two engines.

    for result in map_unordered(work, tasks, init, workers=2):            # local processes
    for result in map_unordered(work, tasks, init, ray_address="local"):  # Ray on this machine

`init()` runs once per worker and returns its state; `work(state, task)` runs per task. Both must
be picklable (module-level functions, frozen dataclasses with __call__).

Workers live no longer than the process that started them: a local worker asks Linux for SIGKILL
when its parent dies (prctl PR_SET_PDEATHSIG) and, on any system, a watchdog thread ends it once
its parent is gone; a Ray actor on the driver's machine watches the driver's pid the same way (on
other machines Ray ends a driver's actors with it).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_SECONDS = 1.0  # how often a worker's watchdog looks for its parent

_STATE: dict = {}  # a local worker process's state, made by its first task (errors reach the caller)


def _call(work: Callable, init: Callable, task):
    if init not in _STATE:
        _STATE[init] = init()
    return work(_STATE[init], task)


def _watch(gone: Callable[[], bool]) -> None:
    while not gone():
        time.sleep(WATCH_SECONDS)
    os._exit(1)  # the parent is gone: no clean-up, no result to give


def die_with_parent(parent: int) -> None:
    """End this process when `parent` (its parent's pid) ends: the kernel's parent-death signal on
    Linux, and a daemon thread that sees the parent replaced (the process re-parented)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # no libc prctl: the watchdog alone
            pass
    gone = lambda: os.getppid() != parent
    if gone():  # died before the signal was asked for
        os._exit(1)
    threading.Thread(target=_watch, args=(gone,), daemon=True, name="retouch-parent-watch").start()


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def run_local(work: Callable, tasks: list, init: Callable, workers: int) -> Iterator:
    """Each task's result as it finishes, from `workers` spawned processes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),)
    ) as pool:
        futures = [pool.submit(_call, work, init, task) for task in tasks]
        for future in as_completed(futures):
            yield future.result()


class _Actor:
    """A Ray actor: its state made once, then any number of tasks. On the driver's machine it ends
    when the driver does (`driver`: (host name, pid))."""

    def __init__(self, init: Callable, driver: tuple[str, int] | None = None):
        if driver is not None and driver[0] == socket.gethostname():
            gone = lambda: _pid_gone(driver[1])
            threading.Thread(target=_watch, args=(gone,), daemon=True, name="retouch-driver-watch").start()
        self.state = init()

    def run(self, work: Callable, task):
        return work(self.state, task)


def run_ray(
    work: Callable, tasks: list, init: Callable, address: str, workers: int | None = None
) -> Iterator:
    """Each task's result as it finishes, from Ray actors (one per GPU where the cluster has GPUs,
    else `workers`, else one per CPU). address: a cluster's, or "local" to start Ray here."""
    import ray
    from ray.util import ActorPool

    source_root = str(Path(__file__).resolve().parents[1])  # the workers import this retouch
    ray.init(
        address=None if address == "local" else address,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": source_root + os.pathsep}},
    )
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n = gpus or workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        actor = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)(_Actor)
        driver = (socket.gethostname(), os.getpid())
        pool = ActorPool([actor.remote(init, driver) for _ in range(n)])
        yield from pool.map_unordered(lambda a, task: a.run.remote(work, task), tasks)
    finally:
        ray.shutdown()


def map_unordered(
    work: Callable, tasks: list, init: Callable, workers: int = 1, ray_address: str | None = None
) -> Iterator:
    """work(state, task) for every task, results as they finish: on Ray when `ray_address` is
    given, else on `workers` local processes."""
    if ray_address:
        return run_ray(work, tasks, init, ray_address, workers)
    return run_local(work, tasks, init, workers)
