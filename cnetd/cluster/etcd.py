"""An asyncio client for etcd v3 through its JSON gateway (aiohttp, no gRPC).

    async with EtcdClient(EtcdOptions(endpoints=("http://10.0.0.1:2379", ...))) as etcd:
        lease = await etcd.grant(15)
        taken = await etcd.txn([Compare.absent(key)], [Put(key, me, lease=lease.id)], [Get(key)])
        await etcd.keepalive(lease.id)  # raises LeaseLost once the lease is gone

What it offers: key-value reads and writes, txns, leases and watches; endpoint rotation
with a deadline per call (etcd_transport); username/password auth and TLS. What it leaves
to its callers: keepalive loops, elections, re-registering after LeaseLost, and listing
again after WatchCompacted. The wire format is in etcd_wire, the errors in etcd_errors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from types import TracebackType

from cnetd.cluster.etcd_errors import (
    EtcdAuthError,
    EtcdError,
    EtcdOutcomeUnknown,
    EtcdRequestError,
    EtcdUnavailable,
    LeaseLost,
    WatchCompacted,
)
from cnetd.cluster.etcd_transport import EtcdOptions, EtcdTransport, Json, request_error
from cnetd.cluster.etcd_watch import Watch
from cnetd.cluster.etcd_wire import (
    Bytes,
    Compare,
    Delete,
    DeleteResult,
    Get,
    KeyValue,
    Lease,
    LeaseInfo,
    Op,
    Put,
    PutResult,
    RangeResult,
    TxnResult,
    WatchBatch,
    WatchEvent,
    as_bytes,
    decode,
    number,
    prefix_range_end,
    txn_request,
    txn_result,
)

NOT_FOUND = 5
LEASE_NOT_FOUND = "etcdserver: requested lease not found"

__all__ = [
    "Compare", "Delete", "DeleteResult", "EtcdAuthError", "EtcdClient", "EtcdError", "EtcdOptions",
    "EtcdOutcomeUnknown", "EtcdRequestError", "EtcdUnavailable", "Get", "KeyValue", "Lease", "LeaseInfo",
    "LeaseLost", "Put", "PutResult", "RangeResult", "TxnResult", "Watch", "WatchBatch", "WatchCompacted",
    "WatchEvent", "prefix_range_end",
]


class EtcdClient:
    def __init__(self, options: EtcdOptions) -> None:
        self._transport = EtcdTransport(options)

    @property
    def options(self) -> EtcdOptions:
        return self._transport.options

    @property
    def requests(self) -> Counter[str]:
        """HTTP requests this client has sent to etcd, by gateway path (/v3/kv/txn, ...)."""
        return self._transport.requests

    @property
    def endpoint(self) -> str:
        """The endpoint the next call goes to first (the last one that answered)."""
        return self._transport.endpoint

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self._transport.close()

    # --- keys ------------------------------------------------------------------------------

    async def get(self, key: Bytes, *, serializable: bool = False) -> KeyValue | None:
        found = await self.range(key, serializable=serializable)
        return found.kvs[0] if found.kvs else None

    async def range(self, key: Bytes, *, prefix: bool = False, range_end: Bytes | None = None,
                    limit: int = 0, revision: int = 0, keys_only: bool = False, count_only: bool = False,
                    serializable: bool = False) -> RangeResult:
        op = Get(key, prefix, range_end, limit, revision, keys_only, count_only, serializable)
        return op.result(await self._transport.call(op.path, op.to_json()))

    async def put(self, key: Bytes, value: Bytes, *, lease: int = 0, prev_kv: bool = False) -> PutResult:
        op = Put(key, value, lease, prev_kv)
        return op.result(await self._transport.call(op.path, op.to_json()))

    async def delete(self, key: Bytes, *, prefix: bool = False, range_end: Bytes | None = None,
                     prev_kv: bool = False) -> DeleteResult:
        op = Delete(key, prefix, range_end, prev_kv)
        return op.result(await self._transport.call(op.path, op.to_json()))

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op] = (),
                  failure: Sequence[Op] = ()) -> TxnResult:
        """All compares hold -> the success ops, else the failure ops; atomically.

        Never retried on another endpoint once sent: raises EtcdOutcomeUnknown instead."""
        body = txn_request(compare, success, failure)
        answer = await self._transport.call("/v3/kv/txn", body, idempotent=False)
        return txn_result(answer, success, failure)

    # --- leases ----------------------------------------------------------------------------

    async def grant(self, ttl: int, lease_id: int = 0) -> Lease:
        """A new lease; etcd raises a TTL below its minimum (2 s with default timing)."""
        if ttl < 1:
            raise ValueError(f"lease TTL {ttl}: expected at least 1 second")
        body: Json = {"TTL": str(ttl)}
        if lease_id:
            body["ID"] = str(lease_id)
        answer = await self._transport.call("/v3/lease/grant", body)
        if answer.get("error"):
            raise EtcdRequestError(self.endpoint, 200, None, str(answer["error"]))
        return Lease(id=number(answer.get("ID")), ttl=number(answer.get("TTL")))

    async def keepalive(self, lease_id: int) -> Lease:
        """Refresh the lease once; raises LeaseLost when it has expired or was revoked.

        The gateway's keepalive is a stream: one request in, one {"result": ...} out. For a
        lease that is gone it answers without error and without a TTL (TTL 0 is left out)."""
        answer = await self._transport.call("/v3/lease/keepalive", {"ID": str(lease_id)})
        error = answer.get("error")
        if isinstance(error, dict):
            code = error.get("grpc_code")
            raise request_error(self.endpoint, number(error.get("http_code")),
                                code if isinstance(code, int) else None, str(error.get("message") or error))
        ttl = number((answer.get("result") or {}).get("TTL"))
        if ttl <= 0:
            raise LeaseLost(lease_id)
        return Lease(id=lease_id, ttl=ttl)

    async def time_to_live(self, lease_id: int, *, keys: bool = False) -> LeaseInfo:
        """How long the lease has left; raises LeaseLost when it is gone (etcd says TTL -1)."""
        body: Json = {"ID": str(lease_id)}
        if keys:
            body["keys"] = True
        answer = await self._transport.call("/v3/lease/timetolive", body)
        ttl = int(answer.get("TTL") or 0)
        if ttl < 0:
            raise LeaseLost(lease_id)
        return LeaseInfo(id=lease_id, ttl=ttl, granted_ttl=number(answer.get("grantedTTL")),
                         keys=tuple(decode(k) for k in answer.get("keys") or ()))

    async def revoke(self, lease_id: int) -> bool:
        """Revoke the lease and delete its keys; False when it was already gone."""
        try:
            await self._transport.call("/v3/lease/revoke", {"ID": str(lease_id)})
        except EtcdRequestError as err:
            if err.code == NOT_FOUND or err.message == LEASE_NOT_FOUND:
                return False
            raise
        return True

    # --- watch -----------------------------------------------------------------------------

    def watch(self, key: Bytes, *, prefix: bool = False, range_end: Bytes | None = None,
              start_revision: int = 0, prev_kv: bool = False, progress_notify: bool = False) -> Watch:
        """A watch to enter with `async with`; see etcd_watch.Watch."""
        if prefix and range_end is not None:
            raise ValueError("give prefix=True or a range_end, not both")
        end = prefix_range_end(key) if prefix else (as_bytes(range_end) if range_end is not None else None)
        return Watch(self._transport, as_bytes(key), end, start_revision, prev_kv, progress_notify)
