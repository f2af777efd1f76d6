"""Template filters: sizes, durations, times, JSON, percentages."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cnetd.clock import parse_time
from cnetd.units import format_size


def size(n: int | float | None, like: int | float | None = None) -> str:
    """Bytes for people in the units limits are written in: 512 MB, 512 MiB (cnetd.units)."""
    return "—" if n is None else format_size(n, like)


def duration(seconds: float | None) -> str:
    """3s, 4m 05s, 2h 10m, 3d 4h."""
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def uptime(seconds: float) -> str:
    """Minute resolution, so a polled fragment does not change every second."""
    if seconds < 60:
        return "less than a minute"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def when(text: str | None) -> str:
    """An API timestamp shown short: the time of day when it is today (UTC), else the date too."""
    if not text:
        return "—"
    try:
        moment = parse_time(text)
    except ValueError:
        return text
    if moment.date() == datetime.now(UTC).date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M")


def elapsed(start: str | None, end: str | None) -> str:
    """How long a task ran (or has been running, rounded to whole seconds)."""
    if not start:
        return "—"
    try:
        begin = parse_time(start)
        finish = parse_time(end) if end else datetime.now(UTC)
    except ValueError:
        return "—"
    seconds = max(0.0, (finish - begin).total_seconds())
    return duration(seconds if end else float(int(seconds)))


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def percent(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.0f}%" if value >= 10 else f"{value:.1f}%"


def progress(value: float | None) -> int:
    """0..1 -> a whole percentage for a bar's width."""
    if value is None:
        return 0
    return max(0, min(100, round(value * 100)))


def cores(value: float | None) -> str:
    if value is None:
        return "—"
    text = f"{value:g}"
    return f"{text} core" if text == "1" else f"{text} cores"


def shell(argv: list[str]) -> str:
    """A command line as a shell would need it typed (quoted where it matters)."""
    return " ".join(shlex.quote(a) for a in argv)


def short_id(value: str | None) -> str:
    return (value or "")[:8]


FILTERS: dict[str, Callable[..., Any]] = {
    "size": size,
    "duration": duration,
    "uptime": uptime,
    "when": when,
    "elapsed": elapsed,
    "pretty_json": pretty_json,
    "compact_json": compact_json,
    "percent": percent,
    "progress": progress,
    "cores": cores,
    "short_id": short_id,
    "shell": shell,
}
