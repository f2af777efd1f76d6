"""How a model is served: ServingSpec, the settings the manager runs with, and its body
(POST /api/ml/models/{id}/serve, a deploy body's "serving"), where a setting left out keeps
its current value."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from cnetd.bodies.decode import decode_body

Loader = Literal["auto", "script", "builtin"]
LOADERS: tuple[str, ...] = ("auto", "script", "builtin")


@dataclass(frozen=True)
class ServingSpec:
    replicas: int = 1
    max_batch_size: int = 32
    max_delay_ms: float = 2
    cache_size: int = 0
    timeout_ms: int = 30_000  # a request's whole life in the agent: queue + worker
    max_queue: int = 1024  # requests waiting for a worker; one more is a 429
    loader: Loader = "auto"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServingSpec:
        """From the stored form (already validated once; unknown keys are ignored)."""
        known = {k: v for k, v in data.items() if k in FIELDS}
        return cls(**known)


FIELDS = {f.name for f in dataclasses.fields(ServingSpec)}
_DEFAULT = ServingSpec()


WHOLE = {"replicas", "max_batch_size", "cache_size", "timeout_ms", "max_queue"}


def _default(name: str) -> str:
    return f"(default {getattr(_DEFAULT, name):g})"


# Whole numbers are declared as floats with multipleOf 1, as the API always took 3.0 for 3.
Replicas = Annotated[float, Meta(ge=1, le=64, multiple_of=1, description=f"warm workers {_default('replicas')}")]
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
                "Keras files; auto: builtin when it can load the file (default auto)",
)]


class ServingSpecBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """How a model is served by warm workers. A setting left out keeps its current value
    (its default when the model is not served yet)."""

    replicas: Replicas | UnsetType = UNSET
    max_batch_size: MaxBatchSize | UnsetType = UNSET
    max_delay_ms: MaxDelay | UnsetType = UNSET
    cache_size: CacheSize | UnsetType = UNSET
    timeout_ms: TimeoutMs | UnsetType = UNSET
    max_queue: MaxQueue | UnsetType = UNSET
    loader: LoaderChoice | UnsetType = UNSET

    def apply(self, base: ServingSpec | None = None) -> ServingSpec:
        """base (or the defaults) with the settings this body gives."""
        changes: dict[str, Any] = {}
        for name in FIELDS:
            value = getattr(self, name)
            if value is not UNSET:
                changes[name] = int(value) if name in WHOLE else value
        return dataclasses.replace(base or ServingSpec(), **changes)


def parse_spec(body: Any, prefix: str = "", base: ServingSpec | None = None) -> ServingSpec:
    """A serving body (None: no body) applied to base; prefix names it in errors ("serving.")."""
    if body is None:
        return base or ServingSpec()
    return decode_body(body, ServingSpecBody, prefix.rstrip(".")).apply(base)
