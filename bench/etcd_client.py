"""What cnetd.cluster.etcd costs on top of the bare HTTP calls it makes, measured in the same run
against one local etcd member (started here, as the tests start theirs).

    .venv/bin/python bench/etcd_client.py [--seconds 2] [--in-flight 1,16] [--keepalives 500]

Rows, each for 1 and for 16 requests in flight:
  - put of a 100-byte value, a one-key range, a txn (compare the value, put it again);
  - floor: the same request body, built once, POSTed with a plain aiohttp session and the
    answer parsed with json.loads: what any gateway client must pay;
  - client: the same call through EtcdClient (request dataclasses, base64, endpoint
    rotation and deadline, typed results).
Then the keepalive round trip, one at a time: p50 and p99 in ms, floor and client.
Writes are fsynced by etcd, so on a slow disk both columns are the disk's rate; the
ratio is what this measures. Both columns alternate (floor, client, floor, client) and
each keeps its best round, so that drift on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cnetd.cluster.etcd import Compare, EtcdClient, EtcdOptions, Put  # noqa: E402
from cnetd.cluster.etcd_wire import Op, encode, txn_request  # noqa: E402
from tests.support.etcd import EtcdCluster  # noqa: E402

KEY = b"/bench/key"
VALUE = b"v" * 100


async def rate(call: Callable[[], Awaitable[Any]], in_flight: int, seconds: float) -> float:
    """Requests per second with in_flight workers calling back to back for `seconds`."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return done / (time.perf_counter() - started)


async def latencies(call: Callable[[], Awaitable[Any]], count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def run(endpoint: str, seconds: float, in_flights: list[int], keepalives: int) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    client = EtcdClient(EtcdOptions(endpoints=(endpoint,)))

    def floor(path: str, body: dict[str, Any]) -> Callable[[], Awaitable[Any]]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}

        async def call() -> Any:
            async with session.post(endpoint + path, data=data, headers=headers) as response:
                return json.loads(await response.read())
        return call

    put_body = {"key": encode(KEY), "value": encode(VALUE)}
    txn_ops: tuple[list[Compare], list[Op], list[Op]] = ([Compare.value(KEY, "==", VALUE)], [Put(KEY, VALUE)], [])
    await client.put(KEY, VALUE)
    lease = await client.grant(60)

    rows: list[tuple[str, Callable[[], Awaitable[Any]], Callable[[], Awaitable[Any]]]] = [
        ("put", floor("/v3/kv/put", put_body), lambda: client.put(KEY, VALUE)),
        ("range (one key)", floor("/v3/kv/range", {"key": encode(KEY)}), lambda: client.get(KEY)),
        ("txn (compare value, put)", floor("/v3/kv/txn", txn_request(*txn_ops)), lambda: client.txn(*txn_ops)),
    ]
    print(f"etcd {endpoint}, {seconds:g} s per round, best of 2 rounds each\n")
    print(f"{'request':26} {'in flight':>9} {'floor req/s':>12} {'client req/s':>13} {'client/floor':>13}")
    for name, bare, ours in rows:
        for in_flight in in_flights:
            floor_best = client_best = 0.0
            for _ in range(2):
                floor_best = max(floor_best, await rate(bare, in_flight, seconds))
                client_best = max(client_best, await rate(ours, in_flight, seconds))
            print(f"{name:26} {in_flight:9d} {floor_best:12.0f} {client_best:13.0f} {client_best / floor_best:12.2f}x")

    bare_keepalive = floor("/v3/lease/keepalive", {"ID": str(lease.id)})
    floor_ms: list[float] = []
    client_ms: list[float] = []
    for _ in range(2):
        floor_ms += await latencies(bare_keepalive, keepalives // 2)
        client_ms += await latencies(lambda: client.keepalive(lease.id), keepalives // 2)
    print(f"\nkeepalive round trip, one at a time, {len(client_ms)} each")
    print(f"{'':26} {'p50 ms':>9} {'p99 ms':>12}")
    print(f"{'floor':26} {percentile(floor_ms, 50):9.3f} {percentile(floor_ms, 99):12.3f}")
    print(f"{'client':26} {percentile(client_ms, 50):9.3f} {percentile(client_ms, 99):12.3f}")
    print(f"{'client/floor':26} {percentile(client_ms, 50) / percentile(floor_ms, 50):8.2f}x "
          f"{percentile(client_ms, 99) / percentile(floor_ms, 99):11.2f}x")
    print(f"(mean client {statistics.fmean(client_ms):.3f} ms)")

    await client.revoke(lease.id)
    await client.close()
    await session.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one round")
    parser.add_argument("--in-flight", default="1,16", help="comma-separated concurrency levels")
    parser.add_argument("--keepalives", type=int, default=500)
    parser.add_argument("--data-dir", default=None, help="where etcd keeps its data (default: a temp dir)")
    args = parser.parse_args()
    in_flights = [int(n) for n in args.in_flight.split(",")]
    with tempfile.TemporaryDirectory(dir=args.data_dir) as base, EtcdCluster(Path(base)) as cluster:
        asyncio.run(run(cluster.endpoints[0], args.seconds, in_flights, args.keepalives))
    return 0


if __name__ == "__main__":
    sys.exit(main())
