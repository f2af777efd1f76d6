"""The latencies of one roll-up interval: a bounded uniform sample (reservoir), so a busy
model costs the hot path one append (or one random index) per request and the roll-up
reads exact percentiles of up to CAPACITY requests."""

from __future__ import annotations

import random

CAPACITY = 4096


class LatencyWindow:
    __slots__ = ("count", "errors", "samples")

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.count = 0
        self.errors = 0

    def add(self, seconds: float, failed: bool) -> None:
        self.count += 1
        if failed:
            self.errors += 1
        if len(self.samples) < CAPACITY:
            self.samples.append(seconds)
            return
        slot = random.randrange(self.count)  # a sample, not a secret
        if slot < CAPACITY:
            self.samples[slot] = seconds


def percentile(ordered: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of sorted values, linearly interpolated; None when empty."""
    if not ordered:
        return None
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
