"""CPU and memory samples -> the numbers an inline SVG line chart needs."""

from __future__ import annotations

from dataclasses import dataclass

from cnetd.tasks.usage import Sample

WIDTH = 300
HEIGHT = 80


@dataclass(frozen=True)
class Series:
    label: str
    points: str  # "x,y x,y ..." in a WIDTH x HEIGHT box, y down
    area: str  # the same line closed along the bottom, for a light fill
    latest: float | None
    peak: float | None
    scale_max: float  # the value at the top of the box
    count: int
    limit_y: float | None = None  # where the limit line goes, when the limit is in view


def series(label: str, values: list[float | None], floor_max: float, limit: float | None = None) -> Series:
    """Scale to max(floor_max, 1.15 x peak), so a flat line does not fill the box;
    the limit is drawn as a line when it is in view."""
    known = [v for v in values if v is not None]
    peak = max(known) if known else None
    top = max(floor_max, (peak or 0.0) * 1.15)
    if limit and limit <= top * 1.5:
        top = max(top, limit * 1.05)
    points: list[str] = []
    n = len(values)
    for i, value in enumerate(values):
        if value is None:
            continue
        x = WIDTH * (i / (n - 1)) if n > 1 else WIDTH
        y = HEIGHT - (value / top) * (HEIGHT - 2) - 1 if top > 0 else HEIGHT - 1
        points.append(f"{x:.1f},{y:.1f}")
    area = ""
    if len(points) >= 2:
        first_x = points[0].split(",")[0]
        last_x = points[-1].split(",")[0]
        area = f"{first_x},{HEIGHT} " + " ".join(points) + f" {last_x},{HEIGHT}"
    limit_y = HEIGHT - (limit / top) * (HEIGHT - 2) - 1 if limit and limit <= top else None
    return Series(label, " ".join(points), area, known[-1] if known else None, peak, top, len(known), limit_y)


def usage_series(samples: list[Sample], cpu_limit: float | None, memory_limit: int | None) -> tuple[Series, Series]:
    cpu = series("CPU", [s.cpu_percent for s in samples], 100.0, cpu_limit * 100 if cpu_limit else None)
    memory = series(
        "Memory", [None if s.memory_bytes is None else float(s.memory_bytes) for s in samples],
        64 * 1_000_000, float(memory_limit) if memory_limit else None,
    )
    return cpu, memory


def gpu_series(samples: list[Sample], gpu_memory: int | None) -> Series | None:
    """GPU memory of a task with GPUs (None for a task whose samples have none)."""
    values = [None if s.gpu_memory_bytes is None else float(s.gpu_memory_bytes) for s in samples]
    if all(v is None for v in values):
        return None
    return series("GPU memory", values, 64 * 1_000_000, float(gpu_memory) if gpu_memory else None)
