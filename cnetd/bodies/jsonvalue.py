"""Words for decoded JSON values, for error messages: what kind of value it is, and the
value itself when it is short enough to repeat back."""

from __future__ import annotations

from typing import Any

MAX_SHOWN = 64


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
