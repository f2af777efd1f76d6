"""The fields a task body is made of (POST /api/tasks, POST /api/ml/models), declared once
with their limits and wording, and the checks a declaration cannot express (sizes, durations,
path components, blank text) that turn them into what a task records."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from cnetd.bodies.describe import NO_NUL
from cnetd.config import ConfigError, parse_duration, parse_size
from cnetd.errors import Invalid
from cnetd.limits import PIDS_CEILING, ResourceLimits

# (?!\n) before $: Python's $ also matches before a final newline ("name\n" must fail).
NAME_PATTERN = re.compile(r"^[\w][\w .:@+-]{0,127}(?!\n)$")
MAX_TEXT = 4096
MAX_ARGS = 256
MAX_ARG_CHARS = 8192
MAX_ENV = 256
MAX_PATH_COMPONENT = 255  # bytes: the longest file name

NAME_RULE = "1-128 characters: letters, digits, space and _ . : @ + -, starting with a letter or digit"
Name = Annotated[str, Meta(
    pattern=NAME_PATTERN.pattern, max_length=128, description=NAME_RULE,
    extra={"required": "is required and must be a non-empty string", "invalid": f"must be {NAME_RULE}"},
)]
Text = Annotated[str, Meta(max_length=MAX_TEXT, pattern=NO_NUL)]
RequiredText = Annotated[str, Meta(min_length=1, max_length=MAX_TEXT, pattern=NO_NUL)]
PATH_RULE = f"a path; each /-separated component at most {MAX_PATH_COMPONENT} bytes"
PathText = Annotated[Text, Meta(description=PATH_RULE)]
RequiredPathText = Annotated[RequiredText, Meta(description=PATH_RULE)]
Args = Annotated[list[Annotated[str, Meta(max_length=MAX_ARG_CHARS, pattern=NO_NUL)]], Meta(max_length=MAX_ARGS)]
EnvName = Annotated[str, Meta(pattern=r"^[^=\x00]+$", extra={"invalid": "is not a valid environment variable name"})]
Env = Annotated[dict[EnvName, Annotated[str, Meta(pattern=NO_NUL)]], Meta(max_length=MAX_ENV)]
Size = Annotated[
    Annotated[int, Meta(ge=1)] | Annotated[float, Meta(ge=1, multiple_of=1)] | Annotated[str, Meta(min_length=1)],
    Meta(
        description='bytes, or a size like "512MB" (10^6 bytes), "512MiB" or "512M" (2^20), "1.5G"',
        extra={"invalid": 'must be a whole number of bytes > 0 or a size like "512MB"'},
    ),
]
Duration = Annotated[
    Annotated[float, Meta(gt=0)] | Annotated[str, Meta(min_length=1)],
    Meta(
        description='seconds, or a duration like "30s", "5m", "1h30m"',
        extra={"invalid": 'must be a duration like "30s" or a number of seconds > 0'},
    ),
]
NodeId = Annotated[str, Meta(description="run it on this node of the cluster (GET /api/nodes); omitted: on this node")]
PlacementField = Annotated[
    Literal["auto"] | dict[str, Any],
    Meta(
        description='where in the cluster the scheduler places it: "auto", {"node_id": "..."} or '
                    '{"labels": {"region": "...", ...}} (every label must match); omitted: on this node',
        extra={"invalid": 'must be "auto", {"node_id": "..."} or {"labels": {...}}'},
    ),
]


class ResourcesBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """What the task may use. A limit left out takes the default (none for a process task,
    ml.resource_limits for a model); null removes it."""

    cpu_limit: Annotated[float, Meta(
        gt=0, le=1024, description="cores", extra={"invalid": "must be a number of cores > 0 and at most 1024"},
    )] | UnsetType | None = UNSET
    memory_limit: Size | UnsetType | None = UNSET
    disk_limit: Annotated[Size, Meta(description="bytes the task may write")] | UnsetType | None = UNSET
    gpu_limit: Annotated[int, Meta(
        ge=0, description="whole GPUs of its own (CUDA_VISIBLE_DEVICES names them by UUID); more than are free: it waits",
        extra={"invalid": "must be a whole number >= 0"},
    )] | UnsetType | None = UNSET
    gpu_memory: Annotated[Size, Meta(
        description="instead of gpu_limit: this much memory of one shared GPU, enforced from NVML's per-process accounting",
    )] | UnsetType | None = UNSET
    max_pids: Annotated[int, Meta(
        ge=1, le=PIDS_CEILING,
        description="processes and threads the task may have at once; at most tasks.max_pids, which is also the default",
        extra={"invalid": f"must be a whole number of processes from 1 to {PIDS_CEILING}"},
    )] | UnsetType | None = UNSET

    def limits(self, base: ResourceLimits, key: str = "resources") -> ResourceLimits:
        """base with the limits this body sets (or removes)."""
        cpu = base.cpu_limit if self.cpu_limit is UNSET else self.cpu_limit
        memory = base.memory_limit if self.memory_limit is UNSET else self.memory_limit
        disk = base.disk_limit if self.disk_limit is UNSET else self.disk_limit
        return ResourceLimits(
            cpu_limit=None if cpu is None else float(cpu),
            memory_limit=None if memory is None else size(f"{key}.memory_limit", memory),
            disk_limit=None if disk is None else size(f"{key}.disk_limit", disk),
            gpu_limit=base.gpu_limit if self.gpu_limit is UNSET else self.gpu_limit,
            max_pids=base.max_pids if self.max_pids is UNSET else self.max_pids,
            gpu_memory=gpu_memory(f"{key}.gpu_memory", base.gpu_memory if self.gpu_memory is UNSET else self.gpu_memory),
        )


def gpu_memory(field: str, value: int | float | str | None) -> int | None:
    return None if value is None else size(field, value)


def resource_limits(body: ResourcesBody | None, base: ResourceLimits) -> ResourceLimits:
    return base if body is None else body.limits(base)


def size(field: str, value: int | float | str) -> int:
    if type(value) is int:
        return value  # >= 1, as declared
    try:
        number = parse_size(int(value) if isinstance(value, float) else value, field)
    except ConfigError as exc:
        raise Invalid(field, str(exc).split(": ", 1)[-1]) from None
    except OverflowError:  # "999...9" past a float's range
        raise Invalid(field, "is too large") from None
    if number <= 0:
        raise Invalid(field, f"must be > 0 bytes, got {number}")
    return number


def seconds(field: str, value: float | str | None) -> float | None:
    if value is None:
        return None
    try:
        number = parse_duration(value, field)
    except ConfigError as exc:
        raise Invalid(field, str(exc).split(": ", 1)[-1]) from None
    if not math.isfinite(number):  # "999...9" past a float's range
        raise Invalid(field, "is too large")
    if number <= 0:
        raise Invalid(field, "must be > 0")
    return number


def not_blank(field: str, value: str) -> str:
    if not value.strip():
        raise Invalid(field, "must not be empty")
    return value


def short_components(field: str, value: str) -> str:
    if len(value) * 4 <= MAX_PATH_COMPONENT:
        return value  # no component can be longer: UTF-8 takes at most 4 bytes a character
    if any(len(part.encode()) > MAX_PATH_COMPONENT for part in value.split("/")):
        raise Invalid(field, f"has a path component longer than {MAX_PATH_COMPONENT} bytes")
    return value
