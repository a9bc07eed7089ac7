"""Ray start-up and a parallel map over Ray tasks with a progress bar."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable, Sequence

import ray

from scaling.progress import bar

POLL_S = 0.25  # Ray Train's worker poll on a local instance (seconds)
# glibc malloc: keep freed memory for reuse (``reuse_freed_memory``); the largest mmap
# threshold glibc accepts on 64-bit, and a trim threshold no step's churn reaches
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 << 20, 1 << 30
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
}


def reuse_freed_memory() -> bool:
    """Make glibc's allocator keep the memory a process frees for its next allocations.

    By default glibc serves every block over 128 KiB-32 MiB (a dynamic threshold) with a
    fresh ``mmap`` and returns it on ``free``, and trims the heap's top above 128 KiB: a
    training step of cpu-xs (64 px, batch 32) then page-faults ~3,700-4,400 fresh pages,
    and measured 10-19% slower than with these settings (3-30 faults a step). The same
    settings as ``MALLOC_*_`` variables reach the processes of a local Ray instance
    (``init_ray``); this call makes them hold in a process already running. A process's
    memory then stays near its peak instead of shrinking between steps. Returns whether
    the allocator took them (False off glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    return bool(
        mallopt(m_mmap_threshold, MMAP_THRESHOLD) and mallopt(m_trim_threshold, TRIM_THRESHOLD)
    )


def init_ray(num_cpus: int | None = None, logs: bool = True) -> None:
    """Join the cluster named by RAY_ADDRESS (``ray job submit`` sets it), else start a local
    instance. The dashboard is off for local tool runs; nothing binds a public address.
    ``logs=False`` keeps the workers' output in Ray's session logs, off this terminal."""
    if ray.is_initialized():
        return
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # progress bars, not log lines
    address = os.environ.get("RAY_ADDRESS")
    quiet = dict(log_to_driver=logs, logging_level=logging.WARNING)  # our own output leads
    if address:
        ray.init(address=address, **quiet)
    else:
        # a local instance runs short jobs back to back (a ladder, the demo): Ray Train's
        # controller polls its workers every 2 s by default, which cost about 5 s per run
        # here (start and end each wait on polls); its processes inherit this setting
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(POLL_S))
        for key, value in MALLOC_ENV.items():  # read by glibc as each process starts
            os.environ.setdefault(key, value)
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)


def parallel_map(
    fn: Callable, args: Sequence[tuple], desc: str, num_cpus: float = 1.0, progress: bool = True
) -> list:
    """``[fn(*a) for a in args]`` as Ray tasks, results in order, a bar as they finish."""
    init_ray()
    remote = ray.remote(num_cpus=num_cpus, max_retries=2)(fn)
    refs = [remote.remote(*a) for a in args]
    where = {ref: i for i, ref in enumerate(refs)}
    results: list = [None] * len(refs)
    pending = list(refs)
    with bar(total=len(refs), desc=desc, unit="task", enabled=progress) as b:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results[where[done[0]]] = ray.get(done[0])
            b.update()
    return results
