"""Queries on model_rollups: the per-version roll-ups of served models (cnetd/ml/monitor)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class Rollup:
    model_id: str
    name: str
    version: str
    at: str  # when the interval ended (UTC ISO 8601)
    seconds: float
    count: int
    errors: int
    p50: float | None
    p95: float | None
    p99: float | None


def insert_rollups(conn: sqlite3.Connection, rows: list[Rollup]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO model_rollups (model_id, name, version, at, seconds, count, errors, p50, p95, p99) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(r.model_id, r.name, r.version, r.at, r.seconds, r.count, r.errors, r.p50, r.p95, r.p99) for r in rows],
    )


def rollups_since(conn: sqlite3.Connection, names: list[str], since: str, limit: int) -> list[Rollup]:
    """The roll-ups of models with these names that ended after `since`, oldest first (at
    most `limit`: the newest ones)."""
    if not names:
        return []
    marks = ", ".join("?" for _ in names)
    rows = conn.execute(
        f"SELECT * FROM (SELECT model_id, name, version, at, seconds, count, errors, p50, p95, p99 FROM model_rollups "
        f"WHERE name IN ({marks}) AND at > ? ORDER BY at DESC LIMIT ?) ORDER BY at",
        (*names, since, limit),
    )
    return [Rollup(*row) for row in rows]


def rollup_buckets(conn: sqlite3.Connection, names: list[str], since: str, step: float) -> list[Rollup]:
    """The roll-ups of models with these names after `since`, merged per model into buckets
    of `step` seconds counted from `since`, oldest first: counts and errors summed, p50 the
    count-weighted mean, p95 and p99 the worst (a bound, not a percentile of the bucket);
    `at` the bucket's last, `seconds` the sum."""
    if not names:
        return []
    marks = ", ".join("?" for _ in names)
    rows = conn.execute(
        "SELECT model_id, MAX(name), MAX(version), MAX(at), SUM(seconds), SUM(count), SUM(errors), "
        "SUM(p50 * count) / NULLIF(SUM(CASE WHEN p50 IS NOT NULL THEN count END), 0), MAX(p95), MAX(p99) "
        f"FROM model_rollups WHERE name IN ({marks}) AND at > ? "
        "GROUP BY model_id, CAST((julianday(at) - julianday(?)) * 86400.0 / ? AS INTEGER) ORDER BY MAX(at)",
        (*names, since, since, step),
    )
    return [Rollup(*row) for row in rows]


def delete_rollups_before(conn: sqlite3.Connection, before: str, limit: int) -> int:
    """Delete up to `limit` roll-ups that ended before `before`; how many were deleted."""
    return conn.execute(
        "DELETE FROM model_rollups WHERE rowid IN (SELECT rowid FROM model_rollups WHERE at < ? ORDER BY at LIMIT ?)",
        (before, limit),
    ).rowcount


def model_names(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """(id, name, created_at) of every model."""
    return [(r[0], r[1], r[2]) for r in conn.execute("SELECT id, name, created_at FROM models")]


def training_result(conn: sqlite3.Connection, model_id: str) -> str | None:
    """The stored result (JSON text) of a model's deploy task."""
    row = conn.execute("SELECT result FROM tasks WHERE id = ?", (model_id,)).fetchone()
    return None if row is None else row[0]
