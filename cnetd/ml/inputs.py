"""How a prediction's input_data becomes the script's <input> argument.

The argument goes to execve, which refuses a string with NUL in it, text that is not valid
UTF-8 (a lone surrogate from a JSON "\\ud800") and a string longer than MAX_ARG_STRLEN
(32 pages: 128 KiB on x86-64, its terminating NUL included). Such an input is a 400 naming
input_data here, before any task exists, instead of a task that fails to start. The rest
of the command line and the environment come from the deploy, whose whole body is at most
1 MiB, so with this argument they stay below ARG_MAX (2 MiB with the default stack limit)."""

from __future__ import annotations

import json
import os
from typing import Any

from cnetd.errors import Invalid

MAX_ARGUMENT_BYTES = 32 * os.sysconf("SC_PAGESIZE") - 1  # MAX_ARG_STRLEN less the NUL


def input_argument(value: Any) -> str:
    """A number as its text, a flat list of numbers as "a,b", a string as is,
    anything else (nested lists, objects) as JSON text."""
    argument = _as_text(value)
    if "\x00" in argument:
        raise Invalid("input_data", "must not contain NUL (a command-line argument cannot hold one)")
    try:
        size = len(argument.encode("utf-8"))
    except UnicodeEncodeError:
        raise Invalid("input_data", "must be valid Unicode text (it has a lone surrogate, which no argument can hold)") from None
    if size > MAX_ARGUMENT_BYTES:
        raise Invalid(
            "input_data",
            f"is {size} bytes as the script's command-line argument; at most {MAX_ARGUMENT_BYTES} fit in one "
            "(a Linux limit): serve the model (POST /api/ml/models/{id}/serve) to send larger inputs",
        )
    return argument


def _as_text(value: Any) -> str:
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
