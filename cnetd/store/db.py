"""The SQLite file: one writer thread, one reader thread, forward-only migrations.

A write is a function run on the writer thread inside BEGIN IMMEDIATE, so a change of
several statements is atomic and costs one hop between threads (Datasette's pattern).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class StoreError(Exception):
    """The database cannot be used; the message says why and what to do."""


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # Before anything is written: a new file then returns freed pages to the disk on
        # PRAGMA incremental_vacuum (an older file is switched once by a VACUUM: see
        # store.retention.switch_to_incremental_vacuum).
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.row_factory = sqlite3.Row
    return conn


def migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files("cnetd.store.migrations").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


def apply_migrations(conn: sqlite3.Connection) -> list[str]:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    applied = []
    for version, name, sql in migrations():
        if version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (version, name))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._reader_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-reader")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer_pool, self._open_writer)
        self._reader = await loop.run_in_executor(self._reader_pool, _connect, self.path, True)

    def _open_writer(self) -> None:
        try:
            conn = _connect(self.path, readonly=False)
            self._make_private()
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(self._corrupt_message(str(exc))) from exc
        if check != "ok":
            conn.close()
            raise StoreError(self._corrupt_message(check))
        applied = apply_migrations(conn)
        if applied:
            log.info("applied migrations %s to %s", ", ".join(applied), self.path)
        self._writer = conn

    def _make_private(self) -> None:
        """The store holds every task's environment: only the agent's user may read it.
        SQLite gives the -wal and -shm files the main file's mode when it creates them."""
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError, PermissionError):
                os.chmod(f"{self.path}{suffix}", 0o600)

    def _corrupt_message(self, problem: str) -> str:
        return (
            f"{self.path}: the database is damaged ({problem}). It was left untouched. "
            f"To salvage it: sqlite3 {self.path} '.recover' | sqlite3 {self.path}.recovered "
            f"then move {self.path}.recovered to {self.path}."
        )

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer_pool, self._in_transaction, fn)

    def _in_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._writer
        assert conn is not None, "database is not open"
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def maintain(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn on the writer outside any transaction, for what cannot run inside one
        (VACUUM, wal_checkpoint). Other writes wait until it returns."""
        conn = self._writer
        assert conn is not None, "database is not open"
        return await asyncio.get_running_loop().run_in_executor(self._writer_pool, fn, conn)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader
        assert conn is not None, "database is not open"
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, fn, conn)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._reader is not None:
            await loop.run_in_executor(self._reader_pool, self._reader.close)
        if self._writer is not None:
            await loop.run_in_executor(self._writer_pool, self._writer.close)
        self._reader = self._writer = None
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)
