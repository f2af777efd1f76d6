"""How a model is served: the settings of POST /api/ml/models/{id}/serve (and of a deploy
body's "serving"), validated with the field named in every error."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from cnetd.errors import Invalid
from cnetd.tasks.request import finite_number, json_type, reject_unknown, require_object

Loader = Literal["auto", "script", "builtin"]
LOADERS: tuple[str, ...] = ("auto", "script", "builtin")

# name -> (default, lowest, highest, whole numbers only)
LIMITS: dict[str, tuple[float, float, float, bool]] = {
    "replicas": (1, 1, 64, True),
    "max_batch_size": (32, 1, 4096, True),
    "max_delay_ms": (2, 0, 1000, False),
    "cache_size": (0, 0, 1_000_000, True),
    "timeout_ms": (30_000, 1, 600_000, True),
    "max_queue": (1024, 1, 100_000, True),
}
FIELDS = {*LIMITS, "loader"}


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


def parse_spec(body: Any, prefix: str = "", base: ServingSpec | None = None) -> ServingSpec:
    """Validate a serving body; fields left out keep `base`'s values (or the defaults)."""
    if body is None:
        return base or ServingSpec()
    body = require_object(body, prefix.rstrip(".") or "body")
    reject_unknown(body, FIELDS, prefix=prefix)
    values = (base or ServingSpec()).to_json()
    for name, (_, lo, hi, whole) in LIMITS.items():
        if name not in body:
            continue
        value = body[name]
        where = prefix + name
        if finite_number(value) is None:
            raise Invalid(where, f"must be a finite number, got {json_type(value)}")
        if whole and not float(value).is_integer():
            raise Invalid(where, f"must be a whole number, got {value!r}")
        if not lo <= value <= hi:
            raise Invalid(where, f"must be between {lo:g} and {hi:g}, got {value!r}")
        values[name] = int(value) if whole else float(value)
    if "loader" in body:
        loader = body["loader"]
        if loader not in LOADERS:
            raise Invalid(prefix + "loader", f"must be one of {', '.join(LOADERS)}, got {loader!r}")
        values["loader"] = loader
    return ServingSpec(**values)
