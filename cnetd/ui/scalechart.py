"""The model page's small chart of replicas over time: the autoscaler's history of a served
model (one point a second, cnetd.ml.serving.scalestate) as SVG polyline points."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 300
HEIGHT = 60


@dataclass(frozen=True)
class Chart:
    target: str  # "x,y x,y ..." for <polyline points>
    ready: str
    top: int  # the replicas at the top of the chart
    seconds: int  # the time it spans
    width: int = WIDTH
    height: int = HEIGHT


def chart(history: Sequence[tuple[float, int, int, int]], max_replicas: int) -> Chart | None:
    """history: (unix time, target, ready, in flight) points, oldest first; None with fewer than two."""
    if len(history) < 2:
        return None
    start, end = history[0][0], history[-1][0]
    span = max(end - start, 1.0)
    top = max(1, max_replicas, *(max(p[1], p[2]) for p in history))

    def points(index: int) -> str:
        return " ".join(f"{(p[0] - start) / span * WIDTH:.1f},{HEIGHT - p[index] / top * (HEIGHT - 4) - 2:.1f}"
                        for p in history)

    return Chart(target=points(1), ready=points(2), top=top, seconds=round(span))
