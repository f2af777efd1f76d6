"""Prometheus text exposition (format 0.0.4), written by hand: a counter, a histogram
and a writer are all the agent needs, and the hot path only adds to plain numbers."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

Labels = Mapping[str, str]


class Histogram:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class Exposition:
    """Collects families in the order they are declared; each family's HELP/TYPE is written
    once, and its samples together under it, whatever order they were added in (the format
    wants a family's lines in one group)."""

    def __init__(self) -> None:
        self._families: dict[str, list[str]] = {}
        self._loose: list[str] = []  # samples of families never declared

    def declare(self, name: str, kind: str, help_text: str) -> None:
        if name in self._families:
            return
        self._families[name] = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def _lines(self, name: str) -> list[str]:
        return self._families.get(name, self._loose)

    def sample(self, name: str, labels: Labels, value: float) -> None:
        self._lines(name).append(f"{name}{_labels(labels)} {_number(value)}")

    def histogram(self, name: str, labels: Labels, hist: Histogram) -> None:
        lines = self._lines(name)
        cumulative = 0
        for bound, n in zip(hist.bounds, hist.counts[:-1], strict=True):  # the last count is +Inf's, below
            cumulative += n
            lines.append(f"{name}_bucket{_labels({**labels, 'le': _number(bound)})} {cumulative}")
        lines.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {hist.count}")
        lines.append(f"{name}_sum{_labels(labels)} {_number(hist.sum)}")
        lines.append(f"{name}_count{_labels(labels)} {hist.count}")

    def text(self) -> str:
        lines = [line for family in self._families.values() for line in family] + self._loose
        return "\n".join(lines) + "\n"
