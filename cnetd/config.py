"""Typed configuration: a YAML file -> frozen dataclasses, then ``CNET_*`` env overrides.

Every key is described once, in the field tables below (``_SPEC``): a converter that
checks the raw YAML value and turns it into its typed form.  Everything that can be wrong
with a file is reported as a one-line :class:`ConfigError`
(``"<file>: <dotted.key>: <what is wrong>"``); unknown keys are not fatal and are
collected in :attr:`Config.warnings` instead.

Relative paths in the file resolve against the directory of the file.  Build a
:class:`Config` through :func:`load_config` (the daemon) or :func:`default_config`
(tests); the class-level path defaults are placeholders that only those two resolve.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import socket
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from cnetd.limits import PIDS_CEILING, ResourceLimits

__all__ = [
    "AgentSection",
    "Config",
    "ConfigError",
    "DiscoverySection",
    "LogFormat",
    "LogLevel",
    "LoggingSection",
    "LogsSection",
    "MLSection",
    "PIDS_CEILING",
    "PortRange",
    "TlsSection",
    "UidRange",
    "ResourcesSection",
    "RetentionSection",
    "SandboxKind",
    "TasksSection",
    "default_config",
    "load_config",
    "parse_agent_url",
    "parse_duration",
    "parse_size",
]

LogLevel = Literal["debug", "info", "warn", "error"]
LogFormat = Literal["json", "text"]
SandboxKind = Literal["auto", "systemd", "cgroup", "none"]


class ConfigError(Exception):
    """A configuration problem; ``str(e)`` is one line: ``"<file>: <dotted.key>: <problem>"``."""


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class TlsSection:
    """HTTPS for the API and UI: both files or neither (checked when the agent starts)."""

    cert_file: Path | None = None  # PEM certificate chain, the server's certificate first
    key_file: Path | None = None  # PEM private key of that certificate

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True)
class AgentSection:
    address: str = "127.0.0.1"
    port: int = 8080
    node_id: str = ""  # empty: the app generates one and persists it in state_dir
    node_name: str = field(default_factory=socket.gethostname)
    region: str = "default"
    datacenter: str = "dc1"
    heartbeat: float = 30.0  # seconds
    state_dir: Path = Path("state")  # resolved to <config dir>/state by the loaders
    advertise_url: str = ""  # how a parent reaches this node; empty: http(s)://<address>:<port>
    allowed_hosts: tuple[str, ...] = ()  # more names the Host header may carry (security.hosts)
    tls: TlsSection = TlsSection()


@dataclass(frozen=True)
class LoggingSection:
    level: LogLevel = "info"
    format: LogFormat = "text"


@dataclass(frozen=True)
class DiscoverySection:
    enabled: bool = False
    servers: tuple[str, ...] = ()  # parent agents' URLs (http://host:port), tried in order
    timeout: float = 5.0
    retry: int = 3
    token: str | None = None  # presented to the parent; the parent uses it to call back


@dataclass(frozen=True)
class ResourcesSection:
    cpu: bool = True
    memory: bool = True
    disk: bool = True
    network: bool = True
    interval: float = 10.0


@dataclass(frozen=True)
class UidRange:
    """The uids (and equal gids) handed to tasks one per model or process task. The default
    is a block systemd leaves unused (above its container range, below 2^31), so it meets
    no DynamicUser service, nspawn container or subuid range of a stock system."""

    start: int = 1879048192  # 0x70000000
    end: int = 1879113727  # start + 65535


@dataclass(frozen=True)
class RetentionSection:
    """How long ended tasks (with their events, log lines and files) are kept."""

    max_age: float | None = 14 * 86400.0  # seconds since the task ended; None: no age bound
    max_tasks: int | None = 10_000  # ended tasks kept at most; None: no count bound
    interval: float = 600.0  # seconds between retention passes (the first runs at start)


@dataclass(frozen=True)
class TasksSection:
    max_concurrent: int = 10
    timeout: float | None = 300.0  # None: no timeout
    cleanup: bool = True
    sandbox: SandboxKind = "auto"
    stop_grace: float = 10.0
    stop_on_exit: bool = False
    allowed_commands: tuple[str, ...] = ()  # empty: any command
    cgroup_group: str = "cnet"  # the cgroup backend's group under the agent's own cgroup
    slice: str = "cnet.slice"  # the systemd slice that holds every task's scope
    run_as: str | None = None  # "dynamic", user[:group] or "root"; None: dynamic when the agent is root
    uid_range: UidRange = UidRange()  # where dynamic task uids come from
    retention: RetentionSection = RetentionSection()
    max_pids: int = 4096  # processes and threads of one task at once; the most a task may ask for


@dataclass(frozen=True)
class LogsSection:
    """Bounds on what one task's log keeps; None: no bound."""

    max_lines_per_task: int | None = 200_000
    max_bytes_per_task: int | None = 32 << 20  # 32 MiB


@dataclass(frozen=True)
class PortRange:
    start: int = 9000
    end: int = 9100


@dataclass(frozen=True)
class MLSection:
    enabled: bool = True
    engines: tuple[str, ...] = ("python",)  # accepted for compatibility, no effect (COMPATIBILITY_ONLY)
    default_engine: str = "python"  # accepted for compatibility, no effect
    model_path: Path = Path("state/models")  # a model root; resolved to <state_dir>/models by the loaders
    script_path: Path = Path("examples/ml_models")  # where a relative script_path is looked up last
    port_range: PortRange = PortRange()  # accepted for compatibility, no effect
    resource_limits: ResourceLimits = ResourceLimits(1.0, 536870912, 1073741824, 0)
    timeout: float = 30.0
    allowed_roots: tuple[Path, ...] = ()  # empty: the agent's working directory
    model_roots: tuple[Path, ...] = ()  # empty: <working directory>/models and model_path


@dataclass(frozen=True)
class AuthSection:
    tokens: tuple[str, ...] = field(default=(), repr=False)
    token_file: Path | None = None
    metrics_public: bool = False  # /metrics without a token


_SECTION_CLASSES: dict[str, type] = {
    "agent": AgentSection,
    "logging": LoggingSection,
    "discovery": DiscoverySection,
    "resources": ResourcesSection,
    "tasks": TasksSection,
    "logs": LogsSection,
    "ml": MLSection,
    "auth": AuthSection,
}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Config:
    agent: AgentSection
    logging: LoggingSection
    discovery: DiscoverySection
    resources: ResourcesSection
    tasks: TasksSection
    ml: MLSection
    auth: AuthSection = AuthSection()
    logs: LogsSection = LogsSection()
    source: Path | None = None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The effective config as plain JSON-able data, shaped like the YAML file.

        Paths are strings and durations are seconds; ``source`` and ``warnings`` are left
        out, so writing this dict back out gives a file that loads to the same sections.
        """
        data = {name: _plain(getattr(self, name)) for name in _SECTION_CLASSES}
        data["auth"]["tokens"] = ["<redacted>" for _ in self.auth.tokens]
        if self.discovery.token is not None:
            data["discovery"]["token"] = "<redacted>"
        return data


# --------------------------------------------------------------------------- scalars


def _show(value: Any) -> str:
    """A short, one-line rendering of a bad value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"({_NUMBER})(ns|us|µs|ms|s|m|h|d)")
_DURATION_FULL = re.compile(rf"(?:{_NUMBER}(?:ns|us|µs|ms|s|m|h|d))+")


def parse_duration(value: Any, where: str) -> float:
    """Seconds from ``"30s"``, ``"5m"``, ``"1h30m"``, ``"500ms"`` or a number of seconds.

    Raises :class:`ConfigError` ``"<where>: <problem>"`` for anything else, negatives included.
    """
    if _is_number(value):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{where}: must be a duration >= 0, got {_show(value)}")
        return float(value)
    if isinstance(value, str):
        text = "".join(value.split()).lower()
        if re.fullmatch(_NUMBER, text):
            return float(text)
        if _DURATION_FULL.fullmatch(text):
            return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    raise ConfigError(
        f"{where}: must be a duration like '30s', '5m', '1h30m' or a number of seconds, got {_show(value)}"
    )


_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
    "t": 1 << 40, "tib": 1 << 40, "tb": 10**12,
}  # fmt: skip
_SIZE = re.compile(rf"({_NUMBER})\s*([a-z]*)")


def parse_size(value: Any, where: str) -> int:
    """Bytes from an int or ``"512MB"`` (10^6), ``"512MiB"``/``"512M"`` (2^20), ``"1.5G"``...

    Raises :class:`ConfigError` ``"<where>: <problem>"`` for anything else, negatives included.
    """
    if _is_number(value):
        if isinstance(value, float) and not value.is_integer() or value < 0:
            raise ConfigError(f"{where}: must be a whole number of bytes >= 0, got {_show(value)}")
        return int(value)
    if isinstance(value, str):
        m = _SIZE.fullmatch(value.strip().lower())
        if m and m.group(2) in _SIZE_UNITS:
            try:
                return round(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
            except OverflowError:  # "1e400"-sized digits: float() gives inf
                raise ConfigError(f"{where}: is too large, got {_show(value)}") from None
    raise ConfigError(
        f"{where}: must be a size in bytes or like '512MB', '512MiB', '1.5G', got {_show(value)}"
    )


# --------------------------------------------------------------------------- converters

Conv = Callable[[Any, str], Any]  # (raw value, "file: dotted.key") -> typed value


def _fail(where: str, need: str, value: Any) -> ConfigError:
    return ConfigError(f"{where}: must be {need}, got {_show(value)}")


def _optional(conv: Conv) -> Conv:
    return lambda v, where: None if v is None else conv(v, where)


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise _fail(where, "true or false", v)
    return v


def _int(lo: int, hi: int | None = None) -> Conv:
    need = f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}"

    def conv(v: Any, where: str) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
            raise _fail(where, need, v)
        return v

    return conv


def _positive_float(v: Any, where: str) -> float:
    if not _is_number(v) or not math.isfinite(v) or v <= 0:
        raise _fail(where, "a number > 0", v)
    return float(v)


def _str(*, empty_ok: bool = False) -> Conv:
    def conv(v: Any, where: str) -> str:
        if not isinstance(v, str) or (not empty_ok and not v.strip()):
            raise _fail(where, "a string" if empty_ok else "a non-empty string", v)
        return v.strip()

    return conv


def parse_agent_url(text: str) -> str:
    """An agent's base URL from "http://host:port" or "host:port"; ConfigError if it is not one."""
    return _http_url(text, "url")


def _http_url(v: Any, where: str, empty_ok: bool = False) -> str:
    """An agent's base URL: http(s)://host[:port] (a bare host:port gets http://)."""
    if empty_ok and v == "":
        return ""
    if not isinstance(v, str) or not v.strip():
        raise _fail(where, "a URL like http://host:8080", v)
    text = v.strip().rstrip("/")
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise _fail(where, "a URL like http://host:8080", v) from None
    host = parts.hostname or ""
    if (parts.scheme not in ("http", "https") or parts.query or parts.fragment or parts.path
            or parts.username is not None or not (_HOST_NAME.fullmatch(host) or _is_ip(host))):
        raise _fail(where, "a URL like http://host:8080", v)
    return text


_HOST_NAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host(v: str, where: str) -> str:
    """A host name or an IP address (IPv6 with or without brackets), without a port."""
    bare = v[1:-1] if v.startswith("[") and v.endswith("]") else v
    if _HOST_NAME.fullmatch(bare) or _is_ip(bare):
        return v
    raise _fail(where, "a host name or IP address without a port (like agent.example.com or 10.0.0.5)", v)


_USER_SPEC = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?")


def _user_spec(v: Any, where: str) -> str:
    """user, user:group, uid or uid:gid (the user is looked up when the agent starts)."""
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return str(v)
    if isinstance(v, str) and _USER_SPEC.fullmatch(v.strip()):
        return v.strip()
    raise _fail(where, "a user name or uid, optionally with :group", v)


def _strings(v: Any, where: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, (list, tuple)):
        raise _fail(where, "a list of strings", v)
    items = [_str()(item, f"{where}[{i}]") for i, item in enumerate(v)]
    return tuple(dict.fromkeys(items))  # drop repeats, keep order


def _choice(literal: Any, aliases: Mapping[str, str] | None = None) -> Conv:
    allowed: tuple[str, ...] = get_args(literal)
    aliases = aliases or {}

    def conv(v: Any, where: str) -> str:
        key = v.strip().lower() if isinstance(v, str) else None
        if key is not None:
            key = aliases.get(key, key)
        if key not in allowed:
            raise _fail(where, "one of " + ", ".join(repr(a) for a in allowed), v)
        return key

    return conv


def _duration(*, allow_off: bool = False, allow_zero: bool = False) -> Conv:
    """A duration in seconds; ``allow_off``: 0 or null mean "none" (returned as None)."""

    def conv(v: Any, where: str) -> float | None:
        if v is None and allow_off:
            return None
        seconds = parse_duration(v, where)
        if seconds == 0 and allow_off:
            return None
        if seconds == 0 and not allow_zero:
            raise _fail(where, "a duration > 0", v)
        return seconds

    return conv


def _bound(conv: Conv) -> Conv:
    """A bound where 0 or null means "no bound" (returned as None)."""
    return lambda v, where: None if v is None else (conv(v, where) or None)


def _positive_size(v: Any, where: str) -> int:
    size = parse_size(v, where)
    if size <= 0:
        raise _fail(where, "a size > 0", v)
    return size


def _path(v: Any, where: str) -> Path:
    if isinstance(v, os.PathLike):
        v = os.fspath(v)
    if not isinstance(v, str) or not v.strip():
        raise _fail(where, "a path", v)
    return Path(os.path.expanduser(v.strip()))


# --------------------------------------------------------------------------- field tables

Spec = dict[str, "Conv | Spec"]  # a nested dict is a nested mapping (port_range, resource_limits)

_SPEC: dict[str, Spec] = {
    "agent": {
        "address": _str(),
        "port": _int(1, 65535),
        "node_id": _str(empty_ok=True),
        "node_name": _str(empty_ok=True),
        "region": _str(),
        "datacenter": _str(),
        "heartbeat": _duration(),
        "state_dir": _path,
        "advertise_url": lambda v, where: _http_url(v, where, empty_ok=True),
        "allowed_hosts": lambda v, where: tuple(_host(h, f"{where}[{i}]") for i, h in enumerate(_strings(v, where))),
        "tls": {"cert_file": _optional(_path), "key_file": _optional(_path)},
    },
    "logging": {
        "level": _choice(LogLevel, {"warning": "warn"}),
        "format": _choice(LogFormat),
    },
    "discovery": {
        "enabled": _bool,
        "servers": lambda v, where: tuple(_http_url(s, f"{where}[{i}]") for i, s in enumerate(_strings(v, where))),
        "timeout": _duration(),
        "retry": _int(0),
        "token": _optional(_str()),
    },
    "resources": {"cpu": _bool, "memory": _bool, "disk": _bool, "network": _bool, "interval": _duration()},
    "tasks": {
        "max_concurrent": _int(1),
        "timeout": _duration(allow_off=True),
        "cleanup": _bool,
        "sandbox": _choice(SandboxKind),
        "stop_grace": _duration(allow_zero=True),
        "max_pids": _int(1, PIDS_CEILING),
        "stop_on_exit": _bool,
        "allowed_commands": _strings,
        "cgroup_group": _str(),
        "slice": _str(),
        "run_as": _optional(lambda v, where: _user_spec(v, where)),
        "uid_range": {"start": _int(1000, 2**31 - 2), "end": _int(1000, 2**31 - 2)},
        "retention": {
            "max_age": _duration(allow_off=True),
            "max_tasks": _bound(_int(0)),
            "interval": _duration(),
        },
    },
    "logs": {
        "max_lines_per_task": _bound(_int(0)),
        "max_bytes_per_task": _bound(lambda v, where: parse_size(v, where)),
    },
    "ml": {
        "enabled": _bool,
        "engines": _strings,
        "default_engine": _str(),
        "model_path": _path,
        "script_path": _path,
        "port_range": {"start": _int(1, 65535), "end": _int(1, 65535)},
        "resource_limits": {
            "cpu_limit": _optional(_positive_float),
            "memory_limit": _optional(_positive_size),
            "disk_limit": _optional(_positive_size),
            "gpu_limit": _optional(_int(0)),
            "max_pids": _optional(_int(1, PIDS_CEILING)),
        },
        "timeout": _duration(),
        "allowed_roots": lambda v, where: tuple(_path(p, f"{where}[{i}]") for i, p in enumerate(_list(v, where))),
        "model_roots": lambda v, where: tuple(_path(p, f"{where}[{i}]") for i, p in enumerate(_list(v, where))),
    },
    "auth": {
        "tokens": _strings,
        "token_file": _optional(_path),
        "metrics_public": _bool,
    },
}


def _list(v: Any, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise _fail(where, "a list", v)
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
    "CNET_AUTH_TOKEN": ("auth", "tokens", lambda t: [t]),
    "CNET_DISCOVERY_TOKEN": ("discovery", "token", str),
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
        raise ConfigError(f"{label}: {prefix}: must be a mapping, got {_show(raw)}")
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


def _compatibility_warnings(values: Mapping[str, Mapping[str, Any]], label: str) -> list[str]:
    given = [f"{section}.{key}" for section, keys in values.items() for key in keys]
    return [f"{label}: {key}: accepted for compatibility, has no effect" for key in COMPATIBILITY_ONLY if key in given]


def _parse_document(data: Any, label: str, warnings: list[str], strict: bool) -> dict[str, dict[str, Any]]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{label}: top level must be a mapping of sections, got {_show(data)}")
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
        k: dataclasses.replace(getattr(base, k), **v) if isinstance(v, dict) else v for k, v in given.items()
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
        return _section(_SECTION_CLASSES[name], values.get(name, {}), **defaults)

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
            f"({', '.join(repr(e) for e in ml.engines) or 'empty'}), got {_show(ml.default_engine)}"
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
    return Config(
        agent=agent,
        logging=build("logging"),
        discovery=discovery,
        resources=build("resources"),
        tasks=tasks,
        logs=build("logs"),
        ml=ml,
        auth=auth,
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
        return yaml.load(raw, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
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
        cls = _SECTION_CLASSES.get(name)
        if cls is None:
            raise TypeError(f"default_config() got an unexpected keyword argument {name!r}")
        if isinstance(value, cls):
            fixed[name] = value
        else:
            raw[name] = value
    values = _parse_document(raw, label, [], strict=True)
    if state_dir is not None:
        state_path = _path(state_dir, f"{label}: state_dir")
        if "agent" in fixed:
            fixed["agent"] = dataclasses.replace(fixed["agent"], state_dir=state_path)
        else:
            values.setdefault("agent", {})["state_dir"] = state_path
    return _assemble(values, base, label, None, [], fixed)
