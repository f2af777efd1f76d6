"""Running per-feature mean and variance (Welford's algorithm, merged a batch at a time with
Chan's formula), for what served inputs look like compared with the training data."""

from __future__ import annotations

from typing import Any

import numpy as np


class RunningStats:
    """Per-column count, mean and M2 of 2-D float batches of a fixed width."""

    __slots__ = ("count", "m2", "mean", "width")

    def __init__(self, width: int) -> None:
        self.width = width
        self.count = 0
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)

    def add(self, batch: np.ndarray[Any, Any]) -> None:
        """batch: shape (n, width); rows with a non-finite value are left out."""
        batch = batch[np.isfinite(batch).all(axis=1)]
        n = batch.shape[0]
        if n == 0:
            return
        mean_b = batch.mean(axis=0)
        m2_b = ((batch - mean_b) ** 2).sum(axis=0)
        total = self.count + n
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2_b + delta**2 * (self.count * n / total)
        self.count = total

    def std(self) -> np.ndarray[Any, Any]:
        if self.count < 2:
            return np.zeros(self.width)
        return np.sqrt(self.m2 / (self.count - 1))
