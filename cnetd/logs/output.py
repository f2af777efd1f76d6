"""What a task's output tells the agent: its result (the last JSON object printed)
and its progress (JSON lines holding "progress" in 0..1)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cnetd.bodies.jsonvalue import without_lone_surrogates

RESULT_SCAN_BYTES = 256 * 1024
MAX_DECODE_ATTEMPTS = 4000
ENCLOSING_SEARCH_CHARS = 64 * 1024
_decoder = json.JSONDecoder()


def last_json_object(text: str) -> dict[str, Any] | None:
    """The last complete top-level JSON object in text, which may span several lines
    and sit among other output. Scans '{' from the end; the outermost object wins."""
    best: tuple[int, int, dict[str, Any]] | None = None  # (end, start, obj)
    position = len(text)
    attempts = 0
    while attempts < MAX_DECODE_ATTEMPTS:
        start = text.rfind("{", 0, position)
        if start < 0:
            break
        attempts += 1
        position = start
        try:
            obj, end = _decoder.raw_decode(text, start)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        if best is None or end >= best[0]:
            best = (end, start, obj)
        if best[1] - start > ENCLOSING_SEARCH_CHARS:
            break  # an object that encloses the best one would start this far back: not a result
    # Its "\\ud800" escapes would be lone surrogates, which the store cannot encode: a task's
    # output must not fail the recording of its own exit.
    return without_lone_surrogates(best[2]) if best else None


def result_from_log(path: str | Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - RESULT_SCAN_BYTES))
            data = f.read()
    except FileNotFoundError:
        return None
    return last_json_object(data.decode("utf-8", errors="replace"))


def progress_from_line(line: str) -> float | None:
    stripped = line.strip()
    if not (stripped.startswith("{") and '"progress"' in stripped):
        return None
    try:
        obj = json.loads(stripped)
    except ValueError:
        return None
    value = obj.get("progress") if isinstance(obj, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return min(1.0, max(0.0, float(value)))
