"""Per-task log bounds (logs.max_lines_per_task, logs.max_bytes_per_task): the ingester on
a real SQLite file and a real log file, and the real agent's API across the marker."""

from __future__ import annotations

import html
import json
import os
import re
import sqlite3
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from cnetd.config import LogsSection
from cnetd.logs.ingester import LogIngester
from cnetd.store import logs as lq
from cnetd.store.db import Database, migrations
from tests.support.agent import AgentProcess

PY = sys.executable
TASK = "0b8f6a9e-3d1c-4c55-9a59-2f1e6c1d7a10"


def append(path: Path, lines: list[str]) -> None:
    with open(path, "a") as f:
        f.write("".join(line + "\n" for line in lines))


async def ingest(db: Database, path: Path, limits: LogsSection) -> LogIngester:
    """Ingest the file up to its end, as the agent does once a task has ended."""
    ingester = LogIngester(db, limits=limits)
    ingester.watch(TASK, path)
    await ingester.drain(TASK)
    return ingester


async def stored(db: Database, task_id: str = TASK) -> list[tuple[int, str]]:
    return await db.read(lambda c: lq.after(c, task_id, 0, 1_000_000))


async def cursor(db: Database) -> tuple[int, int]:
    row = await db.read(lambda c: c.execute("SELECT dropped, stored_bytes FROM log_cursors WHERE task_id = ?",
                                              (TASK,)).fetchone())
    return int(row[0]), int(row[1])


async def test_past_max_lines_the_oldest_go_and_a_marker_stays(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "task.log"
    append(path, [f"line {i}" for i in range(1, 251)])
    await ingest(db, path, LogsSection(max_lines_per_task=100, max_bytes_per_task=None))

    rows = await stored(db)
    assert rows[0] == (150, "[cnet: 150 earlier lines dropped (logs.max_lines_per_task)]")
    assert rows[1:] == [(i, f"line {i}") for i in range(151, 251)]
    # ?lines=N reads the last N; asking for more than is kept brings the marker first.
    assert await db.read(lambda c: lq.tail(c, TASK, 3)) == [(248, "line 248"), (249, "line 249"), (250, "line 250")]
    assert (await db.read(lambda c: lq.tail(c, TASK, 1000)))[0][1].startswith("[cnet: 150 earlier lines dropped")
    # A follower that had read up to line 20 gets the marker, then what follows it.
    assert (await db.read(lambda c: lq.after(c, TASK, 20, 2))) == rows[:2]


async def test_repeated_trims_leave_one_marker_with_the_whole_count(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "task.log"
    limits = LogsSection(max_lines_per_task=100, max_bytes_per_task=None)
    for chunk in range(5):  # the agent restarted between chunks: the cursor is read back each time
        append(path, [f"line {chunk * 80 + i}" for i in range(1, 81)])
        await ingest(db, path, limits)

    rows = await stored(db)
    markers = [line for _, line in rows if line.startswith("[cnet:")]
    assert markers == ["[cnet: 300 earlier lines dropped (logs.max_lines_per_task)]"]
    assert [line for _, line in rows[1:]] == [f"line {i}" for i in range(301, 401)]
    dropped, size = await cursor(db)
    assert dropped == 300 and size == sum(len(line.encode()) for _, line in rows[1:])


async def test_past_max_bytes_the_oldest_go_and_the_marker_names_that_key(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "task.log"
    lines = [f"{i:03d} " + "é" * 48 for i in range(1, 201)]  # 100 bytes of UTF-8 each
    append(path, lines)
    await ingest(db, path, LogsSection(max_lines_per_task=None, max_bytes_per_task=2500))

    rows = await stored(db)
    assert rows[0] == (175, "[cnet: 175 earlier lines dropped (logs.max_bytes_per_task)]")
    assert [line for _, line in rows[1:]] == lines[175:]
    assert await cursor(db) == (175, 2500)


async def test_no_bounds_keep_everything(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "task.log"
    append(path, [f"line {i}" for i in range(1, 1001)])
    await ingest(db, path, LogsSection(max_lines_per_task=None, max_bytes_per_task=None))
    assert len(await stored(db)) == 1000


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


async def test_a_growing_file_gives_back_its_stored_head_and_keeps_its_offsets(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "task.log"
    line = "z" * 1023
    append(path, [line] * 6 * 1024)  # 6 MiB
    limits = LogsSection(max_lines_per_task=None, max_bytes_per_task=1 << 20)
    await ingest(db, path, limits)

    assert os.path.getsize(path) == 6 << 20  # the length (disk_limit's count) is what was written
    assert allocated(path) <= (1 << 20) + (64 << 10), allocated(path)
    with open(path, "rb") as f:
        assert f.read(4096) == bytes(4096)  # the freed head reads as zeros
    # Appends still land at the end and the stored offset still points at the next line.
    append(path, ["after the hole"])
    await ingest(db, path, limits)
    assert (await stored(db))[-1][1] == "after the hole"
    assert all(text in (line, "after the hole") for _, text in (await stored(db))[1:])


async def test_the_migration_fills_the_cursor_of_logs_trimmed_before_it(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "cnet.db", isolation_level=None)
    for version, _name, sql in migrations():
        if version < 6:
            conn.executescript(sql)
    # Trimmed the old way: lines 1..40 deleted, no marker.
    conn.executemany("INSERT INTO log_lines VALUES (?, ?, ?)", [(TASK, i, f"line {i}") for i in range(41, 51)])
    conn.execute("INSERT INTO log_cursors (task_id, offset, next_seq) VALUES (?, 400, 51)", (TASK,))
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    conn.executemany("INSERT INTO schema_migrations VALUES (?, ?)", [(v, n) for v, n, _ in migrations() if v < 6])
    conn.close()
    database = Database(tmp_path / "cnet.db")
    await database.open()
    try:
        dropped, size = await cursor(database)
        assert dropped == 40 and size == sum(len(f"line {i}") for i in range(41, 51))
        assert await database.read(lambda c: lq.dropped(c, TASK)) == (40, None)  # no marker to quote
    finally:
        await database.close()


# ---- the real agent ----------------------------------------------------------------


def test_the_api_reads_the_last_lines_and_follows_across_the_marker(
    agent_factory: Callable[..., AgentProcess],
) -> None:
    agent = agent_factory({"logs": {"max_lines_per_task": 100}}).start()
    created = agent.api.post("/api/tasks", {"name": "chatty", "command": PY,
                                            "args": ["-c", "for i in range(1000): print(i)"]})
    assert created.status == 201, created.text
    task_id = created.body["id"]
    assert agent.wait_done(task_id)["status"] == "completed"

    assert agent.api.get(f"/api/tasks/{task_id}/logs?lines=10").body == [str(i) for i in range(990, 1000)]
    everything = agent.api.get(f"/api/tasks/{task_id}/logs?lines=5000").body
    assert everything == ["[cnet: 900 earlier lines dropped (logs.max_lines_per_task)]",
                          *[str(i) for i in range(900, 1000)]]

    # A follower resuming from line 10 (its Last-Event-ID) is told what it missed.
    request = urllib.request.Request(f"{agent.url}/api/tasks/{task_id}/logs?follow=1&lines=5000",
                                     headers={"Last-Event-ID": "10"})
    with urllib.request.urlopen(request, timeout=30) as stream:
        events = stream.read().decode().split("\n\n")
    lines = [(e.split("\n")[0], json.loads(e.split("data: ", 1)[1])) for e in events if "event: line" in e]
    assert lines[0] == ("id: 900", "[cnet: 900 earlier lines dropped (logs.max_lines_per_task)]")
    assert [text for _, text in lines[1:]] == [str(i) for i in range(900, 1000)]
    assert "event: end" in events[-2]


def log_notes_and_first_line(html_text: str) -> tuple[list[str], str]:
    """The task page's notes above its log lines, and the first line it shows."""
    log = html_text.split('id="log"', 1)[1]
    notes = [html.unescape(note) for note in re.findall(r'<p class="log-note">(.*?)</p>', log, re.DOTALL)]
    first = html.unescape(re.search(r'<div class="ln" data-n="\d+">(.*?)</div>', log, re.DOTALL).group(1))  # type: ignore[union-attr]
    return notes, first


def test_the_task_page_says_what_retention_dropped_as_its_marker_does(
    agent_factory: Callable[..., AgentProcess],
) -> None:
    """The page shows the last 300 lines. Where retention dropped lines, it must not count them
    as lines "not shown" (which the raw log would show): the marker says how many are gone and
    by which key, and the note above the lines says only what is kept but not shown."""
    agent = agent_factory({"logs": {"max_lines_per_task": 400, "max_bytes_per_task": 100_000}}).start()
    tasks = {
        # ~1 KB lines: the byte bound keeps fewer than 300, so the page starts at the marker
        "wide": "for i in range(1000): print(str(i).rjust(1000, '.'))",
        # short lines: the line bound keeps 400, the page shows the last 300 of them
        "many": "for i in range(1000): print(i)",
    }
    ids = {}
    for name, code in tasks.items():
        created = agent.api.post("/api/tasks", {"name": name, "command": PY, "args": ["-c", code]})
        assert created.status == 201, created.text
        ids[name] = created.body["id"]
    for task_id in ids.values():
        assert agent.wait_done(task_id)["status"] == "completed"

    page = agent.api.get(f"/tasks/{ids['wide']}")
    assert page.status == 200
    notes, first = log_notes_and_first_line(page.text)
    marker = agent.api.get(f"/api/tasks/{ids['wide']}/logs?lines=5000").body[0]
    assert re.fullmatch(r"\[cnet: \d+ earlier lines dropped \(logs\.max_bytes_per_task\)\]", marker), marker
    assert first == marker  # every line kept is shown: the marker says the rest
    assert notes == []

    page = agent.api.get(f"/tasks/{ids['many']}")
    notes, first = log_notes_and_first_line(page.text)
    # seq 1..600 dropped (marker at 600), 601..1000 kept (the lines "600".."999"), 701..1000 shown
    assert first == "700"
    assert notes == [("100 earlier lines not shown; before them: "
                      "[cnet: 600 earlier lines dropped (logs.max_lines_per_task)]")]
    assert agent.api.get(f"/api/tasks/{ids['many']}/logs?lines=5000").body[0] == (
        "[cnet: 600 earlier lines dropped (logs.max_lines_per_task)]")
