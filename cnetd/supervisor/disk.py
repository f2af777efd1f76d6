"""Bytes a task has written, for disk_limit: its log file plus the files it created or
modified under its output directories (working dir, model dir) since it started.

The supervisor measures every task with a disk_limit about once a second and fails it with
`disk limit exceeded (wrote 1.29 GB, limit 1 GB)` when it is passed. Each directory is
scanned once per round however many tasks share it (the tasks of one model share their
working dir): `measure(scans)` takes a dict that the round's meters fill and reuse. A scan
does bounded work: at most max_entries directory entries are looked at, symlinks are never
followed, and a file reached twice (overlapping dirs, hard links) counts once.
"""

from __future__ import annotations

import logging
import os
import time
from bisect import bisect_left
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cnetd.units import format_size

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
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
            since = since.replace(tzinfo=UTC)
        return (since - EPOCH) // timedelta(microseconds=1) * 1000
    return round(since * 1e9)


@dataclass(frozen=True)
class Scan:
    """The regular files under one directory, oldest modification first."""

    mtimes: list[int]  # st_mtime_ns, ascending
    files: list[tuple[int, int, int]]  # (st_dev, st_ino, st_size), in the same order
    truncated: bool  # stopped at max_entries: a lower bound


EMPTY = Scan([], [], False)
# A directory found empty is not read again while its mtime stays the same (adding or removing
# an entry changes it). Only an mtime this old is trusted: the clock that stamps it is coarse,
# and an entry made within the same tick as the change we saw would leave it as it was.
SETTLED_NS = 1_000_000_000

EmptyDirs = MutableMapping[str, int]  # directory -> its mtime when it was found empty


def scan_dir(top: str, max_entries: int, empty: EmptyDirs | None = None) -> Scan:
    """Every regular file under top. empty: directories known to be empty, kept from one
    round to the next (most tasks never write to their TMPDIR)."""
    settled: int | None = None
    if empty is not None:
        try:
            mtime = os.stat(top).st_mtime_ns
        except OSError:
            mtime = None
        if mtime is not None and empty.get(top) == mtime:
            return EMPTY
        empty.pop(top, None)
        if mtime is not None and time.time_ns() - mtime > SETTLED_NS:
            settled = mtime
    found: list[tuple[int, int, int, int]] = []
    seen: set[tuple[int, int]] = set()
    budget = max_entries
    stack: list[str] = [top]
    while stack and budget > 0:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    budget -= 1
                    if budget < 0:
                        break
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                            continue
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # vanished while we looked
                    key = (st.st_dev, st.st_ino)
                    if key not in seen:
                        seen.add(key)
                        found.append((st.st_mtime_ns, st.st_dev, st.st_ino, st.st_size))
        except OSError:
            continue  # a directory that vanished or cannot be read
    if empty is not None and settled is not None and budget == max_entries:
        empty[top] = settled  # not a single entry: empty until its mtime moves
    found.sort()
    truncated = budget < 0 or (bool(stack) and budget == 0)
    return Scan([f[0] for f in found], [(f[1], f[2], f[3]) for f in found], truncated)


Scans = MutableMapping[str, Scan]  # directory -> its scan this round


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
        since then do not count. None means now. max_entries bounds each directory's scan."""
        self.log_path = Path(log_path)
        self.dirs = _distinct_dirs(dirs)
        self._log = str(self.log_path)  # str, not Path: measured for every task every second
        self._dir_keys = [str(d) for d in self.dirs]
        self.since_ns = since_ns(since) - SLACK_NS
        self.max_entries = max_entries
        self.task_id = task_id
        self.truncated = False  # the last measure() stopped at max_entries (a lower bound)
        self._warned = False

    def measure(self, scans: Scans | None = None, empty: EmptyDirs | None = None) -> int:
        """Bytes written since `since`. scans: directory scans of this round, shared by the
        meters measured together (filled here with the ones not scanned yet); empty: see
        scan_dir."""
        scans = {} if scans is None else scans
        total = 0
        seen: set[tuple[int, int]] = set()
        try:
            st = os.stat(self._log)
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
        except OSError:
            pass
        truncated = False
        for d in self._dir_keys:
            scan = scans.get(d)
            if scan is None:
                scan = scans[d] = scan_dir(d, self.max_entries, empty)
            truncated = truncated or scan.truncated
            for dev, ino, size in scan.files[bisect_left(scan.mtimes, self.since_ns):]:
                if (dev, ino) not in seen:
                    seen.add((dev, ino))
                    total += size
        self.truncated = truncated
        if truncated and not self._warned:
            self._warned = True
            log.warning("task %s: disk meter stopped after %d entries; the count is a lower bound",
                        self.task_id, self.max_entries)
        return total


def measure_all(meters: Iterable[DiskMeter], empty: EmptyDirs | None = None) -> list[int]:
    """Each meter's bytes, scanning each directory once for all of them. empty: kept by
    the caller from one round to the next (see scan_dir); pruned here to these meters' dirs."""
    meters = list(meters)
    scans: dict[str, Scan] = {}
    used = [meter.measure(scans, empty) for meter in meters]
    if empty is not None:
        for gone in set(empty) - set(scans):
            empty.pop(gone, None)
    return used


def _distinct_dirs(dirs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Real paths, with any dir inside another one dropped (it is scanned through its parent)."""
    real = sorted({Path(os.path.realpath(d)) for d in dirs})
    out: list[Path] = []
    for d in real:
        if not any(parent in d.parents for parent in out):
            out.append(d)
    return out
