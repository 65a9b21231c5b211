"""Running tasks on workers that each load a state once (a model): a local process pool
(concurrent.futures, spawned processes) or Ray actors on a cluster. The batch editor and the
benchmark use the same two engines.

    for result in map_unordered(work, tasks, init, workers=2):            # local processes
    for result in map_unordered(work, tasks, init, ray_address="local"):  # Ray on this machine

`init()` runs once per worker and returns its state; `work(state, task)` runs per task. Both must
be picklable (module-level functions, frozen dataclasses with __call__).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

_STATE: dict = {}  # a local worker process's state, made by its first task (errors reach the caller)


def _call(work: Callable, init: Callable, task):
    if init not in _STATE:
        _STATE[init] = init()
    return work(_STATE[init], task)


def run_local(work: Callable, tasks: list, init: Callable, workers: int) -> Iterator:
    """Each task's result as it finishes, from `workers` spawned processes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = [pool.submit(_call, work, init, task) for task in tasks]
        for future in as_completed(futures):
            yield future.result()


class _Actor:
    """A Ray actor: its state made once, then any number of tasks."""

    def __init__(self, init: Callable):
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
        pool = ActorPool([actor.remote(init) for _ in range(n)])
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
