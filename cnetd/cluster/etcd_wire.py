"""etcd's v3 JSON gateway wire format: requests as small dataclasses, answers as typed results.

The gateway speaks proto3 JSON: bytes fields (keys, values) are base64, int64 fields come
back as decimal strings, and fields holding false, 0 or empty are left out altogether (a
failed txn has no `succeeded`, an empty range no `kvs`, a key's first version no `lease`).
Everything here reads with defaults for that reason. Keys and values are bytes; a str is
taken as UTF-8.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias

Bytes: TypeAlias = bytes | str
Json: TypeAlias = dict[str, Any]

# A range end of "\0" means "every key from `key` on" (etcd's convention).
ALL_FROM_KEY = b"\x00"


def as_bytes(value: Bytes) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def encode(value: Bytes) -> str:
    return base64.b64encode(as_bytes(value)).decode("ascii")


def decode(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def number(value: str | int | None) -> int:
    """An int64 from the gateway: a decimal string, or absent for 0."""
    return int(value) if value else 0


def prefix_range_end(prefix: Bytes) -> bytes:
    """The range end that selects every key starting with prefix: its last byte below
    0xff plus one, the bytes after it dropped (`/cnet/` -> `/cnet0`). A prefix of only 0xff
    bytes, or an empty one, has no such end: every key from it on."""
    raw = bytearray(as_bytes(prefix))
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return ALL_FROM_KEY
    raw[-1] += 1
    return bytes(raw)


# --- answers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int  # 0: not attached to a lease

    @classmethod
    def from_json(cls, data: Json) -> KeyValue:
        return cls(
            key=decode(data.get("key")),
            value=decode(data.get("value")),
            create_revision=number(data.get("create_revision")),
            mod_revision=number(data.get("mod_revision")),
            version=number(data.get("version")),
            lease=number(data.get("lease")),
        )


def revision_of(data: Json) -> int:
    return number((data.get("header") or {}).get("revision"))


def _kv_or_none(data: Json | None) -> KeyValue | None:
    return KeyValue.from_json(data) if data else None


@dataclass(frozen=True)
class RangeResult:
    revision: int  # the store's revision the range was read at: watch from revision + 1
    kvs: tuple[KeyValue, ...]
    count: int  # keys in the range (more than len(kvs) when a limit cut it)
    more: bool

    @classmethod
    def from_json(cls, data: Json) -> RangeResult:
        return cls(
            revision=revision_of(data),
            kvs=tuple(KeyValue.from_json(kv) for kv in data.get("kvs") or ()),
            count=number(data.get("count")),
            more=bool(data.get("more")),
        )


@dataclass(frozen=True)
class PutResult:
    revision: int
    prev_kv: KeyValue | None  # only when asked for (prev_kv=True) and the key existed

    @classmethod
    def from_json(cls, data: Json) -> PutResult:
        return cls(revision=revision_of(data), prev_kv=_kv_or_none(data.get("prev_kv")))


@dataclass(frozen=True)
class DeleteResult:
    revision: int
    deleted: int
    prev_kvs: tuple[KeyValue, ...]  # only when asked for (prev_kv=True)

    @classmethod
    def from_json(cls, data: Json) -> DeleteResult:
        return cls(
            revision=revision_of(data),
            deleted=number(data.get("deleted")),
            prev_kvs=tuple(KeyValue.from_json(kv) for kv in data.get("prev_kvs") or ()),
        )


OpResult: TypeAlias = RangeResult | PutResult | DeleteResult


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool  # the compares held, so the success branch ran
    revision: int
    responses: tuple[OpResult, ...]  # one per operation of the branch that ran, in order


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: int  # seconds; as granted (etcd raises a TTL below its minimum) or as refreshed


@dataclass(frozen=True)
class LeaseInfo:
    id: int
    ttl: int  # seconds left
    granted_ttl: int
    keys: tuple[bytes, ...]  # only when asked for (keys=True)


# --- requests ----------------------------------------------------------------------------


def _range_fields(key: Bytes, prefix: bool, range_end: Bytes | None) -> Json:
    fields: Json = {"key": encode(key)}
    if prefix and range_end is not None:
        raise ValueError("give prefix=True or a range_end, not both")
    end = prefix_range_end(key) if prefix else range_end
    if end is not None:
        fields["range_end"] = encode(end)
    return fields


@dataclass(frozen=True)
class Get:
    """A range read: one key, a prefix (prefix=True) or [key, range_end)."""

    key: Bytes
    prefix: bool = False
    range_end: Bytes | None = None
    limit: int = 0
    revision: int = 0  # 0: the newest
    keys_only: bool = False
    count_only: bool = False
    serializable: bool = False  # read the member's local copy: faster, possibly stale

    path: ClassVar[str] = "/v3/kv/range"
    txn_request: ClassVar[str] = "request_range"
    txn_response: ClassVar[str] = "response_range"

    def to_json(self) -> Json:
        fields = _range_fields(self.key, self.prefix, self.range_end)
        for name in ("limit", "revision"):
            if getattr(self, name):
                fields[name] = str(getattr(self, name))
        for name in ("keys_only", "count_only", "serializable"):
            if getattr(self, name):
                fields[name] = True
        return fields

    @staticmethod
    def result(data: Json) -> RangeResult:
        return RangeResult.from_json(data)


@dataclass(frozen=True)
class Put:
    key: Bytes
    value: Bytes
    lease: int = 0  # 0: no lease
    prev_kv: bool = False

    path: ClassVar[str] = "/v3/kv/put"
    txn_request: ClassVar[str] = "request_put"
    txn_response: ClassVar[str] = "response_put"

    def to_json(self) -> Json:
        fields: Json = {"key": encode(self.key), "value": encode(self.value)}
        if self.lease:
            fields["lease"] = str(self.lease)
        if self.prev_kv:
            fields["prev_kv"] = True
        return fields

    @staticmethod
    def result(data: Json) -> PutResult:
        return PutResult.from_json(data)


@dataclass(frozen=True)
class Delete:
    key: Bytes
    prefix: bool = False
    range_end: Bytes | None = None
    prev_kv: bool = False

    path: ClassVar[str] = "/v3/kv/deleterange"
    txn_request: ClassVar[str] = "request_delete_range"
    txn_response: ClassVar[str] = "response_delete_range"

    def to_json(self) -> Json:
        fields = _range_fields(self.key, self.prefix, self.range_end)
        if self.prev_kv:
            fields["prev_kv"] = True
        return fields

    @staticmethod
    def result(data: Json) -> DeleteResult:
        return DeleteResult.from_json(data)


Op: TypeAlias = Get | Put | Delete

CompareOp = Literal["==", "!=", "<", ">"]
_COMPARE_RESULTS: dict[str, str] = {"==": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}
CompareTarget = Literal["VERSION", "CREATE", "MOD", "VALUE", "LEASE"]
_TARGET_FIELDS: dict[str, str] = {
    "VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision",
    "VALUE": "value", "LEASE": "lease",
}


@dataclass(frozen=True)
class Compare:
    """One condition of a txn, e.g. Compare.create_revision(key, "==", 0): the key is absent.

    A missing key has version, create_revision, mod_revision and lease 0 and an empty value."""

    key: Bytes
    target: CompareTarget
    op: CompareOp
    operand: int | Bytes = field(default=0)

    @classmethod
    def version(cls, key: Bytes, op: CompareOp, version: int) -> Compare:
        return cls(key, "VERSION", op, version)

    @classmethod
    def create_revision(cls, key: Bytes, op: CompareOp, revision: int) -> Compare:
        return cls(key, "CREATE", op, revision)

    @classmethod
    def mod_revision(cls, key: Bytes, op: CompareOp, revision: int) -> Compare:
        return cls(key, "MOD", op, revision)

    @classmethod
    def value(cls, key: Bytes, op: CompareOp, value: Bytes) -> Compare:
        return cls(key, "VALUE", op, value)

    @classmethod
    def lease(cls, key: Bytes, op: CompareOp, lease_id: int) -> Compare:
        return cls(key, "LEASE", op, lease_id)

    @classmethod
    def absent(cls, key: Bytes) -> Compare:
        return cls.create_revision(key, "==", 0)

    def to_json(self) -> Json:
        if self.op not in _COMPARE_RESULTS:
            raise ValueError(f"compare op {self.op!r}: expected one of {', '.join(_COMPARE_RESULTS)}")
        if self.target not in _TARGET_FIELDS:
            raise ValueError(f"compare target {self.target!r}: expected one of {', '.join(_TARGET_FIELDS)}")
        fields: Json = {"key": encode(self.key), "target": self.target, "result": _COMPARE_RESULTS[self.op]}
        if self.target == "VALUE":
            if isinstance(self.operand, int):
                raise ValueError("a VALUE compare needs bytes or str, not an int")
            fields["value"] = encode(self.operand)
        else:
            if not isinstance(self.operand, int):
                raise ValueError(f"a {self.target} compare needs an int")
            fields[_TARGET_FIELDS[self.target]] = str(self.operand)
        return fields


def txn_request(compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> Json:
    return {
        "compare": [c.to_json() for c in compare],
        "success": [{op.txn_request: op.to_json()} for op in success],
        "failure": [{op.txn_request: op.to_json()} for op in failure],
    }


def txn_result(data: Json, success: Sequence[Op], failure: Sequence[Op]) -> TxnResult:
    succeeded = bool(data.get("succeeded"))
    ops = success if succeeded else failure
    answers = data.get("responses") or []
    if len(answers) != len(ops):
        raise ValueError(f"etcd txn: {len(answers)} responses for {len(ops)} operations")
    responses = tuple(op.result(answer.get(op.txn_response) or {}) for op, answer in zip(ops, answers, strict=True))
    return TxnResult(succeeded=succeeded, revision=revision_of(data), responses=responses)


# --- watch -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["PUT", "DELETE"]
    kv: KeyValue  # for a DELETE: the key and the deleting revision (mod_revision) only
    prev_kv: KeyValue | None  # only when the watch asked for prev_kv

    @classmethod
    def from_json(cls, data: Json) -> WatchEvent:
        return cls(
            type="DELETE" if data.get("type") == "DELETE" else "PUT",  # PUT is 0: left out
            kv=KeyValue.from_json(data.get("kv") or {}),
            prev_kv=_kv_or_none(data.get("prev_kv")),
        )


@dataclass(frozen=True)
class WatchBatch:
    """Events etcd sent together, oldest first; none for a progress notification."""

    revision: int  # the header's revision: the store had reached it when this was sent
    events: tuple[WatchEvent, ...]
