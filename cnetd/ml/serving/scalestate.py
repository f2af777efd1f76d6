"""What the autoscaler shows of one served model: its last decisions with their reasons, a
short history of replicas over time (the model page's chart), why a scale-up waits, and the
cold-start times. Plain state: the scaler (cnetd.ml.serving.scaling) writes it."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from cnetd.clock import utc_now
from cnetd.metrics.prometheus import Histogram

COLD_START_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
DECISIONS_KEPT = 20
HISTORY_KEPT = 600  # one point a second: the last ten minutes


@dataclass
class ScalingState:
    decisions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=DECISIONS_KEPT))
    history: deque[tuple[float, int, int, int]] = field(
        default_factory=lambda: deque(maxlen=HISTORY_KEPT))  # (unix time, target, ready, in flight)
    waiting: str | None = None  # why a scale-up that was decided has not started (None: it has)
    waiting_kind: str | None = None  # memory_budget | node_memory | node_cpu
    panic: bool = False
    counts: dict[str, int] = field(default_factory=dict)  # decisions by kind: up, down, panic, cold_start, idle, unload
    cold_starts: Histogram = field(default_factory=lambda: Histogram(COLD_START_BUCKETS))
    last_cold_start: float | None = None  # seconds the last cold start took
    cold_since: float | None = None  # when the running cold start began (monotonic)
    queue_wait: float = 0.0  # seconds the oldest queued request had waited, at the last sample

    def decided(self, kind: str, previous: int, replicas: int, reason: str) -> dict[str, Any]:
        entry = {"at": utc_now(), "kind": kind, "from": previous, "to": replicas, "reason": reason}
        self.decisions.append(entry)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return entry

    def to_json(self) -> dict[str, Any]:
        return {
            "panic": self.panic,
            "waiting": self.waiting,
            "last_cold_start_seconds": self.last_cold_start,
            "decisions": list(reversed(self.decisions)),
        }
