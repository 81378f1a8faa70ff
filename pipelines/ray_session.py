"""Joining or starting Ray for a job, the same way for every command that runs on Ray Data."""

from __future__ import annotations

import contextlib
import os
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
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
