"""What the log ingester costs while many tasks run and print nothing, against the way
main ingested before this change, measured in the same run.

    .venv/bin/python bench/ingest_idle.py [--tails 100,1000] [--seconds 5]

Each variant watches N real, idle log files (a real SQLite store underneath) with the
agent's poll interval (0.2 s) and is measured for --seconds: CPU time of the whole process
(the event loop and its threads) per second of wall time, and the longest the event loop
took to come back to a 10 ms sleep.
  - baseline: every tail's file opened and read on the event loop on every pass (main);
  - now:      one stat per file, all in one thread hop per pass; reads (up to 1 MiB) only
              for files that grew, in a thread.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cnetd.logs.ingester import CHUNK_BYTES, LogIngester, _read_from  # noqa: E402
from cnetd.store.db import Database  # noqa: E402


class OnTheLoop(LogIngester):
    """main's pass, for idle files: every tail read on the event loop."""

    async def _tails_with_news(self) -> list[str]:
        return list(self._tails)

    async def _ingest(self, task_id: str, final: bool) -> None:
        tail = self._tails[task_id]
        if not tail.loaded:
            tail.loaded = True
        _read_from(tail.path, tail.offset, CHUNK_BYTES)  # nothing new: nothing to commit


async def measure(cls: type[LogIngester], tails: int, seconds: float, workdir: Path) -> tuple[float, float]:
    db = Database(workdir / f"{cls.__name__}-{tails}.db")
    await db.open()
    ingester = cls(db)
    logs = workdir / f"logs-{cls.__name__}-{tails}"
    logs.mkdir()
    for _ in range(tails):
        path = logs / f"{uuid.uuid4()}.log"
        path.touch()
        ingester.watch(path.stem, path)
    await ingester.start()
    await asyncio.sleep(1.0)  # past the first pass, which loads every cursor
    cpu, wall, worst = time.process_time(), time.monotonic(), 0.0
    end = wall + seconds
    while time.monotonic() < end:
        before = time.monotonic()
        await asyncio.sleep(0.01)
        worst = max(worst, time.monotonic() - before - 0.01)
    used = (time.process_time() - cpu) / (time.monotonic() - wall)
    await ingester.stop()
    await db.close()
    return used, worst


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tails", default="100,1000")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(f"{'idle tails':>10} | {'variant':<8} | {'CPU (% of a core)':>17} | {'longest loop stall':>18} | CPU ratio")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(t) for t in args.tails.split(",")):
            base_cpu, base_stall = await measure(OnTheLoop, n, args.seconds, Path(tmp))
            now_cpu, now_stall = await measure(LogIngester, n, args.seconds, Path(tmp))
            print(f"{n:>10} | {'baseline':<8} | {base_cpu * 100:>16.1f}% | {base_stall * 1000:>15.1f} ms | 1.00")
            print(f"{n:>10} | {'now':<8} | {now_cpu * 100:>16.1f}% | {now_stall * 1000:>15.1f} ms | {now_cpu / base_cpu:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
