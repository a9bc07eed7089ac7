"""Ray start-up and a parallel map over Ray tasks with a progress bar."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import ray

from scaling.progress import bar

POLL_S = 0.25  # Ray Train's worker poll on a local instance (seconds)


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
