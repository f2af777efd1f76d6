"""The cluster-wide list of tasks and models, read from the summaries each node mirrors
into etcd (cluster/mirror.py). A task that was not finished on a node that is now offline
is shown as lost, with since when; once the node is back its own SQLite is the truth and
its mirror corrects the view."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from cnetd.cluster.directory import ClusterUnavailable, NodeDirectory
from cnetd.cluster.etcd import EtcdClient, EtcdError
from cnetd.cluster.records import (
    PlacedTask,
    TaskSummary,
    decode,
    node_tasks_prefix,
    placed_key,
    task_key,
    tasks_prefix,
)
from cnetd.tasks.model import TERMINAL

TERMINAL_NAMES = frozenset(str(s) for s in TERMINAL)


async def read_summaries(etcd: EtcdClient, prefix: str, node_id: str | None = None) -> list[TaskSummary]:
    """Every mirrored summary (one node's, given node_id); a record that does not decode is
    skipped rather than failing the whole list."""
    key = node_tasks_prefix(prefix, node_id) if node_id else tasks_prefix(prefix)
    found = await etcd.range(key, prefix=True)
    summaries = []
    for kv in found.kvs:
        try:
            summaries.append(decode(kv.value, TaskSummary))
        except msgspec.DecodeError:
            continue
    return summaries


def shown(summary: TaskSummary, offline_since: Mapping[str, str]) -> dict[str, Any]:
    """A summary as the API lists it; lost when its node is offline and it had not ended.
    offline_since: node id -> when it was last seen, for the nodes that are offline."""
    out: dict[str, Any] = msgspec.to_builtins(summary)
    since = offline_since.get(summary.node_id)
    out["node_status"] = "online" if since is None else "offline"
    if since is not None and summary.status not in TERMINAL_NAMES:
        out["reason"] = f"lost: node {summary.node_id} offline since {since or 'an unknown time'}"
        out["lost"] = True
    return out


def newest_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r.get("created_at") or "", r["id"]), reverse=True)


def is_model(summary: TaskSummary) -> bool:
    """A model is its deploy task: an ML task that is not the work of another model."""
    return summary.type == "ml_model" and summary.model_id is None


class ClusterView:
    """What every node has, for GET /api/tasks?node=all and GET /api/ml/models?node=all,
    and where a task lives, for calls about a task this node does not have."""

    def __init__(self, etcd: EtcdClient, prefix: str, directory: NodeDirectory) -> None:
        self._etcd = etcd
        self._prefix = prefix
        self._directory = directory

    async def tasks(self, *, node_id: str | None = None, status: str | None = None, type_: str | None = None,
                    kind: str | None = None, model_id: str | None = None, models_only: bool = False,
                    limit: int = 1000, offset: int = 0) -> list[dict[str, Any]]:
        try:
            summaries = await read_summaries(self._etcd, self._prefix, node_id)
        except EtcdError as exc:
            raise ClusterUnavailable(exc) from None
        offline = {n.node_id: n.last_seen for n in await self._directory.list() if n.status != "online"}
        rows = [
            shown(s, offline) for s in summaries
            if (status is None or s.status == status) and (type_ is None or s.type == type_)
            and (kind is None or s.kind == kind) and (model_id is None or s.model_id == model_id)
            and (not models_only or is_model(s))
        ]
        return newest_first(rows)[offset : offset + limit]

    async def owner_of(self, task_id: str) -> str | None:
        """The node that has task_id: where the scheduler placed it (one read, while the
        placement is kept), else the node whose mirror holds it; None when no node has it."""
        try:
            placed = await self._etcd.get(placed_key(self._prefix, task_id))
            if placed is not None:
                try:
                    return decode(placed.value, PlacedTask).node_id
                except (msgspec.DecodeError, msgspec.ValidationError):
                    pass
            found = await self._etcd.range(tasks_prefix(self._prefix), prefix=True, keys_only=True)
        except EtcdError as exc:
            raise ClusterUnavailable(exc) from None
        suffix = f"/{task_id}".encode()
        for kv in found.kvs:
            if kv.key.endswith(suffix):
                return kv.key[len(tasks_prefix(self._prefix)) : -len(suffix)].decode()
        return None

    async def find(self, task_id: str, node_id: str | None = None) -> dict[str, Any] | None:
        """One task as tasks() lists it (lost when its node is offline), or None when no node
        mirrors it. node_id: where to look, when the caller knows."""
        owner = node_id or await self.owner_of(task_id)
        if owner is None:
            return None
        try:
            kv = await self._etcd.get(task_key(self._prefix, owner, task_id))
        except EtcdError as exc:
            raise ClusterUnavailable(exc) from None
        if kv is None:
            return None
        try:
            summary = decode(kv.value, TaskSummary)
        except msgspec.DecodeError:
            return None
        offline = {n.node_id: n.last_seen for n in await self._directory.list() if n.status != "online"}
        return shown(summary, offline)
