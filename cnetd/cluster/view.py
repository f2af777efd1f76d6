"""The cluster-wide list of tasks and models, read from the summaries each node mirrors
into etcd (cluster/mirror.py). A task that was not finished on a node that is now offline
is shown as lost, with since when; once the node is back its own SQLite is the truth and
its mirror corrects the view."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from cnetd.cluster.etcd import EtcdClient
from cnetd.cluster.records import TaskSummary, decode, node_tasks_prefix, tasks_prefix
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
