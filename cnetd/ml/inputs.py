"""How a prediction's input_data becomes the script's <input> argument."""

from __future__ import annotations

import json
from typing import Any

from cnetd.errors import Invalid


def input_argument(value: Any) -> str:
    """A number as its text, a flat list of numbers as "a,b", a string as is,
    anything else (nested lists, objects) as JSON text."""
    if value is None:
        raise Invalid("input_data", "is required")
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        if not value.strip():
            raise Invalid("input_data", "must not be empty")
        return value
    if isinstance(value, list):
        if not value:
            raise Invalid("input_data", "must not be an empty list")
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return ",".join(repr(v) if isinstance(v, float) else str(v) for v in value)
    return json.dumps(value, ensure_ascii=False)
