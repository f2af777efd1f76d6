"""Queries on task identities: which uid each model or process task runs as."""

from __future__ import annotations

import pwd
import sqlite3

from cnetd.store.tasks import get_meta, set_meta

CURSOR_KEY = "uid_cursor"


class NoFreeUid(Exception):
    """Every uid of the range is handed out."""


def uid_of(conn: sqlite3.Connection, owner: str) -> int | None:
    row = conn.execute("SELECT uid FROM identities WHERE owner = ?", (owner,)).fetchone()
    return None if row is None else int(row[0])


def owner_of(conn: sqlite3.Connection, uid: int) -> str | None:
    row = conn.execute("SELECT owner FROM identities WHERE uid = ?", (uid,)).fetchone()
    return None if row is None else str(row[0])


def _taken(conn: sqlite3.Connection, uid: int) -> bool:
    if conn.execute("SELECT 1 FROM identities WHERE uid = ?", (uid,)).fetchone() is not None:
        return True
    try:  # a real account in the range (an operator's choice) is never handed to a task
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def allocate(conn: sqlite3.Connection, owner: str, start: int, end: int, now: str) -> int:
    """owner's uid: the one it has, else the next free one after the last handed out
    (round the range), so a released uid is reused as late as possible."""
    existing = uid_of(conn, owner)
    if existing is not None:
        return existing
    size = end - start + 1
    cursor = get_meta(conn, CURSOR_KEY)
    last = int(cursor) if cursor is not None and start <= int(cursor) <= end else end
    for step in range(1, size + 1):
        candidate = start + (last - start + step) % size
        if not _taken(conn, candidate):
            conn.execute("INSERT INTO identities (owner, uid, created_at) VALUES (?, ?, ?)", (owner, candidate, now))
            set_meta(conn, CURSOR_KEY, str(candidate))
            return candidate
    raise NoFreeUid(f"all {size} uids of tasks.uid_range ({start}-{end}) are in use")


def release(conn: sqlite3.Connection, owner: str) -> int | None:
    """Give owner's uid back; returns it (None when owner had none)."""
    uid = uid_of(conn, owner)
    if uid is not None:
        conn.execute("DELETE FROM identities WHERE owner = ?", (owner,))
    return uid
