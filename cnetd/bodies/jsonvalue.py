"""Words for decoded JSON values, for error messages: what kind of value it is, and the
value itself when it is short enough to repeat back; and where a value holds something that
is not text."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MAX_SHOWN = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


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


def shown(value: Any) -> str | None:
    """The value as a message may repeat it (JSON spelling for null and booleans), or None
    when it is too long or not a scalar."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int) and value.bit_length() > 200:
        return None  # repr would be long (or refused past 4300 digits)
    if isinstance(value, (int, float, str)):
        text = repr(value)
        return text if len(text) <= MAX_SHOWN else None
    return None


def lone_surrogate(value: Any, field: str = "") -> tuple[str, str] | None:
    """(field, problem) for the first string, or object key, in a decoded JSON value that holds
    a lone surrogate, or None. JSON's "\\ud800" decodes to one, and it is not text: it
    has no UTF-8 form, so it can be neither stored, logged, answered nor passed to a process.
    field is a dotted path (env.FOO, args[3]) as body errors name fields; "body" for the top."""
    if isinstance(value, str):
        found = _surrogate_in(value)
        return None if found is None else (field or "body", f"is not valid text: it holds a lone surrogate ({found})")
    if isinstance(value, list):
        for index, item in enumerate(value):
            hit = lone_surrogate(item, f"{field}[{index}]")
            if hit is not None:
                return hit
    elif isinstance(value, Mapping):
        for key, item in value.items():
            found = _surrogate_in(key)
            if found is not None:
                return field or "body", f"has a key that is not valid text: it holds a lone surrogate ({found})"
            hit = lone_surrogate(item, f"{field}.{key}" if field else key)
            if hit is not None:
                return hit
    return None


def without_lone_surrogates(value: Any) -> Any:
    """value with every lone surrogate in its strings and keys replaced by U+FFFD, as bytes
    that are not UTF-8 are in a task's log lines (a valid pair is one character already)."""
    if isinstance(value, str):
        return value if value.isascii() else _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {without_lone_surrogates(key): without_lone_surrogates(item) for key, item in value.items()}
    return value


def _surrogate_in(text: str) -> str | None:
    if text.isascii():
        return None
    found = _SURROGATE.search(text)
    return None if found is None else f"\\u{ord(found.group()):04x}"
