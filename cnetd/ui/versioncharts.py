"""A model's per-version roll-ups (Monitor.series) -> the numbers of three server-rendered SVG
line charts: latency (p50 solid, p99 dashed), throughput and errors, one colour per version,
on one time axis (the window). Each chart carries a text description for screen readers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cnetd.clock import parse_time

WIDTH = 300
HEIGHT = 90
PALETTE = 4  # colour classes v0..v3, cycled


@dataclass(frozen=True)
class Line:
    label: str
    points: str  # "x,y x,y ..." in a WIDTH x HEIGHT box, y down
    css: str  # "v<n>" colour, plus "dash" for p99
    count: int


@dataclass(frozen=True)
class Chart:
    key: str  # part of element ids
    title: str
    desc: str
    top: str  # the value at the top of the box, formatted
    lines: list[Line]

    @property
    def empty(self) -> bool:
        return all(line.count == 0 for line in self.lines)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "none"
    if unit == "ms":
        return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    if unit == "req/s":
        return f"{value:.2f} req/s" if value < 10 else f"{value:.0f} req/s"
    return f"{value:g}"


def _line(label: str, css: str, samples: list[tuple[float, float]], top: float) -> Line:
    points = " ".join(
        f"{WIDTH * x:.1f},{HEIGHT - (v / top) * (HEIGHT - 4) - 2:.1f}" for x, v in samples
    )
    return Line(label, points, css, len(samples))


def build(series: dict[str, Any]) -> list[Chart]:
    """The three charts of a Monitor.series answer."""
    since, until = parse_time(series["since"]), parse_time(series["until"])
    # The axis starts where the data does (within the window): a model served for ten
    # minutes fills the box instead of its last sixth.
    starts = [parse_time(p["at"]) - timedelta(seconds=p["seconds"]) for v in series["versions"] for p in v["points"]]
    if starts:
        since = max(since, min(starts))
    span = max((until - since).total_seconds(), 1e-9)

    def position(at: str) -> float:
        return min(max((parse_time(at) - since).total_seconds() / span, 0.0), 1.0)

    specs = [
        ("latency", "Latency", "ms", [("p50", "p50_ms", ""), ("p99", "p99_ms", " dash")]),
        ("throughput", "Throughput", "req/s", [("", "throughput", "")]),
        ("errors", "Errors", "per interval", [("", "errors", "")]),
    ]
    charts = []
    window = series["window"]
    for key, title, unit, fields in specs:
        raw: list[tuple[str, str, list[tuple[float, float]]]] = []
        summary: list[str] = []
        for index, version in enumerate(series["versions"]):
            label = f"version {version['version'] or version['model_id'][:8]}"
            for name, field, style in fields:
                samples = [(position(p["at"]), float(p[field])) for p in version["points"] if p[field] is not None]
                raw.append((f"{label}{' ' + name if name else ''}", f"v{index % PALETTE}{style}", samples))
                if samples:
                    peak = max(v for _, v in samples)
                    summary.append(f"{label}{' ' + name if name else ''}: latest {_fmt(samples[-1][1], unit)}, "
                                   f"highest {_fmt(peak, unit)} over {len(samples)} intervals")
        peak = max((v for _, _, s in raw for _, v in s), default=0.0)
        top = max(peak * 1.15, 1.0)
        lines = [_line(label, css, samples, top) for label, css, samples in raw]
        desc = "; ".join(summary) if summary else f"No requests in the last {window}."
        charts.append(Chart(key, f"{title} ({unit}), last {window}", desc + ".", _fmt(top, unit), lines))
    return charts
