"""Tails each running task's log file into SQLite, exactly once across agent crashes.

The lines of a chunk and the byte offset they end at are committed in one
transaction; after a crash the ingester resumes at the committed offset, so no line
is lost and none doubled. A trailing line without its newline waits for the rest
(or for the task's end). Overlong lines are cut, not fatal.

Bounds (config `logs`): past logs.max_lines_per_task or logs.max_bytes_per_task a task's
oldest stored lines are dropped in the same transaction, leaving a marker line; and the
log file's head that is stored and older than the newest max_bytes_per_task bytes has its
disk blocks freed (cnetd.logs.holes), so a chatty running task's file stops taking space.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from cnetd.background import cancel_and_wait, wait_event
from cnetd.config import LogsSection
from cnetd.logs.holes import punch_head
from cnetd.logs.output import RESULT_SCAN_BYTES
from cnetd.store import logs as log_queries
from cnetd.store.db import Database

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024
CHUNK_BYTES = 1024 * 1024
CUT_MARKER = " …[line cut at 64 KiB]"
PUNCH_STEP = 1024 * 1024  # blocks are freed in whole MiB, so not after every chunk
STOP_BUDGET = 5.0  # seconds stop() spends on the last lines of the files that grew

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
    punched: int = 0  # the file's blocks before this offset are freed
    can_punch: bool = True
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    grew_at: float = 0.0  # when it last grew (the ingester's clock)
    check_at: float = 0.0  # when to look at its size next
    size: int | None = None  # its size at the last look


class LogIngester:
    def __init__(
        self,
        db: Database,
        on_lines: LinesCallback | None = None,
        poll_interval: float = 0.2,
        limits: LogsSection | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._clock = clock  # paces the quiet files; a test moves it to make "quiet" a fact, not a wait
        self.on_lines = on_lines  # set once by the composition root (the task service reads progress)
        self._poll_interval = poll_interval
        self._limits = limits = limits or LogsSection()
        # The file keeps at least the part result_from_log scans for the task's result.
        self._keep_on_disk = max(limits.max_bytes_per_task or 0, RESULT_SCAN_BYTES)
        self._tails: dict[str, _Tail] = {}
        self._new_lines: dict[str, asyncio.Event] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="log-ingester")

    async def stop(self, budget: float = STOP_BUDGET) -> None:
        """Stop tailing after ingesting every complete line written so far, in the files
        that grew since their last look (their sizes in one hop to a worker thread), for at
        most `budget` seconds: the offsets are durable, so what is left then is ingested by
        the next start, neither lost nor doubled."""
        await cancel_and_wait(self._loop_task)
        started = time.monotonic()
        tails = list(self._tails.items())
        sizes = await asyncio.to_thread(_sizes, [tail.path for _, tail in tails]) if tails else []
        grown = [task_id for (task_id, tail), size in zip(tails, sizes, strict=True) if not tail.loaded or size != tail.size]
        for done, task_id in enumerate(grown):
            if time.monotonic() - started > budget:
                log.warning("stopped ingesting logs after %.0fs with %d of %d grown files left; "
                            "the next start takes their lines from the stored offsets", budget, len(grown) - done, len(grown))
                break
            try:
                await self._ingest(task_id, final=False)
            except Exception:
                log.exception("log ingestion failed", extra={"task_id": task_id})
        elapsed = time.monotonic() - started
        if elapsed > 1:
            log.info("ingested the last lines of %d grown log files (of %d) in %.1fs", len(grown), len(tails), elapsed)

    def watch(self, task_id: str, path: str | Path) -> None:
        self._tails.setdefault(task_id, _Tail(Path(path), grew_at=self._clock()))
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
        return await wait_event(event, timeout)

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
            now = self._clock()
            due = [(t, tail) for t, tail in self._tails.items() if tail.check_at <= now]
            sizes = await asyncio.to_thread(_sizes, [tail.path for _, tail in due]) if due else []
            for (task_id, tail), size in zip(due, sizes, strict=True):
                if self._tails.get(task_id) is not tail:
                    continue  # drained meanwhile
                if not tail.loaded or size != tail.size:
                    tail.size = size
                    try:
                        await self._ingest(task_id, final=False)
                    except Exception:
                        log.exception("log ingestion failed", extra={"task_id": task_id})
                    tail.grew_at = self._clock()
                quiet = self._clock() - tail.grew_at > QUIET_AFTER and task_id not in self._new_lines
                if quiet:  # on a shared beat, so that the quiet files make one batch per QUIET_POLL
                    beat = max(QUIET_POLL, self._poll_interval)
                    tail.check_at = (now // beat + 1) * beat
                else:
                    tail.check_at = now + self._poll_interval
            await wait_event(self._wake, self._poll_interval)

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
                # A chunk is up to 1 MiB from a file on disk: read and split off the loop.
                lines, consumed, skipping, at_end = await asyncio.to_thread(
                    _read_lines, tail.path, tail.offset, final, tail.skipping
                )
                if consumed == 0:
                    return
                first_seq, end_offset = tail.next_seq, tail.offset + consumed
                await self._db.write(partial(self._commit, task_id=task_id, first_seq=first_seq, lines=lines, offset=end_offset))
                tail.offset, tail.next_seq, tail.skipping = end_offset, first_seq + len(lines), skipping
                await self._free_stored_head(task_id, tail)
                if lines:
                    self._notify(task_id)
                    if self.on_lines is not None:
                        await self.on_lines(task_id, lines)
                if at_end:
                    return

    def _commit(self, conn: sqlite3.Connection, task_id: str, first_seq: int, lines: list[str], offset: int) -> None:
        stored = log_queries.append_lines(conn, task_id, first_seq, lines, offset)
        max_lines, max_bytes = self._limits.max_lines_per_task, self._limits.max_bytes_per_task
        if (max_lines is not None and stored.lines > max_lines) or (
            max_bytes is not None and stored.stored_bytes > max_bytes
        ):
            log_queries.trim(conn, task_id, stored, max_lines, max_bytes)

    async def _free_stored_head(self, task_id: str, tail: _Tail) -> None:
        """Free the blocks of the file's head: stored in SQLite (below the committed
        offset) and older than the newest bytes the file keeps."""
        if self._limits.max_bytes_per_task is None or not tail.can_punch:
            return
        end = (tail.offset - self._keep_on_disk) // PUNCH_STEP * PUNCH_STEP
        if end <= tail.punched:
            return
        problem = await asyncio.to_thread(punch_head, tail.path, tail.punched, end)
        if problem is not None:
            tail.can_punch = False
            log.warning(
                "cannot free the stored head of %s (%s): it keeps growing while the task runs "
                "(the task's disk_limit still bounds it)", tail.path, problem, extra={"task_id": task_id},
            )
            return
        tail.punched = end


def _sizes(paths: list[Path]) -> list[int | None]:
    sizes: list[int | None] = []
    for path in paths:
        try:
            sizes.append(os.stat(path).st_size)
        except OSError:
            sizes.append(None)
    return sizes


def _read_lines(path: Path, offset: int, final: bool, skipping: bool) -> tuple[list[str], int, bool, bool]:
    """The complete lines of the next chunk from offset: (lines, bytes consumed, still
    skipping an overlong line, the chunk reached the end of the file)."""
    data = _read_from(path, offset, CHUNK_BYTES)
    at_end = len(data) < CHUNK_BYTES
    lines, consumed, skipping = split_chunk(data, final and at_end, skipping)
    return lines, consumed, skipping, at_end


def _read_from(path: Path, offset: int, size: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)
