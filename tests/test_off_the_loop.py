"""Files are read off the event loop. The log ingester: a read that blocks (a log on a
disk that hangs) stalls neither the agent's other work nor other tasks' logs (a real SQLite
file and real files; a FIFO without a writer stands for the hanging disk: opening it blocks
until a writer comes, a real file-system object rather than a mock). The node's figures
(/api/resources, the node's record in the cluster, the Nodes page) open no /proc or /sys file on
the loop, nor does the caller guard's peer lookup when it falls back to /proc/net/tcp."""

from __future__ import annotations

import asyncio
import errno
import os
import sys
import threading
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from cnetd.config import ResourcesSection, default_config
from cnetd.logs.ingester import LogIngester
from cnetd.metrics.resources import ResourceSampler
from cnetd.security.auth import Authenticator
from cnetd.security.callers import TaskCallerGuard, caller_guard_middleware
from cnetd.security.peer import PROC, PeerLookup
from cnetd.store import logs as lq
from cnetd.store.db import Database

SLOW = "5d0f1c1e-0000-4000-8000-000000000001"
FINE = "5d0f1c1e-0000-4000-8000-000000000002"
BLOCKED_FOR = 2.0


def open_a_writer_after(fifo: Path, delay: float) -> threading.Thread:
    """After delay, open the FIFO for writing once a reader waits on it, then close it:
    the blocked read then sees the end of the file."""
    def run() -> None:
        time.sleep(delay)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                return
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                time.sleep(0.01)

    thread = threading.Thread(target=run, name="fifo-writer")
    thread.start()
    return thread


async def longest_stall(seconds: float, tick: float = 0.01) -> float:
    """The longest time the loop took to come back to a 10 ms sleep, over seconds."""
    worst, end = 0.0, time.monotonic() + seconds
    while time.monotonic() < end:
        before = time.monotonic()
        await asyncio.sleep(tick)
        worst = max(worst, time.monotonic() - before - tick)
    return worst


async def test_a_log_read_that_blocks_stalls_neither_the_loop_nor_other_tasks(db: Database, tmp_path: Path) -> None:
    slow, fine = tmp_path / "slow.log", tmp_path / "fine.log"
    os.mkfifo(slow)
    fine.write_text("hello\n")
    ingester = LogIngester(db, poll_interval=0.05)
    await ingester.start()
    writer = open_a_writer_after(slow, BLOCKED_FOR)
    try:
        ingester.watch(SLOW, slow)
        ingester.watch(FINE, fine)
        assert await longest_stall(1.0) < 0.25
        assert await ingester.wait_for_lines(FINE, 0, 5)
        assert await db.read(lambda c: lq.after(c, FINE, 0)) == [(1, "hello")]
    finally:
        await asyncio.to_thread(writer.join)
        slow.unlink()
        slow.write_text("")  # a plain file again, for the last read at stop
        await ingester.stop()


_watching: set[int] = set()  # thread idents whose opens are recorded
_opened: list[str] = []


def _record_opens(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and threading.get_ident() in _watching:
        _opened.append(str(args[0]))


sys.addaudithook(_record_opens)  # audit hooks stay for the process: it records only while asked


async def test_the_node_figures_open_no_file_on_the_loop(tmp_path: Path) -> None:
    sampler = ResourceSampler(ResourcesSection(interval=3600), tmp_path)
    await sampler.start()
    try:
        _watching.add(threading.get_ident())
        try:
            totals, usage = sampler.totals(), sampler.usage()
        finally:
            _watching.discard(threading.get_ident())
        assert _opened == []
        assert totals["cpu"]["cores"] == os.cpu_count() and totals["memory"]["total"] > 0
        assert totals["disk"]["path"] == str(tmp_path) and usage["memory"]["total"] == totals["memory"]["total"]
    finally:
        await sampler.stop()


async def test_the_peer_lookups_proc_fallback_reads_no_file_on_the_loop(tmp_path: Path) -> None:
    """Where netlink sock_diag does not work, the guard reads /proc/net/tcp{,6} on a connection's
    first request: a table of every TCP socket on the host, read in a worker thread."""
    guard = TaskCallerGuard(default_config(tmp_path), lookup=PeerLookup(PROC), euid=0)
    assert guard.enabled
    app = web.Application(middlewares=[caller_guard_middleware(guard, Authenticator((), False))])

    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            _watching.add(threading.get_ident())
            try:
                async with session.get(f"http://127.0.0.1:{port}/") as resp:
                    status = resp.status
            finally:
                _watching.discard(threading.get_ident())
        assert status == 200  # found in /proc/net/tcp: our own connection, not a task's uid
        assert [path for path in _opened if path.startswith("/proc/net/tcp")] == []
    finally:
        _opened.clear()
        await runner.cleanup()
