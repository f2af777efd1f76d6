"""Outcomes of requests per deploy since a mark: what a rollout compares (the canary's error
rate and p99 against the default's), and the in-flight count a switch drains."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_SAMPLES = 20_000  # latencies kept per deploy and window (a ring: the latest ones)


@dataclass
class Window:
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    _next: int = 0

    def add(self, seconds: float, error: bool) -> None:
        self.requests += 1
        if error:
            self.errors += 1
        if len(self.latencies) < MAX_SAMPLES:
            self.latencies.append(seconds)
        else:
            self.latencies[self._next] = seconds
            self._next = (self._next + 1) % MAX_SAMPLES

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p99(self) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]

    def to_json(self) -> dict[str, object]:
        p99 = self.p99()
        return {"requests": self.requests, "errors": self.errors, "error_rate": round(self.error_rate, 6),
                "p99_ms": None if p99 is None else round(p99 * 1000, 3)}


class Outcomes:
    def __init__(self) -> None:
        self.windows: dict[str, Window] = {}
        self.in_flight: dict[str, int] = {}

    def reset(self, *model_ids: str) -> None:
        for model_id in model_ids:
            self.windows[model_id] = Window()

    def window(self, model_id: str) -> Window:
        return self.windows.setdefault(model_id, Window())

    def started(self, model_id: str) -> None:
        self.in_flight[model_id] = self.in_flight.get(model_id, 0) + 1

    def ended(self, model_id: str, seconds: float | None, error: bool) -> None:
        """seconds None: no outcome to count (the caller went away)."""
        self.in_flight[model_id] = max(0, self.in_flight.get(model_id, 0) - 1)
        if seconds is not None:
            self.window(model_id).add(seconds, error)
