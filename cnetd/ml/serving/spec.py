"""How a model is served: ServingSpec, the settings the manager runs with, and its body
(POST /api/ml/models/{id}/serve, a deploy body's "serving"), where a setting left out keeps
its current value.

Replicas are either a fixed count (`replicas: N`, which means min_replicas = max_replicas =
N) or a range the autoscaler (cnetd.ml.serving.autoscale) moves within, following the
requests in flight; `min_replicas: 0` unloads an idle model. The defaults of the autoscaler's
settings follow Ray Serve (2 requests in flight per replica, up after 30 s, down after
600 s) and Knative (a 60 s stable window, a 6 s panic window at 200 % of the target)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from cnetd.bodies.decode import decode_body
from cnetd.errors import Invalid

Loader = Literal["auto", "script", "builtin"]
LOADERS: tuple[str, ...] = ("auto", "script", "builtin")
MAX_REPLICAS = 64


@dataclass(frozen=True)
class ServingSpec:
    replicas: int = 1  # replicas to start with: the fixed count, or max(1, min_replicas)
    max_batch_size: int = 32
    max_delay_ms: float = 2
    cache_size: int = 0
    timeout_ms: int = 30_000  # a request's whole life in the agent: queue + worker
    max_queue: int = 1024  # requests waiting for a worker; one more is a 429
    loader: Loader = "auto"
    min_replicas: int = -1  # -1: as `replicas` (a fixed count)
    max_replicas: int = -1  # -1: as `replicas`
    target_in_flight: float = 2.0  # requests in flight per replica the autoscaler aims at
    stable_window: float = 60.0  # seconds of in-flight averaged for a stable decision
    panic_window: float = 6.0  # seconds averaged to notice a burst (panic at 200 % of the target)
    scale_up_delay: float = 30.0  # how long more replicas must be wanted before they are added
    scale_down_delay: float = 600.0  # how long fewer must be wanted before replicas are stopped
    idle_unload_after: float = 300.0  # min_replicas 0: no request this long unloads the model
    cold_start_timeout: float = 60.0  # how long a request waits for a replica of an unloaded model

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            object.__setattr__(self, "min_replicas", self.replicas)
        if self.max_replicas < 0:
            object.__setattr__(self, "max_replicas", max(self.replicas, self.min_replicas))

    @property
    def autoscaled(self) -> bool:
        """Whether the autoscaler moves the replicas (a range, not a fixed count)."""
        return self.min_replicas != self.max_replicas

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServingSpec:
        """From the stored form (already validated once; unknown keys are ignored)."""
        known = {k: v for k, v in data.items() if k in FIELDS}
        return cls(**known)


FIELDS = {f.name for f in dataclasses.fields(ServingSpec)}
_DEFAULT = ServingSpec()


WHOLE = {"replicas", "max_batch_size", "cache_size", "timeout_ms", "max_queue", "min_replicas", "max_replicas"}
RANGE = ("min_replicas", "max_replicas")


def _default(name: str) -> str:
    return f"(default {getattr(_DEFAULT, name):g})"


# Whole numbers are declared as floats with multipleOf 1, as the API always took 3.0 for 3.
Replicas = Annotated[float, Meta(
    ge=1, le=MAX_REPLICAS, multiple_of=1,
    description=f"a fixed number of warm workers: min_replicas = max_replicas = replicas {_default('replicas')}",
)]
MinReplicas = Annotated[float, Meta(
    ge=0, le=MAX_REPLICAS, multiple_of=1,
    description="the fewest replicas the autoscaler keeps; 0 unloads the model after idle_unload_after "
                "without requests (default 1)",
)]
MaxReplicas = Annotated[float, Meta(
    ge=1, le=MAX_REPLICAS, multiple_of=1, description="the most replicas the autoscaler starts (default 1)",
)]
TargetInFlight = Annotated[float, Meta(
    gt=0, le=100_000,
    description=f"requests in flight (queued or at a worker) per replica the autoscaler aims at {_default('target_in_flight')}",
)]
StableWindow = Annotated[float, Meta(
    ge=1, le=3600, description="seconds over which in-flight requests are averaged for a stable decision (default 60)",
)]
PanicWindow = Annotated[float, Meta(
    ge=1, le=3600, description="seconds of the short window that notices a burst: its average at 200 % of the "
                               "target scales up at once and stops scale-downs (default 6)",
)]
ScaleUpDelay = Annotated[float, Meta(
    ge=0, le=3600, description="seconds more replicas must be wanted before they are started (default 30)",
)]
ScaleDownDelay = Annotated[float, Meta(
    ge=0, le=86400, description="seconds fewer replicas must be wanted before some are stopped (default 600)",
)]
IdleUnloadAfter = Annotated[float, Meta(
    ge=1, le=604800, description="min_replicas 0: seconds without a request after which the model is unloaded "
                                 "(default 300)",
)]
ColdStartTimeout = Annotated[float, Meta(
    ge=1, le=3600, description="seconds a request to an unloaded model waits for its first replica; then a 503 "
                               "with Retry-After (default 60)",
)]
MaxBatchSize = Annotated[float, Meta(
    ge=1, le=4096, multiple_of=1, description=f"most requests in one batch {_default('max_batch_size')}",
)]
MaxDelay = Annotated[float, Meta(
    ge=0, le=1000, description=f"how long a batch waits to fill, in ms {_default('max_delay_ms')}",
)]
CacheSize = Annotated[float, Meta(
    ge=0, le=1_000_000, multiple_of=1, description=f"answers kept for repeated inputs {_default('cache_size')}",
)]
TimeoutMs = Annotated[float, Meta(
    ge=1, le=600_000, multiple_of=1,
    description=f"a request's whole time in the agent (queue and worker), in ms {_default('timeout_ms')}",
)]
MaxQueue = Annotated[float, Meta(
    ge=1, le=100_000, multiple_of=1,
    description=f"requests waiting for a worker; one more is a 429 {_default('max_queue')}",
)]
LoaderChoice = Annotated[Loader, Meta(
    description="script: the model's own serve command; builtin: the agent's loader for joblib, pickle and "
                "Keras files; auto: the script's serve when it has one and it becomes ready, else builtin (default auto)",
)]


class ServingSpecBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """How a model is served by warm workers. A setting left out keeps its current value
    (its default when the model is not served yet). Either `replicas` (a fixed count) or
    `min_replicas`/`max_replicas` (the autoscaler's range), not both."""

    replicas: Replicas | UnsetType = UNSET
    min_replicas: MinReplicas | UnsetType = UNSET
    max_replicas: MaxReplicas | UnsetType = UNSET
    target_in_flight: TargetInFlight | UnsetType = UNSET
    stable_window: StableWindow | UnsetType = UNSET
    panic_window: PanicWindow | UnsetType = UNSET
    scale_up_delay: ScaleUpDelay | UnsetType = UNSET
    scale_down_delay: ScaleDownDelay | UnsetType = UNSET
    idle_unload_after: IdleUnloadAfter | UnsetType = UNSET
    cold_start_timeout: ColdStartTimeout | UnsetType = UNSET
    max_batch_size: MaxBatchSize | UnsetType = UNSET
    max_delay_ms: MaxDelay | UnsetType = UNSET
    cache_size: CacheSize | UnsetType = UNSET
    timeout_ms: TimeoutMs | UnsetType = UNSET
    max_queue: MaxQueue | UnsetType = UNSET
    loader: LoaderChoice | UnsetType = UNSET

    def apply(self, base: ServingSpec | None = None, prefix: str = "") -> ServingSpec:
        """base (or the defaults) with the settings this body gives; an Invalid naming the
        field (after prefix, "serving.") when they do not go together."""
        changes: dict[str, Any] = {}
        for name in FIELDS:
            value = getattr(self, name)
            if value is not UNSET:
                changes[name] = int(value) if name in WHOLE else value
        if "replicas" in changes:
            given = [name for name in RANGE if name in changes]
            if given:
                raise Invalid(f"{prefix}{given[0]}", "give either replicas (a fixed count) or min_replicas and "
                                                     "max_replicas (the autoscaler's range), not both")
            changes["min_replicas"] = changes["max_replicas"] = changes["replicas"]
        spec = dataclasses.replace(base or ServingSpec(), **changes)
        if spec.min_replicas > spec.max_replicas:
            field = "min_replicas" if "min_replicas" in changes else "max_replicas"
            raise Invalid(f"{prefix}{field}", f"min_replicas ({spec.min_replicas}) must not be more than "
                                              f"max_replicas ({spec.max_replicas})")
        if spec.panic_window > spec.stable_window:
            field = "panic_window" if "panic_window" in changes else "stable_window"
            raise Invalid(f"{prefix}{field}", f"panic_window ({spec.panic_window:g}s) must not be longer than "
                                              f"stable_window ({spec.stable_window:g}s)")
        if "replicas" not in changes and any(name in changes for name in RANGE):
            spec = dataclasses.replace(spec, replicas=max(1, spec.min_replicas))
        return spec


def parse_spec(body: Any, prefix: str = "", base: ServingSpec | None = None) -> ServingSpec:
    """A serving body (None: no body) applied to base; prefix names it in errors ("serving.")."""
    if body is None:
        return base or ServingSpec()
    where = prefix.rstrip(".")
    return decode_body(body, ServingSpecBody, where).apply(base, f"{where}." if where else "")
