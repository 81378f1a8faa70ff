"""Joining or starting Ray for a job, the same way for every command that runs on Ray Data."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def ray_for_job(address: str | None, num_cpus: int) -> Iterator[None]:
    """Join the cluster at `address` (or the one `ray job submit` names in RAY_ADDRESS), else start a local
    instance of `num_cpus` CPUs. An instance started here is stopped here: its workers then always see this
    process's environment (object-storage credentials among it), not that of an earlier run."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        yield
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)  # None: Ray reads RAY_ADDRESS
    else:
        # WARNING: "Started a local Ray instance" is Ray's news, not the user's.
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


def quiet_ray_data() -> None:
    """Keep Ray Data's own console lines (execution plan, start, "progress bars disabled", its bars) off the user's
    screen: our commands show their own progress bar over what a person waits for. Ray's logs keep everything."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def size_thread_pools(cpus: float) -> int:
    """Size this process's OpenCV and torch thread pools to the `cpus` Ray granted its actor (at least one
    thread); returns the thread count. Call it in an actor's constructor.

    Each library otherwise sizes its pool to the whole machine, and Ray's OMP_NUM_THREADS reaches neither
    OpenCV's pool nor one already made. Measured on a 16-core machine: 16 one-CPU preprocessing actors, each
    with machine-sized pools, spent 2.8x the CPU time of 4 actors on the same videos (waiting threads spin)
    and were only 1.1x as fast. torch is resized only where it is imported already; one imported later sizes its
    pool from OMP_NUM_THREADS, set here, so actors that never use it (decoders, sample writers) never load it.
    """
    import cv2

    threads = max(1, math.floor(cpus))
    cv2.setNumThreads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads


def train_runtime_env(joins_cluster: bool) -> dict:
    """The runtime environment of a training job's Ray workers.

    On an instance of one machine, started for the run, Ray Train's preemption watcher has no node that could be
    drained, and its actor's start logs a core_worker line about restartable constructor arguments (Ray issue
    53727) on the user's screen: it is switched off there, unless the user set its switch. On a cluster it stays.
    """
    env_vars = {}
    if not joins_cluster:
        env_vars["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    return {"worker_process_setup_hook": quiet_ray_train_workers, "env_vars": env_vars}


def quiet_ray_train_workers() -> None:
    """Keep two of Ray Train's chatty loggers off the user's screen; a `worker_process_setup_hook`: it runs in
    every worker.

    - The placement-group cleaner warns every second when it cannot reach the State API, which Ray's dashboard
      serves and a Ray instance started without it (the minimal `ray` install) lacks. It only matters when the
      controller dies uncleanly, and such a local instance is shut down with the run anyway.
    - Every rank logs "Reporting training result ..." at INFO at every report, through a logger named by its
      module's file path (not under `ray.train`, so `RunConfig(logging_config=...)` does not reach it).
    """
    import logging
    import os

    import ray

    # With two local instances on one machine (two runs at once), the State API client finds both and the
    # cleaner's thread dies with "Found multiple active Ray instances"; name this worker's own.
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
    # The file's path as the module will see it, without importing ray.train into every worker of every job.
    context = os.path.join(os.path.dirname(ray.__file__), "train", "v2", "_internal", "execution", "context.py")
    logging.getLogger(context).setLevel(logging.WARNING)
