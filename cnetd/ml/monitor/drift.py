"""Input drift: the training result's `input_stats` (per-feature mean and std of the data the
model was trained on) against running statistics of the inputs the model is served.

Accepted shapes of `input_stats` (the last JSON object the training printed):
  {"features": ["a", "b"], "mean": [0.1, 2.0], "std": [1.0, 0.5]}   (features optional)
  {"a": {"mean": 0.1, "std": 1.0}, "b": {"mean": 2.0, "std": 0.5}}

The drift score of a feature is the standardised mean shift |served mean - training mean| /
training std: 0 while the served inputs are centred like the training data, 1 when they moved
by one training standard deviation. A feature whose training std is 0 has no score (None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnetd.metrics.welford import RunningStats

MAX_FEATURES = 4096  # wider inputs (images) are not tracked per feature


@dataclass(frozen=True)
class Baseline:
    features: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def parse_input_stats(value: Any) -> Baseline | None:
    """The baseline an `input_stats` value describes; None when it is absent or malformed
    (a model's own output is never an error of the agent's)."""
    if not isinstance(value, dict) or not value:
        return None
    if "mean" in value and "std" in value:
        means, stds = value.get("mean"), value.get("std")
        if isinstance(means, (int, float)) and isinstance(stds, (int, float)):
            means, stds = [means], [stds]
        if not isinstance(means, list) or not isinstance(stds, list) or len(means) != len(stds):
            return None
        names = value.get("features")
        if not (isinstance(names, list) and len(names) == len(means) and all(isinstance(n, str) for n in names)):
            names = [f"x{i}" for i in range(len(means))]
        pairs = list(zip(names, means, stds, strict=True))
    else:
        pairs = []
        for name, stats in value.items():
            if not isinstance(stats, dict):
                return None
            pairs.append((str(name), stats.get("mean"), stats.get("std")))
    if not pairs or len(pairs) > MAX_FEATURES:
        return None
    clean = [(n[:100], _number(m), _number(s)) for n, m, s in pairs]
    if any(m is None or s is None or s < 0 for _, m, s in clean):
        return None
    return Baseline(
        features=tuple(n for n, _, _ in clean),
        mean=tuple(float(m or 0.0) for _, m, _ in clean),
        std=tuple(float(s or 0.0) for _, _, s in clean),
    )


FLUSH_ROWS = 512  # rows gathered before they are folded into the statistics (numpy per request is ~100 us)


def _numeric_row(row: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)


class InputDrift:
    """Running statistics of the served inputs of one version, against its baseline. The
    hot path only checks shapes and keeps the rows; they are folded into the statistics
    FLUSH_ROWS at a time, and whenever the statistics are read."""

    def __init__(self, baseline: Baseline) -> None:
        self.baseline = baseline
        self.stats = RunningStats(len(baseline.features))
        self.skipped = 0  # instances not counted: not rows of that many numbers
        self._rows: list[list[Any]] = []
        self._arrays: list[np.ndarray[Any, Any]] = []
        self._pending = 0

    def observe(self, instances: Any) -> None:
        """instances: a list of rows (or of numbers for a one-feature model), or an array
        (wider arrays are flattened per instance)."""
        width = self.stats.width
        if isinstance(instances, np.ndarray):
            rows = instances
            if rows.ndim == 1 and width == 1:
                rows = rows.reshape(-1, 1)
            elif rows.ndim > 2 and rows.shape[0] > 0:
                rows = rows.reshape(rows.shape[0], -1)
            if rows.ndim != 2 or rows.shape[1] != width or rows.dtype.kind not in "biuf":
                self.skipped += rows.shape[0] if rows.ndim else 1
                return
            self._arrays.append(rows)
            self._pending += rows.shape[0]
        elif isinstance(instances, list):
            if width == 1 and not any(isinstance(v, list) for v in instances):
                self._rows.extend([v] for v in instances)
            elif all(isinstance(row, list) and len(row) == width for row in instances):
                self._rows.extend(instances)
            else:
                self.skipped += len(instances)
                return
            self._pending += len(instances)
        else:
            self.skipped += 1
            return
        if self._pending >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        width = self.stats.width
        if self._rows:
            rows, self._rows = self._rows, []
            try:
                batch = np.asarray(rows, dtype=np.float64)
            except (TypeError, ValueError):
                good = [row for row in rows if _numeric_row(row)]
                self.skipped += len(rows) - len(good)
                batch = np.asarray(good, dtype=np.float64).reshape(-1, width)
            self.stats.add(batch)
        if self._arrays:
            arrays, self._arrays = self._arrays, []
            self.stats.add(np.concatenate([a.astype(np.float64, copy=False) for a in arrays]))
        self._pending = 0

    def features(self) -> list[dict[str, Any]]:
        """Per feature: its training mean and std, the served mean and std, and the score."""
        self.flush()
        served_mean, served_std = self.stats.mean, self.stats.std()
        out = []
        for i, name in enumerate(self.baseline.features):
            mean, std = self.baseline.mean[i], self.baseline.std[i]
            seen = self.stats.count > 0
            score = abs(float(served_mean[i]) - mean) / std if seen and std > 0 else None
            out.append({
                "feature": name, "train_mean": mean, "train_std": std,
                "served_mean": float(served_mean[i]) if seen else None,
                "served_std": float(served_std[i]) if self.stats.count > 1 else None,
                "score": None if score is None else round(score, 6),
            })
        return out

    @property
    def observed(self) -> int:
        self.flush()
        return self.stats.count

    def to_json(self) -> dict[str, Any]:
        features = self.features()
        return {"observed": self.stats.count, "skipped": self.skipped, "features": features}
