"""ResourceLimits: what one task may use. A request sets them (resources), the config gives
the defaults for models (ml.resource_limits), the sandbox enforces them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResourceLimits:
    cpu_limit: float | None = None  # cores, > 0
    memory_limit: int | None = None  # bytes, > 0
    disk_limit: int | None = None  # bytes, > 0
    gpu_limit: int | None = None  # >= 0
    max_pids: int | None = None  # processes and threads at once; None: tasks.max_pids
    gpu_memory: int | None = None  # bytes of one shared GPU's memory (instead of gpu_limit whole GPUs)


# The kernel's PID_MAX_LIMIT: no pids.max / TasksMax above it means anything.
PIDS_CEILING = 4_194_304
