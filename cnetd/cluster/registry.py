"""The parent's side: which children report to it, whether they are still up, and the
token each one presented (kept in memory only: a restarted parent learns it again from
the next heartbeat, so no secret is written to the store)."""

from __future__ import annotations

from typing import Any

from cnetd.clock import seconds_since, utc_now
from cnetd.cluster.report import NodeReport
from cnetd.errors import Conflict, Invalid, NotFound, Unavailable
from cnetd.store import nodes as nq
from cnetd.store.db import Database
from cnetd.store.nodes import NodeRow

MISSED_BEATS_OFFLINE = 3  # a child is offline once this many heartbeats are overdue
SLACK_SECONDS = 2.0


def is_online(row: NodeRow) -> bool:
    return seconds_since(row.last_seen) <= row.interval * MISSED_BEATS_OFFLINE + SLACK_SECONDS


def node_json(row: NodeRow) -> dict[str, Any]:
    return {
        "node_id": row.node_id,
        "role": "child",
        "url": row.url,
        "status": "online" if is_online(row) else "offline",
        "last_seen": row.last_seen,
        "seconds_since_seen": round(max(0.0, seconds_since(row.last_seen)), 1),
        "registered_at": row.registered_at,
        "heartbeat_interval": row.interval,
        **row.report,
    }


class NodeRegistry:
    def __init__(self, db: Database, own_id: str) -> None:
        self.db = db
        self.own_id = own_id
        self._tokens: dict[str, str | None] = {}

    async def heartbeat(self, report: NodeReport, token: str | None) -> dict[str, Any]:
        if report.node_id == self.own_id:
            raise Conflict(f"node_id {report.node_id} is this node's own id; give each agent its own agent.node_id")
        now = utc_now()
        row = NodeRow(node_id=report.node_id, url=report.url, report=report.info, interval=report.interval,
                      registered_at=now, last_seen=now)
        stored = await self.db.write(lambda c: nq.upsert_node(c, row))
        self._tokens[report.node_id] = token
        return node_json(stored)

    async def list(self) -> list[dict[str, Any]]:
        return [node_json(row) for row in await self.db.read(nq.list_nodes)]

    async def row(self, node_id: str) -> NodeRow:
        row = await self.db.read(lambda c: nq.get_node(c, node_id))
        if row is None:
            raise NotFound(f"node {node_id} is not a child of this node", {"node_id": node_id})
        return row

    async def get(self, node_id: str) -> dict[str, Any]:
        return node_json(await self.row(node_id))

    async def forget(self, node_id: str) -> None:
        row = await self.row(node_id)
        if is_online(row):
            raise Conflict(f"node {node_id} is online: it would register again with its next heartbeat; "
                           "stop it or turn its discovery off first", {"node_id": node_id})
        await self.db.write(lambda c: nq.delete_node(c, node_id))
        self._tokens.pop(node_id, None)

    async def reachable(self, node_id: str, field: str | None = None) -> tuple[NodeRow, str | None]:
        """The child and the token to call it with; 400 (naming field) or 404 when it is
        not a child, 503 when it is offline."""
        try:
            row = await self.row(node_id)
        except NotFound:
            if field is None:
                raise
            raise Invalid(field, f"{node_id} is neither this node nor one of its children (GET /api/nodes)") from None
        if not is_online(row):
            raise Unavailable(f"node {node_id} is offline (last heartbeat {row.last_seen})",
                              {"node_id": node_id, "last_seen": row.last_seen})
        if node_id not in self._tokens:
            raise Unavailable(f"node {node_id} has not reported since this agent started; its next heartbeat "
                              f"is due within {row.interval:.0f}s", {"node_id": node_id})
        return row, self._tokens[node_id]
