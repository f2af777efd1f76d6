"""A name's pointers: its default version, the previous default (warm until previous_until)
and the canary of a running rollout; and the sticky split that picks between them."""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, replace
from typing import Any

from cnetd.clock import utc_now
from cnetd.store.versions import PointerRow

SPLIT_BUCKETS = 10_000  # canary_percent is honoured to 0.01 %


@dataclass(frozen=True)
class Canary:
    model_id: str
    version: int
    percent: float
    started_at: str
    ends_at: float  # unix time
    duration: float
    max_error_rate: float
    max_p99_ratio: float
    min_requests: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Canary:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Pointer:
    name: str
    default_id: str | None = None
    previous_id: str | None = None
    previous_until: float | None = None  # unix time: the previous default is kept warm until then
    canary: Canary | None = None

    def to_row(self) -> PointerRow:
        return PointerRow(
            name=self.name, default_id=self.default_id, previous_id=self.previous_id,
            previous_until=None if self.previous_until is None else repr(self.previous_until),
            canary=None if self.canary is None else self.canary.to_json(), updated_at=utc_now(),
        )

    @classmethod
    def from_row(cls, row: PointerRow) -> Pointer:
        return cls(
            name=row.name, default_id=row.default_id, previous_id=row.previous_id,
            previous_until=None if row.previous_until is None else float(row.previous_until),
            canary=None if row.canary is None else Canary.from_json(row.canary),
        )

    def with_(self, **changes: Any) -> Pointer:
        return replace(self, **changes)


def bucket(key: str) -> int:
    """The key's bucket in [0, SPLIT_BUCKETS): the same key always lands in the same one."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SPLIT_BUCKETS


def pick(pointer: Pointer, key: str | None) -> str | None:
    """The deploy that answers a request for the name: the canary for its share of keys
    (a request without a key: by chance), else the default."""
    canary = pointer.canary
    if canary is not None:
        threshold = round(canary.percent * SPLIT_BUCKETS / 100)
        b = bucket(key) if key else random.randrange(SPLIT_BUCKETS)
        if b < threshold:
            return canary.model_id
    return pointer.default_id
