"""Loading: the field table (every key described once, by its converter), the YAML reader,
``CNET_*`` environment overrides, and the assembly into a :class:`Config`.

Unknown keys are not fatal: they are collected in :attr:`Config.warnings`. Relative paths
in the file resolve against the directory of the file."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeAlias

import yaml

from cnetd.config import conversions as to
from cnetd.config.conversions import Conv, parse_size
from cnetd.config.model import (
    SECTION_CLASSES,
    Config,
    ConfigError,
    EventLoopKind,
    InstallerKind,
    LogFormat,
    LogLevel,
    SandboxKind,
    SchedulerStrategy,
    TlsSection,
)
from cnetd.config.secrets import assemble_cluster
from cnetd.limits import PIDS_CEILING

Spec: TypeAlias = dict[str, "Conv | Spec"]  # a nested dict is a nested mapping (port_range, resource_limits)

_SPEC: dict[str, Spec] = {
    "agent": {
        "address": to.text(),
        "port": to.integer(1, 65535),
        "node_id": to.text(empty_ok=True),
        "node_name": to.text(empty_ok=True),
        "region": to.text(),
        "datacenter": to.text(),
        "heartbeat": to.duration(),
        "state_dir": to.path,
        "advertise_url": lambda v, where: to.http_url(v, where, empty_ok=True),
        "allowed_hosts": lambda v, where: tuple(to.host(h, f"{where}[{i}]") for i, h in enumerate(to.strings(v, where))),
        "tls": {"cert_file": to.optional(to.path), "key_file": to.optional(to.path)},
        "labels": to.labels,
        "event_loop": to.choice(EventLoopKind),
    },
    "logging": {
        "level": to.choice(LogLevel, {"warning": "warn"}),
        "format": to.choice(LogFormat),
    },
    "discovery": {
        "enabled": to.boolean,
        "servers": lambda v, where: tuple(to.http_url(s, f"{where}[{i}]") for i, s in enumerate(to.strings(v, where))),
        "timeout": to.duration(),
        "retry": to.integer(0),
        "token": to.optional(to.text()),
    },
    "resources": {"cpu": to.boolean, "memory": to.boolean, "disk": to.boolean, "network": to.boolean, "interval": to.duration()},
    "tasks": {
        "max_concurrent": to.integer(1),
        "timeout": to.duration(allow_off=True),
        "cleanup": to.boolean,
        "sandbox": to.choice(SandboxKind),
        "stop_grace": to.duration(allow_zero=True),
        "max_pids": to.integer(1, PIDS_CEILING),
        "stop_on_exit": to.boolean,
        "allowed_commands": to.strings,
        "cgroup_group": to.text(),
        "slice": to.text(),
        "run_as": to.optional(lambda v, where: to.user_spec(v, where)),
        "uid_range": {"start": to.integer(1000, 2**31 - 2), "end": to.integer(1000, 2**31 - 2)},
        "retention": {
            "max_age": to.duration(allow_off=True),
            "max_tasks": to.bound(to.integer(0)),
            "interval": to.duration(),
        },
    },
    "logs": {
        "max_lines_per_task": to.bound(to.integer(0)),
        "max_bytes_per_task": to.bound(lambda v, where: parse_size(v, where)),
    },
    "ml": {
        "enabled": to.boolean,
        "engines": to.strings,
        "default_engine": to.text(),
        "model_path": to.path,
        "script_path": to.path,
        "port_range": {"start": to.integer(1, 65535), "end": to.integer(1, 65535)},
        "resource_limits": {
            "cpu_limit": to.optional(to.positive_float),
            "memory_limit": to.optional(to.positive_size),
            "disk_limit": to.optional(to.positive_size),
            "gpu_limit": to.optional(to.integer(0)),
            "gpu_memory": to.optional(to.positive_size),
            "max_pids": to.optional(to.integer(1, PIDS_CEILING)),
        },
        "timeout": to.duration(),
        "allowed_roots": lambda v, where: tuple(to.path(p, f"{where}[{i}]") for i, p in enumerate(_list(v, where))),
        "model_roots": lambda v, where: tuple(to.path(p, f"{where}[{i}]") for i, p in enumerate(_list(v, where))),
        "environments": {
            "max_idle": to.duration(allow_off=True),
            "installer": to.choice(InstallerKind),
            "build_timeout": to.duration(),
            "build_memory_limit": to.optional(to.positive_size),
        },
    },
    "auth": {
        "tokens": to.strings,
        "token_file": to.optional(to.path),
        "metrics_public": to.boolean,
    },
    "serving": {
        "max_request_bytes": to.positive_size,
        "grpc_port": to.optional(to.integer(1, 65535)),
        "rollup_interval": to.duration(),
        "rollup_retention": to.duration(allow_off=True),
        "memory_budget": to.optional(to.positive_size),
        "rollback_window": to.duration(allow_zero=True),
        "version_copies": to.boolean,
        "keep_versions": to.bound(to.integer(0, 1_000_000)),
        "busy_poll_us": to.integer(0, 100_000),
    },
    "gpus": {
        "enabled": to.boolean,
        "refresh": to.duration(),
        "device_dir": to.path,
        "simulate_file": to.optional(to.path),
    },
    "cluster": {
        "etcd": {
            "endpoints": to.etcd_endpoints,
            "username": to.optional(to.text()),
            "password_file": to.optional(to.path),
            "ca_file": to.optional(to.path),
            "cert_file": to.optional(to.path),
            "key_file": to.optional(to.path),
        },
        "lease_ttl": to.lease_ttl,
        "prefix": to.key_prefix,
        "token_file": to.optional(to.path),
        "scheduler": to.choice(SchedulerStrategy),
    },
}


def _list(v: Any, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise to.fail(where, "a list", v)
    return v


def _text_int(text: str) -> Any:
    return int(text) if re.fullmatch(r"[+-]?\d+", text.strip()) else text


# variable -> (section, key, how to read the text before the field's converter sees it)
_ENV: dict[str, tuple[str, str, Callable[[str], Any]]] = {
    "CNET_NODE_ID": ("agent", "node_id", str),
    "CNET_PORT": ("agent", "port", _text_int),
    "CNET_ADDRESS": ("agent", "address", str),
    "CNET_REGION": ("agent", "region", str),
    "CNET_DATACENTER": ("agent", "datacenter", str),
    "CNET_STATE_DIR": ("agent", "state_dir", lambda t: os.path.abspath(os.path.expanduser(t))),
    "CNET_LOG_LEVEL": ("logging", "level", str),
    "CNET_SANDBOX": ("tasks", "sandbox", str),
    "CNET_EVENT_LOOP": ("agent", "event_loop", str),
    "CNET_AUTH_TOKEN": ("auth", "tokens", lambda t: [t]),
    "CNET_DISCOVERY_TOKEN": ("discovery", "token", str),
    "CNET_GPU_SIMULATE_FILE": ("gpus", "simulate_file", str),
}


def _unknown(label: str, dotted: str, key: str, known: Any) -> str:
    msg = f"{label}: unknown key '{dotted}' (ignored)"
    close = difflib.get_close_matches(key, list(known), n=1) or [
        k for k in known if len(key) >= 3 and (k.startswith(key) or key.startswith(k))  # cpu -> cpu_limit
    ]
    return msg + (f"; did you mean '{close[0]}'?" if close else "")


def _parse_mapping(
    raw: Any, spec: Spec, label: str, prefix: str, warnings: list[str], strict: bool
) -> dict[str, Any]:
    """Check one mapping against its spec; returns only the keys that were given, typed."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{label}: {prefix}: must be a mapping, got {to.show(raw)}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}"
        conv = spec.get(key) if isinstance(key, str) else None
        if conv is None:
            message = _unknown(label, dotted, str(key), spec)
            if strict:
                raise ConfigError(message.replace(" (ignored)", ""))
            warnings.append(message)
        elif isinstance(conv, dict):
            out[key] = _parse_mapping(value, conv, label, dotted, warnings, strict)
        else:
            out[key] = conv(value, f"{label}: {dotted}")
    return out


# Keys of the original agent's file that are checked and kept but act on nothing here: model
# scripts name their interpreter in "command", and warm workers talk over Unix sockets, not
# ports. A file that sets one gets a start-up warning saying so.
COMPATIBILITY_ONLY = ("ml.engines", "ml.default_engine", "ml.port_range")


# Keys of the original agent's parent/child tree, which etcd replaced: checked, kept, unused.
REPLACED_BY_CLUSTER = {"discovery": "cluster.etcd", "agent.heartbeat": "cluster.lease_ttl"}


def _compatibility_warnings(values: Mapping[str, Mapping[str, Any]], label: str) -> list[str]:
    given = [f"{section}.{key}" for section, keys in values.items() for key in keys]
    warnings = [f"{label}: {key}: accepted for compatibility, has no effect" for key in COMPATIBILITY_ONLY if key in given]
    for old, new in REPLACED_BY_CLUSTER.items():
        keys = [key for key in given if key == old or key.startswith(old + ".")]
        if keys:
            warnings.append(f"{label}: {', '.join(keys)}: replaced by {new}, ignored "
                            "(see the cluster section of docs/config-reference.md)")
    return warnings


def _parse_document(data: Any, label: str, warnings: list[str], strict: bool) -> dict[str, dict[str, Any]]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{label}: top level must be a mapping of sections, got {to.show(data)}")
    values: dict[str, dict[str, Any]] = {}
    for name, raw in data.items():
        if name not in _SPEC:
            message = _unknown(label, str(name), str(name), _SPEC)
            if strict:
                raise ConfigError(message.replace(" (ignored)", ""))
            warnings.append(message)
            continue
        values[name] = _parse_mapping(raw, _SPEC[name], label, name, warnings, strict)
    warnings += _compatibility_warnings(values, label)
    return values


def _apply_env(values: dict[str, dict[str, Any]], environ: Mapping[str, str]) -> None:
    for var, (section, key, read) in _ENV.items():
        text = environ.get(var, "")
        if text.strip():  # an empty variable counts as unset
            conv = _SPEC[section][key]
            assert not isinstance(conv, dict)
            values.setdefault(section, {})[key] = conv(read(text), f"environment: {var}")


def _section(cls: type, given: Mapping[str, Any], **defaults: Any) -> Any:
    base = cls(**defaults)
    merged = {
        k: dataclasses.replace(getattr(base, k), **v) if isinstance(v, dict) and dataclasses.is_dataclass(getattr(base, k))
        else v for k, v in given.items()
    }
    return dataclasses.replace(base, **merged)


def _assemble(
    values: Mapping[str, Mapping[str, Any]],
    base_dir: Path,
    label: str,
    source: Path | None,
    warnings: list[str],
    fixed: Mapping[str, Any] | None = None,
) -> Config:
    fixed = fixed or {}

    def resolve(p: Path) -> Path:
        return Path(os.path.normpath(base_dir / p))

    def build(name: str, **defaults: Any) -> Any:
        if name in fixed:
            return fixed[name]
        return _section(SECTION_CLASSES[name], values.get(name, {}), **defaults)

    agent = build("agent", state_dir=base_dir / "state")
    agent = dataclasses.replace(
        agent, state_dir=resolve(agent.state_dir), node_name=agent.node_name or socket.gethostname()
    )
    tls = agent.tls
    if (tls.cert_file is None) != (tls.key_file is None):
        given, missing = ("cert_file", "key_file") if tls.key_file is None else ("key_file", "cert_file")
        raise ConfigError(f"{label}: agent.tls.{missing}: must be set too when agent.tls.{given} is (both or neither)")
    if tls.enabled:
        assert tls.cert_file is not None and tls.key_file is not None
        agent = dataclasses.replace(agent, tls=TlsSection(resolve(tls.cert_file), resolve(tls.key_file)))
    tasks = build("tasks")
    uids = tasks.uid_range
    if uids.start > uids.end:
        raise ConfigError(f"{label}: tasks.uid_range: start ({uids.start}) must be <= end ({uids.end})")
    if uids.start <= 65534 <= uids.end:
        raise ConfigError(f"{label}: tasks.uid_range: must not contain 65534 (nobody)")
    ml = build("ml", model_path=agent.state_dir / "models", script_path=base_dir / "examples" / "ml_models")
    ml = dataclasses.replace(ml, model_path=resolve(ml.model_path), script_path=resolve(ml.script_path))
    if ml.port_range.start > ml.port_range.end:
        raise ConfigError(
            f"{label}: ml.port_range: start ({ml.port_range.start}) must be <= end ({ml.port_range.end})"
        )
    if ml.default_engine not in ml.engines:
        raise ConfigError(
            f"{label}: ml.default_engine: must be one of ml.engines "
            f"({', '.join(repr(e) for e in ml.engines) or 'empty'}), got {to.show(ml.default_engine)}"
        )
    ml_pids = ml.resource_limits.max_pids
    if ml_pids is not None and ml_pids > tasks.max_pids:
        raise ConfigError(
            f"{label}: ml.resource_limits.max_pids: must be at most tasks.max_pids ({tasks.max_pids}), got {ml_pids}"
        )
    ml = dataclasses.replace(
        ml, allowed_roots=tuple(resolve(p) for p in ml.allowed_roots), model_roots=tuple(resolve(p) for p in ml.model_roots)
    )
    auth = build("auth")
    if auth.token_file is not None:
        auth = dataclasses.replace(auth, token_file=resolve(auth.token_file))
        auth = dataclasses.replace(auth, tokens=auth.tokens + _read_tokens(auth.token_file, label))
    for token in auth.tokens:
        if len(token) < 16:
            raise ConfigError(f"{label}: auth.tokens: each token must be at least 16 characters (a short token is guessable)")
    discovery = build("discovery")
    serving = build("serving")
    if serving.grpc_port is not None and serving.grpc_port == agent.port:
        raise ConfigError(f"{label}: serving.grpc_port: must differ from agent.port ({agent.port}): "
                          "gRPC and HTTP each need a port of their own")
    gpus = build("gpus")
    gpus = dataclasses.replace(gpus, device_dir=resolve(gpus.device_dir),
                               simulate_file=None if gpus.simulate_file is None else resolve(gpus.simulate_file))
    cluster = fixed.get("cluster")
    if cluster is None and values.get("cluster"):  # no section, or an empty one: a single node
        cluster = assemble_cluster(build("cluster"), agent.node_id, resolve, label)
    return Config(
        agent=agent,
        logging=build("logging"),
        discovery=discovery,
        resources=build("resources"),
        tasks=tasks,
        logs=build("logs"),
        ml=ml,
        auth=auth,
        serving=serving,
        gpus=gpus,
        cluster=cluster,
        source=source,
        warnings=tuple(warnings),
    )


# --------------------------------------------------------------------------- loading


def _read_tokens(path: Path, label: str) -> tuple[str, ...]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{label}: auth.token_file: cannot read {path}: {exc.strerror or exc}") from None
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (a lost section otherwise)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key '{key_node.value}'", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _read_yaml(path: Path, label: str) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{label}: cannot read: {e.strerror or e}") from None
    try:
        return yaml.load(raw, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = _one_line(e.problem or e.context or "")
        context = f" ({_one_line(e.context)})" if e.context and e.problem else ""
        raise ConfigError(f"{label}: {where}invalid YAML: {problem}{context}") from None
    except yaml.YAMLError as e:  # e.g. a ReaderError for bytes that are not text
        raise ConfigError(f"{label}: invalid YAML: {_one_line(str(e))}") from None


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] = os.environ) -> Config:
    """Read the YAML file at ``path``, apply the ``CNET_*`` variables in ``environ``, validate.

    Raises :class:`ConfigError` (one line) on the first problem.  An empty file is all
    defaults.  Unknown keys end up in ``Config.warnings``; log them once logging is set up.
    """
    label = os.fspath(path)
    source = Path(os.path.abspath(label))
    data = _read_yaml(source, label)
    warnings: list[str] = []
    values = _parse_document(data, label, warnings, strict=False)
    _apply_env(values, environ)
    return _assemble(values, source.parent, label, source, warnings)


def default_config(base_dir: str | os.PathLike[str], **section_overrides: Any) -> Config:
    """The all-defaults config of a file in ``base_dir``, for tests; the environment is ignored.

    Each keyword is a section name with either a section object (used as is) or a mapping
    that is checked exactly like that section in a file (so ``tasks={"timeout": "5m"}``
    works and unknown keys raise).  ``state_dir=`` is short for ``agent={"state_dir": ...}``;
    ``ml.model_path`` follows the state dir unless it is given.
    """
    base = Path(os.path.abspath(base_dir))
    label = "default_config()"
    state_dir = section_overrides.pop("state_dir", None)
    fixed: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    for name, value in section_overrides.items():
        cls = SECTION_CLASSES.get(name)
        if cls is None:
            raise TypeError(f"default_config() got an unexpected keyword argument {name!r}")
        if isinstance(value, cls):
            fixed[name] = value
        else:
            raw[name] = value
    values = _parse_document(raw, label, [], strict=True)
    if state_dir is not None:
        state_path = to.path(state_dir, f"{label}: state_dir")
        if "agent" in fixed:
            fixed["agent"] = dataclasses.replace(fixed["agent"], state_dir=state_path)
        else:
            values.setdefault("agent", {})["state_dir"] = state_path
    return _assemble(values, base, label, None, [], fixed)
