"""Bytes a task has written, for disk_limit: its log file plus the files it created or
modified under its output directories (working dir, model dir) since it started.

The supervisor calls measure() about once a second for tasks with a disk_limit and fails
the task with `disk limit exceeded (wrote 1.29 GB, limit 1 GB)` when it is passed. Each
call does bounded work: at most max_entries directory entries are looked at, symlinks are
never followed, and a file reached twice (overlapping dirs, hard links) counts once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cnetd.units import format_size

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# File times come from a coarse clock (a few ms behind time.time()), and started_at is
# usually taken just after the spawn: files modified this long before `since` count too.
SLACK_NS = 100_000_000


def format_bytes(n: int | float, like: int | float | None = None) -> str:
    """10**9 -> '1 GB', 2**29 -> '512 MiB' (the units limits are written in; see cnetd.units)."""
    return format_size(n, like)


Since = float | str | datetime | None


def since_ns(since: Since) -> int:
    """A Unix time, an aware datetime or an RFC 3339 text (the task's started_at) -> ns."""
    if since is None:
        return time.time_ns()
    if isinstance(since, str):
        since = datetime.fromisoformat(since.replace("Z", "+00:00"))
    if isinstance(since, datetime):
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
        return (since - EPOCH) // timedelta(microseconds=1) * 1000
    return round(since * 1e9)


class DiskMeter:
    def __init__(
        self,
        log_path: str | os.PathLike[str],
        dirs: Iterable[str | os.PathLike[str]],
        since: Since,
        max_entries: int = 20_000,
        task_id: str = "",
    ) -> None:
        """since: when the task started (take it before the start); files not modified
        since then do not count. None means now."""
        self.log_path = Path(log_path)
        self.dirs = _distinct_dirs(dirs)
        self.since_ns = since_ns(since) - SLACK_NS
        self.max_entries = max_entries
        self.task_id = task_id
        self.truncated = False  # the last measure() stopped at max_entries (a lower bound)
        self._warned = False

    def measure(self) -> int:
        total = 0
        seen: set[tuple[int, int]] = set()
        try:
            st = os.stat(self.log_path)
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
        except OSError:
            pass
        budget = self.max_entries
        stack = list(self.dirs)
        while stack and budget > 0:
            try:
                with os.scandir(stack.pop()) as entries:
                    for entry in entries:
                        budget -= 1
                        if budget < 0:
                            break
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                stack.append(Path(entry.path))
                                continue
                            if not entry.is_file(follow_symlinks=False):
                                continue
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue  # vanished while we looked
                        key = (st.st_dev, st.st_ino)
                        if key in seen or st.st_mtime_ns < self.since_ns:
                            continue
                        seen.add(key)
                        total += st.st_size
            except OSError:
                continue  # a directory that vanished or cannot be read
        self.truncated = budget < 0 or (bool(stack) and budget == 0)
        if self.truncated and not self._warned:
            self._warned = True
            log.warning("task %s: disk meter stopped after %d entries; the count is a lower bound",
                        self.task_id, self.max_entries)
        return total


def _distinct_dirs(dirs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Real paths, with any dir inside another one dropped (it is scanned through its parent)."""
    real = sorted({Path(os.path.realpath(d)) for d in dirs})
    out: list[Path] = []
    for d in real:
        if not any(parent in d.parents for parent in out):
            out.append(d)
    return out
