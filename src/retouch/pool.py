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
other machines Ray ends a driver's actors with it). Ray started here ("local") ends its own servers
with the driver, but its agents outlive a killed driver by a minute (they report the raylet's death
to the GCS server, gone too, with a fixed 60 s timeout; docs/batch.md); on Linux a reaper process,
the driver's child, notes the processes started under the driver while Ray runs and kills them once
the driver is gone.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import subprocess
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


def _stat(pid: int) -> list[str] | None:
    """A live process's /proc/PID/stat fields after its name (state, ppid, ...), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):  # no such process (or it ended while read)
        return None
    return None if fields[0] == "Z" else fields


def _descendants(root: int) -> dict[int, str]:
    """pid → start time (field 22 of /proc/PID/stat) of every live process under `root`."""
    stats = {int(d.name): _stat(int(d.name)) for d in Path("/proc").glob("[0-9]*")}
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(pid)
    found, todo = {}, [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            found[pid] = stats[pid][19]
            todo.append(pid)
    return found


def reap(parent: int) -> None:
    """Run as `parent`'s child, stdin a pipe from it: note the processes started under `parent`
    since, every WATCH_SECONDS; at the pipe's end SIGKILL those still alive, unless `parent` wrote
    "q" first (it ended them itself)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the parent's signals are not ours
        signal.signal(sig, signal.SIG_IGN)
    old = set(_descendants(parent)) | {os.getpid()}
    seen: dict[int, str] = {}
    while True:
        if select.select([0], [], [], WATCH_SECONDS)[0]:
            said = os.read(0, 16)
            if b"q" in said:
                return
            if not said:  # the parent is gone
                break
        seen |= {pid: t for pid, t in _descendants(parent).items() if pid not in old}
    for pid, started in seen.items():
        fields = _stat(pid)
        if fields is not None and fields[19] == started:  # that process, not a later one with its pid
            os.kill(pid, signal.SIGKILL)


def _start_reaper(source_root: str) -> subprocess.Popen | None:
    """A reaper (see `reap`) for this process, on Linux; None elsewhere."""
    if not Path(f"/proc/{os.getpid()}/stat").is_file():
        return None
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": source_root + (os.pathsep + path if path else "")}
    cmd = [sys.executable, "-m", "retouch.pool", str(os.getpid())]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, env=env)


def _stop_reaper(reaper: subprocess.Popen | None) -> None:
    if reaper is not None:
        reaper.communicate(b"q")


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
    reaper = _start_reaper(source_root) if address == "local" else None  # Ray's processes die with us
    try:
        ray.init(
            address=None if address == "local" else address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": {"PYTHONPATH": source_root + os.pathsep}},
        )
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n = gpus or workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        actor = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)(_Actor)
        driver = (socket.gethostname(), os.getpid())
        pool = ActorPool([actor.remote(init, driver) for _ in range(n)])
        yield from pool.map_unordered(lambda a, task: a.run.remote(work, task), tasks)
    finally:
        ray.shutdown()
        _stop_reaper(reaper)


def map_unordered(
    work: Callable, tasks: list, init: Callable, workers: int = 1, ray_address: str | None = None
) -> Iterator:
    """work(state, task) for every task, results as they finish: on Ray when `ray_address` is
    given, else on `workers` local processes."""
    if ray_address:
        return run_ray(work, tasks, init, ray_address, workers)
    return run_local(work, tasks, init, workers)


if __name__ == "__main__":  # the reaper: python -m retouch.pool PARENT_PID
    reap(int(sys.argv[1]))
