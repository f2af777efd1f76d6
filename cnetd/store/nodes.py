"""Queries on the child nodes that report to this agent."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NodeRow:
    node_id: str
    url: str
    report: dict[str, Any]
    interval: float  # seconds between the child's heartbeats
    registered_at: str
    last_seen: str


def upsert_node(conn: sqlite3.Connection, row: NodeRow) -> NodeRow:
    """Insert or refresh a child; registered_at stays that of its first report."""
    conn.execute(
        "INSERT INTO nodes (node_id, url, report, interval, registered_at, last_seen) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (node_id) DO UPDATE SET url = excluded.url, report = excluded.report, "
        "interval = excluded.interval, last_seen = excluded.last_seen",
        (row.node_id, row.url, json.dumps(row.report), row.interval, row.registered_at, row.last_seen),
    )
    stored = get_node(conn, row.node_id)
    assert stored is not None
    return stored


def _from_row(row: sqlite3.Row) -> NodeRow:
    return NodeRow(
        node_id=row["node_id"], url=row["url"], report=json.loads(row["report"]), interval=row["interval"],
        registered_at=row["registered_at"], last_seen=row["last_seen"],
    )


def get_node(conn: sqlite3.Connection, node_id: str) -> NodeRow | None:
    row = conn.execute("SELECT * FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
    return _from_row(row) if row else None


def list_nodes(conn: sqlite3.Connection) -> list[NodeRow]:
    return [_from_row(r) for r in conn.execute("SELECT * FROM nodes ORDER BY node_id")]


def delete_node(conn: sqlite3.Connection, node_id: str) -> bool:
    return conn.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,)).rowcount > 0
