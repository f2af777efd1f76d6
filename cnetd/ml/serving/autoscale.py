"""The autoscaler's decision, pure: fed one sample a second of a served model's requests in
flight, queue depth and queue wait, it says how many replicas the model should have and why.
No clock, no I/O: time is what the samples say, so tests drive it sample by sample.

    scaler = Autoscaler(Policy.of(spec), replicas=1, now=0.0)
    decision = scaler.observe(Sample(at=1.0, in_flight=7, queue_depth=3, queue_wait=0.2))

How it decides (Knative's windows, Ray Serve's delays):

- Load is the requests in flight (queued in the agent or held by a worker), less those that
  arrived while the model had no ready replica (a cold start): those pile up only because
  nothing could answer them, and counting them overshoots.
- Stable: the load averaged over `stable_window` gives ceil(average / target_in_flight)
  replicas, within [max(1, min_replicas), max_replicas]. More than now, wanted for
  `scale_up_delay`, scales up; fewer, wanted for `scale_down_delay`, scales down.
- Panic: when the load averaged over the short `panic_window` reaches 200 % of what the
  current replicas aim at, the model scales up at once to what that window asks for and
  stays in panic for a `stable_window` after the last such sample: no scale-down meanwhile.
- Idle: with `min_replicas` 0, no request for `idle_unload_after` unloads the model (0
  replicas); a request to an unloaded model scales it to one replica at once (cold start).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from cnetd.ml.serving.spec import ServingSpec

PANIC_THRESHOLD = 2.0  # Knative's: the panic window's load at 200 % of the current capacity


@dataclass(frozen=True)
class Policy:
    min_replicas: int
    max_replicas: int
    target_in_flight: float = 2.0
    stable_window: float = 60.0
    panic_window: float = 6.0
    scale_up_delay: float = 30.0
    scale_down_delay: float = 600.0
    idle_unload_after: float = 300.0
    panic_threshold: float = PANIC_THRESHOLD

    @classmethod
    def of(cls, spec: ServingSpec) -> Policy:
        return cls(
            min_replicas=spec.min_replicas, max_replicas=spec.max_replicas, target_in_flight=spec.target_in_flight,
            stable_window=spec.stable_window, panic_window=spec.panic_window, scale_up_delay=spec.scale_up_delay,
            scale_down_delay=spec.scale_down_delay, idle_unload_after=spec.idle_unload_after,
        )

    @property
    def floor(self) -> int:
        """The fewest replicas while the model is in use (0 only once it is idle)."""
        return max(1, self.min_replicas)

    def bounded(self, replicas: int) -> int:
        return min(self.max_replicas, max(self.floor, replicas))


@dataclass(frozen=True)
class Sample:
    at: float  # seconds, on any monotonic clock
    in_flight: int  # requests in the agent for the model: queued, waiting for a replica, or at a worker
    queue_depth: int = 0  # of those, waiting in the batcher's queue
    queue_wait: float = 0.0  # seconds the oldest queued request has waited
    cold: int = 0  # of in_flight, those that arrived while no replica was ready: not load
    arrivals: int = 0  # requests that arrived since the previous sample

    @property
    def load(self) -> int:
        return max(0, self.in_flight - self.cold)


@dataclass(frozen=True)
class Decision:
    at: float
    replicas: int  # the target from now on
    previous: int
    reason: str
    panic: bool = False
    stable_load: float = 0.0  # the load averaged over the stable window
    panic_load: float = 0.0  # ... over the panic window

    @property
    def changed(self) -> bool:
        return self.replicas != self.previous


def _mean(values: list[int]) -> float:
    return sum(values) / len(values) if values else 0.0


class Autoscaler:
    """One model's autoscaler: its samples of the last stable window and the state of its
    delays and panic. observe() once a second; reset() when the replicas changed otherwise."""

    def __init__(self, policy: Policy, replicas: int, now: float) -> None:
        self.policy = policy
        self.replicas = replicas
        self.samples: deque[Sample] = deque()
        self.last_request = now
        self.panic_until: float | None = None
        self.up_since: float | None = None
        self.down_since: float | None = None

    def reset(self, replicas: int, policy: Policy | None = None) -> None:
        """The replicas were set from outside (a new spec, an unload to make room)."""
        self.replicas = replicas
        if policy is not None:
            self.policy = policy
        self.up_since = self.down_since = None

    def touch(self, now: float) -> None:
        """Count now as in use (a replica still starting): idle time runs from when it is ready."""
        self.last_request = now

    @property
    def in_panic(self) -> bool:
        return self.panic_until is not None

    def observe(self, sample: Sample) -> Decision:
        p = self.policy
        now = sample.at
        self.samples.append(sample)
        while self.samples and self.samples[0].at <= now - p.stable_window:
            self.samples.popleft()
        if sample.arrivals > 0 or sample.in_flight > 0:
            self.last_request = now
        stable = _mean([s.load for s in self.samples])
        panic_load = _mean([s.load for s in self.samples if s.at > now - p.panic_window])
        current = self.replicas

        def decide(replicas: int, reason: str) -> Decision:
            if replicas != current:
                self.up_since = self.down_since = None
            self.replicas = replicas
            return Decision(now, replicas, current, reason, self.in_panic, stable, panic_load)

        if current == 0:
            if sample.in_flight > 0 or sample.arrivals > 0:
                return decide(1, f"cold start: {max(sample.in_flight, sample.arrivals)} request(s) and no replica")
            return decide(0, "unloaded: no request")

        if self.panic_until is not None and now >= self.panic_until:
            self.panic_until = None
        if panic_load >= p.panic_threshold * p.target_in_flight * current and panic_load > 0:
            self.panic_until = now + p.stable_window
        if self.panic_until is not None:
            wanted = max(current, p.bounded(math.ceil(panic_load / p.target_in_flight)))
            if wanted > current:
                return decide(wanted, f"panic: {panic_load:.1f} requests in flight over the last {p.panic_window:g}s, "
                                      f"at least {p.panic_threshold:.0%} of the target for {current} "
                                      f"replica(s): {wanted} replicas")
            return decide(current, "panic: holding the replicas")

        if p.min_replicas == 0 and sample.in_flight == 0 and now - self.last_request >= p.idle_unload_after:
            return decide(0, f"idle: no request for {p.idle_unload_after:g}s (min_replicas 0): unloaded")

        wanted = p.bounded(math.ceil(stable / p.target_in_flight - 1e-9))
        if wanted > current:
            self.down_since = None
            if self.up_since is None:
                self.up_since = now
            if now - self.up_since >= p.scale_up_delay:
                return decide(wanted, f"{stable:.1f} requests in flight on average over {p.stable_window:g}s, "
                                      f"target {p.target_in_flight:g} per replica: {wanted} replicas "
                                      f"(wanted for {p.scale_up_delay:g}s)")
            return decide(current, f"{wanted} replicas wanted for {now - self.up_since:.0f}s of {p.scale_up_delay:g}s")
        if wanted < current:
            self.up_since = None
            if self.down_since is None:
                self.down_since = now
            if now - self.down_since >= p.scale_down_delay:
                return decide(wanted, f"{stable:.1f} requests in flight on average over {p.stable_window:g}s, "
                                      f"target {p.target_in_flight:g} per replica: {wanted} replicas "
                                      f"(fewer wanted for {p.scale_down_delay:g}s)")
            return decide(current, f"{wanted} replicas wanted for {now - self.down_since:.0f}s "
                                   f"of {p.scale_down_delay:g}s")
        self.up_since = self.down_since = None
        return decide(current, "steady")
