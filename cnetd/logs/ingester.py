"""Tails each running task's log file into SQLite, exactly once across agent crashes.

The lines of a chunk and the byte offset they end at are committed in one
transaction; after a crash the ingester resumes at the committed offset, so no line
is lost and none doubled. A trailing line without its newline waits for the rest
(or for the task's end). Overlong lines are cut, not fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from cnetd.background import cancel_and_wait
from cnetd.store import logs as log_queries
from cnetd.store.db import Database

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024
CHUNK_BYTES = 1024 * 1024
CUT_MARKER = " …[line cut at 64 KiB]"

LinesCallback = Callable[[str, list[str]], Awaitable[None]]


def split_chunk(data: bytes, final: bool, skipping: bool) -> tuple[list[str], int, bool]:
    """Split data into complete lines. Returns (lines, bytes consumed, still skipping
    the rest of an overlong line)."""
    lines: list[str] = []
    pos = 0
    while pos < len(data):
        newline = data.find(b"\n", pos)
        if newline < 0:
            rest = data[pos:]
            if skipping:
                pos = len(data)
            elif len(rest) >= MAX_LINE_BYTES:
                lines.append(_decode(rest[:MAX_LINE_BYTES]) + CUT_MARKER)
                pos += MAX_LINE_BYTES
                skipping = True
                continue
            elif final:
                lines.append(_decode(rest))
                pos = len(data)
            break
        raw = data[pos:newline]
        if skipping:
            skipping = False
        elif len(raw) > MAX_LINE_BYTES:
            lines.append(_decode(raw[:MAX_LINE_BYTES]) + CUT_MARKER)
        else:
            lines.append(_decode(raw))
        pos = newline + 1
    return lines, pos, skipping


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").removesuffix("\r")


QUIET_AFTER = 5.0  # seconds without growth after which a log file is checked less often
QUIET_POLL = 1.0  # seconds between two checks of a quiet file nobody follows


@dataclass
class _Tail:
    path: Path
    offset: int = 0
    next_seq: int = 1
    loaded: bool = False
    skipping: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    grew_at: float = field(default_factory=time.monotonic)  # when it last grew
    check_at: float = 0.0  # when to look at its size next
    size: int | None = None  # its size at the last look


class LogIngester:
    def __init__(
        self,
        db: Database,
        on_lines: LinesCallback | None = None,
        poll_interval: float = 0.2,
        max_lines_per_task: int = 200_000,
    ) -> None:
        self._db = db
        self.on_lines = on_lines  # set once by the composition root (the task service reads progress)
        self._poll_interval = poll_interval
        self._max_lines = max_lines_per_task
        self._tails: dict[str, _Tail] = {}
        self._new_lines: dict[str, asyncio.Event] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="log-ingester")

    async def stop(self) -> None:
        """Stop tailing after ingesting every complete line written so far."""
        await cancel_and_wait(self._loop_task)
        for task_id in list(self._tails):
            await self._ingest(task_id, final=False)

    def watch(self, task_id: str, path: str | Path) -> None:
        self._tails.setdefault(task_id, _Tail(Path(path)))
        self._wake.set()

    async def drain(self, task_id: str) -> None:
        """Ingest everything up to the end of the file, the last partial line too,
        and stop tailing: call once the task's processes are gone."""
        if task_id in self._tails:
            await self._ingest(task_id, final=True)
            self._tails.pop(task_id, None)

    async def wait_for_lines(self, task_id: str, after_seq: int, timeout: float) -> bool:
        """Wait until a line past after_seq is stored, or timeout; False on timeout."""
        tail = self._tails.get(task_id)
        if tail is not None and tail.loaded and tail.next_seq - 1 > after_seq:
            return True
        event = self._new_lines.setdefault(task_id, asyncio.Event())
        if tail is not None:
            tail.check_at = 0.0  # a follower: look at once, however quiet the file was
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _notify(self, task_id: str) -> None:
        event = self._new_lines.pop(task_id, None)
        if event is not None:
            event.set()

    async def _run(self) -> None:
        """Every poll_interval, the sizes of the files due for a look, in one hop to a worker
        thread; only files that grew are read. A file quiet for QUIET_AFTER is looked at every
        QUIET_POLL instead, unless someone follows it (its lines then wait at most one
        poll_interval); a task's last lines are taken by drain() when it ends, whatever this
        loop has seen."""
        while True:
            self._wake.clear()
            now = time.monotonic()
            due = [(t, tail) for t, tail in self._tails.items() if tail.check_at <= now]
            sizes = await asyncio.to_thread(_sizes, [tail.path for _, tail in due]) if due else []
            for (task_id, tail), size in zip(due, sizes):
                if self._tails.get(task_id) is not tail:
                    continue  # drained meanwhile
                if not tail.loaded or size != tail.size:
                    tail.size = size
                    try:
                        await self._ingest(task_id, final=False)
                    except Exception:
                        log.exception("log ingestion failed", extra={"task_id": task_id})
                    tail.grew_at = time.monotonic()
                quiet = time.monotonic() - tail.grew_at > QUIET_AFTER and task_id not in self._new_lines
                if quiet:  # on a shared beat, so that the quiet files make one batch per QUIET_POLL
                    beat = max(QUIET_POLL, self._poll_interval)
                    tail.check_at = (now // beat + 1) * beat
                else:
                    tail.check_at = now + self._poll_interval
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)

    async def _ingest(self, task_id: str, final: bool) -> None:
        tail = self._tails.get(task_id)
        if tail is None:
            return
        async with tail.lock:
            if not tail.loaded:
                tail.offset, tail.next_seq = await self._db.read(
                    lambda c: log_queries.get_cursor(c, task_id)
                )
                tail.loaded = True
            while True:
                data = _read_from(tail.path, tail.offset, CHUNK_BYTES)
                at_end = len(data) < CHUNK_BYTES
                lines, consumed, skipping = split_chunk(data, final and at_end, tail.skipping)
                if consumed == 0:
                    return
                first_seq, end_offset = tail.next_seq, tail.offset + consumed
                trim = self._max_lines and (first_seq + len(lines) - 1) % 1000 < len(lines)
                await self._db.write(lambda c: self._commit(c, task_id, first_seq, lines, end_offset, bool(trim)))
                tail.offset, tail.next_seq, tail.skipping = end_offset, first_seq + len(lines), skipping
                if lines:
                    self._notify(task_id)
                    if self.on_lines is not None:
                        await self.on_lines(task_id, lines)
                if at_end:
                    return

    def _commit(self, conn, task_id: str, first_seq: int, lines: list[str], offset: int, trim: bool) -> None:  # type: ignore[no-untyped-def]
        log_queries.append_lines(conn, task_id, first_seq, lines, offset)
        if trim:
            log_queries.trim(conn, task_id, self._max_lines)


def _sizes(paths: list[Path]) -> list[int | None]:
    out: list[int | None] = []
    for path in paths:
        try:
            out.append(os.stat(path).st_size)
        except OSError:
            out.append(None)
    return out


def _read_from(path: Path, offset: int, size: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)
