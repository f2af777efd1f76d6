"""The hand-written body checks as they were on main at 8526a92 (cnetd/tasks/request.py and
the structural half of ModelService.parse_deployment), kept only as the baseline of
bench/body_validation.py. Not used by the agent."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from cnetd.config import ConfigError, parse_duration, parse_size
from cnetd.errors import Invalid
from cnetd.limits import ResourceLimits
from cnetd.ml.bodies import kind_from_args
from cnetd.security.identity import model_owner
from cnetd.tasks.request import NewTask

NAME_PATTERN = re.compile(r"^[\w][\w .:@+-]{0,127}$")
MAX_ARGS = 256
MAX_ARG_CHARS = 8192
MAX_ENV = 256

def require_object(body: Any, what: str = "body") -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise Invalid(what, f"must be a JSON object, got {json_type(body)}")
    return body


def reject_unknown(body: Mapping[str, Any], allowed: set[str], prefix: str = "") -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Invalid(prefix + unknown[0], f"unknown field (allowed: {', '.join(sorted(allowed))})")


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def name_field(body: Mapping[str, Any], key: str = "name") -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise Invalid(key, "is required and must be a non-empty string")
    if not NAME_PATTERN.match(value):
        raise Invalid(key, "must be 1-128 characters: letters, digits, space and _ . : @ + -, starting with a letter or digit")
    return value


def string_field(body: Mapping[str, Any], key: str, *, required: bool, default: str = "", max_len: int = 4096) -> str:
    value = body.get(key)
    if value is None:
        if required:
            raise Invalid(key, "is required")
        return default
    if not isinstance(value, str):
        raise Invalid(key, f"must be a string, got {json_type(value)}")
    if required and not value.strip():
        raise Invalid(key, "must not be empty")
    if len(value) > max_len or "\x00" in value:
        raise Invalid(key, f"must be at most {max_len} characters with no NUL")
    return value


def path_field(body: Mapping[str, Any], key: str, *, required: bool, default: str = "") -> str:
    """A path: a string whose every component fits a file name (255 bytes)."""
    value = string_field(body, key, required=required, default=default)
    if any(len(part.encode()) > 255 for part in value.split("/")):
        raise Invalid(key, "has a path component longer than 255 bytes")
    return value


def finite_number(value: Any) -> float | None:
    """value as a finite float, or None when it is not a JSON number (or too large)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def args_field(body: Mapping[str, Any], key: str = "args") -> list[str]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise Invalid(key, f"must be an array of strings, got {json_type(value)}")
    if len(value) > MAX_ARGS:
        raise Invalid(key, f"must have at most {MAX_ARGS} items")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise Invalid(f"{key}[{i}]", f"must be a string, got {json_type(item)}")
        if len(item) > MAX_ARG_CHARS or "\x00" in item:
            raise Invalid(f"{key}[{i}]", f"must be at most {MAX_ARG_CHARS} characters with no NUL")
    return list(value)


def env_field(body: Mapping[str, Any], key: str = "env") -> dict[str, str]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise Invalid(key, f"must be an object of string values, got {json_type(value)}")
    if len(value) > MAX_ENV:
        raise Invalid(key, f"must have at most {MAX_ENV} variables")
    env = {}
    for name, item in value.items():
        if not name or "=" in name or "\x00" in name:
            raise Invalid(f"{key}.{name}", "is not a valid environment variable name")
        if not isinstance(item, str):
            raise Invalid(f"{key}.{name}", f"must be a string, got {json_type(item)}")
        if "\x00" in item:
            raise Invalid(f"{key}.{name}", "must not contain NUL")
        env[name] = item
    return env


def resources_field(
    body: Mapping[str, Any], defaults: ResourceLimits | None = None, key: str = "resources"
) -> ResourceLimits:
    value = body.get(key)
    base = defaults or ResourceLimits()
    if value is None:
        return base
    if not isinstance(value, Mapping):
        raise Invalid(key, f"must be an object, got {json_type(value)}")
    reject_unknown(value, {"cpu_limit", "memory_limit", "disk_limit", "gpu_limit"}, prefix=f"{key}.")
    cpu = value.get("cpu_limit", base.cpu_limit)
    if cpu is not None:
        cores = finite_number(cpu)
        if cores is None or cores <= 0 or cores > 1024:
            raise Invalid(f"{key}.cpu_limit", f"must be a number of cores > 0 and at most 1024, got {cpu!r}")
        cpu = cores
    sizes = {}
    for name in ("memory_limit", "disk_limit"):
        item = value.get(name, getattr(base, name))
        if item is not None:
            if isinstance(item, bool) or (isinstance(item, float) and not item.is_integer()):
                raise Invalid(f"{key}.{name}", f"must be a whole number of bytes or a size like \"512MB\", got {item!r}")
            try:
                item = parse_size(int(item) if isinstance(item, float) else item, f"{key}.{name}")
            except ConfigError as exc:
                raise Invalid(f"{key}.{name}", str(exc).split(": ", 1)[-1]) from None
            if item <= 0:
                raise Invalid(f"{key}.{name}", f"must be > 0 bytes, got {item}")
        sizes[name] = item
    gpu = value.get("gpu_limit", base.gpu_limit)
    if gpu is not None and (isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0):
        raise Invalid(f"{key}.gpu_limit", f"must be a whole number >= 0, got {gpu!r}")
    return ResourceLimits(cpu_limit=cpu, memory_limit=sizes["memory_limit"], disk_limit=sizes["disk_limit"], gpu_limit=gpu)


def timeout_field(body: Mapping[str, Any], key: str = "timeout") -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise Invalid(key, "must be a duration like \"30s\" or a number of seconds")
    try:
        seconds = parse_duration(value, key)
    except ConfigError as exc:
        raise Invalid(key, str(exc).split(": ", 1)[-1]) from None
    if seconds <= 0:
        raise Invalid(key, "must be > 0")
    return seconds


TASK_FIELDS = {"name", "type", "command", "args", "env", "working_dir", "resources", "timeout"}


def parse_new_task(body: Any) -> NewTask:
    """The original's POST /api/tasks body: {name, type, command, args, env, working_dir, resources}."""
    body = require_object(body)
    reject_unknown(body, TASK_FIELDS)
    type_ = body.get("type", "process")
    if type_ != "process":
        raise Invalid("type", f"must be \"process\" here (ML models are deployed with POST /api/ml/models), got {type_!r}")
    return NewTask(
        name=name_field(body),
        command=string_field(body, "command", required=True),
        args=args_field(body),
        env=env_field(body),
        working_dir=path_field(body, "working_dir", required=False, default="."),
        resources=resources_field(body),
        timeout=timeout_field(body),
    )


DEPLOY_FIELDS = {
    "name", "model_type", "model_path", "script_path", "command", "args", "working_dir", "env",
    "resources", "timeout", "serving",
}


def parse_deployment_task(body: Any, defaults: ResourceLimits) -> NewTask:
    """ModelService.parse_deployment at 8526a92 without its file-system checks (unchanged)."""
    body = require_object(body)
    reject_unknown(body, DEPLOY_FIELDS)
    name = name_field(body)
    model_type = string_field(body, "model_type", required=False, default="custom", max_len=64)
    model_path = path_field(body, "model_path", required=True)
    script_path = path_field(body, "script_path", required=True)
    command = string_field(body, "command", required=False, default="python3")
    args = args_field(body) or [script_path, "train", model_path]
    working_dir = path_field(body, "working_dir", required=False, default=".")
    env = env_field(body)
    env["MODEL_PATH"] = model_path
    env["MODEL_TYPE"] = model_type
    return NewTask(
        name=name, command=command, args=args, env=env, working_dir=working_dir,
        resources=resources_field(body, defaults=defaults), timeout=timeout_field(body),
        type="ml_model", kind=kind_from_args(args), identity_owner=model_owner(name),
    )
