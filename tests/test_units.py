"""One unit convention for sizes: "MB" is 10^6 and "MiB" is 2^20 both where limits are
parsed and wherever sizes are shown (failure reasons, the UI, the agent's log), so a limit
reads back as it was written ("1GB" -> "1 GB", never "954 MB")."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest

from cnetd.config import ResourceLimits, parse_size
from cnetd.supervisor.base import ExitStatus
from cnetd.supervisor.disk import format_bytes
from cnetd.tasks.model import Status
from cnetd.tasks.outcome import failure_reason
from cnetd.ui import fmt
from cnetd.units import format_size
from tests.support.agent import AgentProcess
from tests.support.stored_tasks import make_task


@pytest.mark.parametrize(("written", "shown"), [
    ("1GB", "1 GB"), ("512MiB", "512 MiB"), ("512MB", "512 MB"), ("1.5GB", "1.5 GB"), ("1.5GiB", "1.5 GiB"),
    ("32MiB", "32 MiB"), ("512M", "512 MiB"), ("1G", "1 GiB"), ("1KiB", "1 KiB"), ("1kB", "1 kB"),
    ("2TB", "2 TB"), ("1.024GB", "1.024 GB"), ("100000000", "100 MB"), ("536870912", "512 MiB"), ("512", "512 B"),
])
def test_a_limit_reads_back_as_written(written: str, shown: str) -> None:
    size = parse_size(written, "limit")
    assert format_size(size) == shown
    assert format_bytes(size) == shown and fmt.size(size) == shown  # the supervisor's and the UI's
    assert parse_size(shown, "shown") == size  # and what is shown parses back to the same bytes


def test_a_measured_size_says_its_units_and_follows_the_limit_beside_it() -> None:
    assert format_size(1288490188) == "1.29 GB"  # 10^9-based, as its name says
    assert format_size(1288490188, like=parse_size("1GiB", "x")) == "1.20 GiB"
    assert format_size(1_000_400_000, like=parse_size("1GB", "x")) == "1.00 GB"
    assert format_size(999_700_000) == "999.7 MB" and format_size(999_970_000) == "999.97 MB"
    assert format_size(999_999_999) == "1.00 GB"  # not "1000 MB"
    assert format_size(0) == "0 B" and fmt.size(None) == "—"


def test_out_of_memory_reasons_name_the_limit_as_written(tmp_path: Path) -> None:
    task = make_task(tmp_path, Status.RUNNING)
    for written, shown in (("1GB", "1 GB"), ("512MiB", "512 MiB"), ("100000000", "100 MB")):
        limited = dataclasses.replace(task, resources=ResourceLimits(memory_limit=parse_size(written, "x")))
        assert failure_reason(ExitStatus(code=137, oom_killed=True), limited) == f"out of memory (limit {shown})"


@pytest.mark.parametrize(("limit", "pattern"), [
    ("1MB", r"disk limit exceeded \(wrote \d+(\.\d+)? MB, limit 1 MB\)"),
    ("1MiB", r"disk limit exceeded \(wrote \d+(\.\d+)? MiB, limit 1 MiB\)"),
])
def test_disk_limit_reason_from_a_real_agent(agent: AgentProcess, limit: str, pattern: str) -> None:
    code = "import sys, time; sys.stdout.write('x' * 3_000_000 + '\\n'); sys.stdout.flush(); time.sleep(60)"
    reply = agent.api.post("/api/tasks", {"name": "writer", "command": sys.executable, "args": ["-c", code],
                                          "resources": {"disk_limit": limit}})
    assert reply.status == 201, reply.text
    done = agent.wait_done(reply.body["id"], timeout=60)
    assert done["status"] == "failed" and re.fullmatch(pattern, done["reason"]), done["reason"]
