"""Converters from raw YAML values to typed ones, each failing with a one-line
:class:`ConfigError` ``"<file>: <dotted.key>: <what is wrong>"``; durations and sizes too."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, get_args

from cnetd.config.model import ConfigError


def show(value: Any) -> str:
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


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"({_NUMBER})(ns|us|µs|ms|s|m|h|d)")
_DURATION_FULL = re.compile(rf"(?:{_NUMBER}(?:ns|us|µs|ms|s|m|h|d))+")


def parse_duration(value: Any, where: str) -> float:
    """Seconds from ``"30s"``, ``"5m"``, ``"1h30m"``, ``"500ms"`` or a number of seconds.

    Raises :class:`ConfigError` ``"<where>: <problem>"`` for anything else, negatives included.
    """
    if is_number(value):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{where}: must be a duration >= 0, got {show(value)}")
        return float(value)
    if isinstance(value, str):
        text = "".join(value.split()).lower()
        if re.fullmatch(_NUMBER, text):
            return float(text)
        if _DURATION_FULL.fullmatch(text):
            return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    raise ConfigError(
        f"{where}: must be a duration like '30s', '5m', '1h30m' or a number of seconds, got {show(value)}"
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
    if is_number(value):
        if (isinstance(value, float) and not value.is_integer()) or value < 0:
            raise ConfigError(f"{where}: must be a whole number of bytes >= 0, got {show(value)}")
        return int(value)
    if isinstance(value, str):
        m = _SIZE.fullmatch(value.strip().lower())
        if m and m.group(2) in _SIZE_UNITS:
            try:
                return round(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
            except OverflowError:  # "1e400"-sized digits: float() gives inf
                raise ConfigError(f"{where}: is too large, got {show(value)}") from None
    raise ConfigError(
        f"{where}: must be a size in bytes or like '512MB', '512MiB', '1.5G', got {show(value)}"
    )


# --------------------------------------------------------------------------- converters

Conv = Callable[[Any, str], Any]  # (raw value, "file: dotted.key") -> typed value


def fail(where: str, need: str, value: Any) -> ConfigError:
    return ConfigError(f"{where}: must be {need}, got {show(value)}")


def optional(conv: Conv) -> Conv:
    return lambda v, where: None if v is None else conv(v, where)


def boolean(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise fail(where, "true or false", v)
    return v


def integer(lo: int, hi: int | None = None) -> Conv:
    need = f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}"

    def conv(v: Any, where: str) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
            raise fail(where, need, v)
        return v

    return conv


def positive_float(v: Any, where: str) -> float:
    if not is_number(v) or not math.isfinite(v) or v <= 0:
        raise fail(where, "a number > 0", v)
    return float(v)


def text(*, empty_ok: bool = False) -> Conv:
    def conv(v: Any, where: str) -> str:
        if not isinstance(v, str) or (not empty_ok and not v.strip()):
            raise fail(where, "a string" if empty_ok else "a non-empty string", v)
        return v.strip()

    return conv


def parse_agent_url(text: str) -> str:
    """An agent's base URL from "http://host:port" or "host:port"; ConfigError if it is not one."""
    return http_url(text, "url")


def http_url(v: Any, where: str, empty_ok: bool = False) -> str:
    """An agent's base URL: http(s)://host[:port] (a bare host:port gets http://)."""
    if empty_ok and v == "":
        return ""
    if not isinstance(v, str) or not v.strip():
        raise fail(where, "a URL like http://host:8080", v)
    text = v.strip().rstrip("/")
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise fail(where, "a URL like http://host:8080", v) from None
    host = parts.hostname or ""
    if (parts.scheme not in ("http", "https") or parts.query or parts.fragment or parts.path
            or parts.username is not None or not (_HOST_NAME.fullmatch(host) or _is_ip(host))):
        raise fail(where, "a URL like http://host:8080", v)
    return text


_HOST_NAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host(v: str, where: str) -> str:
    """A host name or an IP address (IPv6 with or without brackets), without a port."""
    bare = v[1:-1] if v.startswith("[") and v.endswith("]") else v
    if _HOST_NAME.fullmatch(bare) or _is_ip(bare):
        return v
    raise fail(where, "a host name or IP address without a port (like agent.example.com or 10.0.0.5)", v)


_USER_SPEC = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?")


def user_spec(v: Any, where: str) -> str:
    """user, user:group, uid or uid:gid (the user is looked up when the agent starts)."""
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return str(v)
    if isinstance(v, str) and _USER_SPEC.fullmatch(v.strip()):
        return v.strip()
    raise fail(where, "a user name or uid, optionally with :group", v)


def strings(v: Any, where: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, (list, tuple)):
        raise fail(where, "a list of strings", v)
    items = [text()(item, f"{where}[{i}]") for i, item in enumerate(v)]
    return tuple(dict.fromkeys(items))  # drop repeats, keep order


def choice(literal: Any, aliases: Mapping[str, str] | None = None) -> Conv:
    allowed: tuple[str, ...] = get_args(literal)
    aliases = aliases or {}

    def conv(v: Any, where: str) -> str:
        key = v.strip().lower() if isinstance(v, str) else None
        if key is not None:
            key = aliases.get(key, key)
        if key not in allowed:
            raise fail(where, "one of " + ", ".join(repr(a) for a in allowed), v)
        return key

    return conv


def duration(*, allow_off: bool = False, allow_zero: bool = False) -> Conv:
    """A duration in seconds; ``allow_off``: 0 or null mean "none" (returned as None)."""

    def conv(v: Any, where: str) -> float | None:
        if v is None and allow_off:
            return None
        seconds = parse_duration(v, where)
        if seconds == 0 and allow_off:
            return None
        if seconds == 0 and not allow_zero:
            raise fail(where, "a duration > 0", v)
        return seconds

    return conv


def bound(conv: Conv) -> Conv:
    """A bound where 0 or null means "no bound" (returned as None)."""
    return lambda v, where: None if v is None else (conv(v, where) or None)


def positive_size(v: Any, where: str) -> int:
    size = parse_size(v, where)
    if size <= 0:
        raise fail(where, "a size > 0", v)
    return size


def path(v: Any, where: str) -> Path:
    if isinstance(v, os.PathLike):
        v = os.fspath(v)
    if not isinstance(v, str) or not v.strip():
        raise fail(where, "a path", v)
    return Path(os.path.expanduser(v.strip()))


_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_./-]{0,61}[A-Za-z0-9])?")
LABEL_KEY_RULE = "1-63 letters, digits and _ . / -, starting and ending with a letter or digit"
RESERVED_LABELS = {"region": "agent.region", "datacenter": "agent.datacenter"}
MAX_LABELS = 64
MAX_LABEL_VALUE = 128


def is_label_key(key: str) -> bool:
    return _LABEL_KEY.fullmatch(key) is not None


def labels(v: Any, where: str) -> dict[str, str]:
    """A node's own labels: {key: value}, keys like "gpu" or "example.com/rack", string values."""
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise fail(where, "a mapping of label names to strings", v)
    if len(v) > MAX_LABELS:
        raise ConfigError(f"{where}: must have at most {MAX_LABELS} labels, got {len(v)}")
    out: dict[str, str] = {}
    for key, value in v.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise ConfigError(f"{where}: label name {show(key)}: must be {LABEL_KEY_RULE}")
        if key in RESERVED_LABELS:
            raise ConfigError(f"{where}.{key}: set {RESERVED_LABELS[key]} instead (it is always a label)")
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE or any(ord(c) < 0x20 for c in value):
            raise fail(f"{where}.{key}", f"a string of at most {MAX_LABEL_VALUE} printable characters (quote numbers)", value)
        out[key] = value
    return out


def etcd_endpoints(v: Any, where: str) -> tuple[str, ...]:
    """etcd members' client URLs, http(s)://host:port, at least one."""
    endpoints = tuple(dict.fromkeys(_etcd_endpoint(e, f"{where}[{i}]") for i, e in enumerate(strings(v, where))))
    if not endpoints:
        raise ConfigError(f"{where}: must name at least one etcd member (http(s)://host:port), got none")
    return endpoints


def _etcd_endpoint(v: str, where: str) -> str:
    if "://" not in v:
        raise fail(where, "an etcd URL like http://10.0.0.1:2379", v)
    try:
        return http_url(v, where)
    except ConfigError:
        raise fail(where, "an etcd URL like http://10.0.0.1:2379", v) from None


MIN_LEASE_TTL = 2  # etcd raises a shorter lease to 2 s (its election timeout makes it so)
MAX_LEASE_TTL = 3600


def lease_ttl(v: Any, where: str) -> int:
    seconds = parse_duration(v, where)
    if seconds < MIN_LEASE_TTL:
        raise ConfigError(f"{where}: must be at least {MIN_LEASE_TTL}s (etcd raises a shorter lease to "
                          f"{MIN_LEASE_TTL}s), got {show(v)}")
    if seconds > MAX_LEASE_TTL:
        raise fail(where, f"at most {MAX_LEASE_TTL}s (a node is seen offline that long after it dies)", v)
    if not float(seconds).is_integer():
        raise fail(where, "a whole number of seconds (etcd leases count whole seconds)", v)
    return int(seconds)


_PREFIX = re.compile(r"(/[A-Za-z0-9_.-]+)+")


def key_prefix(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v.startswith("/"):
        raise fail(where, "an etcd key prefix starting with '/', like /cnet", v)
    if len(v) > 1 and v.endswith("/"):
        raise fail(where, "a prefix without a trailing '/', like /cnet", v)
    if not _PREFIX.fullmatch(v) or len(v) > 128:
        raise fail(where, "a prefix like /cnet or /cnet/prod: '/'-separated letters, digits and _ . -", v)
    return v
