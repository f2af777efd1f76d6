"""The cluster on etcd, measured. Parts:

    .venv/bin/python bench/cluster.py scale [--nodes 500] [--baseline-nodes 10] [--tasks 2000]
                                            [--in-flight 8] [--ttl 15] [--refresh 10] [--idle 10]

    .venv/bin/python bench/cluster.py placement [--tasks 40]
    .venv/bin/python bench/cluster.py failover [--rounds 2] [--ttl 3]   (bench/cluster_failover.py)

placement: two real agents (a and c) on one etcd member, lease TTL 3 s. The same process
task (`sleep 300`) is posted --tasks times to a without a placement (it runs on a) and
--tasks times to a with {"node_id": "c"} (the scheduler places it, c creates it from its
assignment, a answers once c has it); each time the clock runs from the POST until the
task is running on its node. The ratio is what placing through etcd adds to a local start.

scale: the etcd parts at scale without full agents, simulated nodes and the real scheduler.
For each node count (the baseline first, then --nodes), on a fresh single etcd member:

- a child process simulates the nodes, as membership and the target side will run them:
  one lease per node with a keepalive every TTL/3, the node record on it, rewritten when
  the node's allocation changes (at most once a second) and every --refresh seconds (usage
  drifts), and one real AssignmentWatcher per node whose create() books the task's demand,
  so that the next rewrite carries the lower `free` and the higher applied_revision;
- this process runs only the scheduler side: a lease, the real Election and the real
  Scheduler (node cache by watch), and places --tasks tasks ("auto", 0.5 cpu, 512 MB)
  with --in-flight calls at a time.

The cluster has the same total capacity at every node count (8,000 cpu, 32 TB), so only
the number of nodes changes. Figures: place() latency p50/p99 (and its etcd txn's),
the scheduler's CPU per placement and placements/s; the time until every node has created
its tasks; etcd requests/s counted in the clients (the scheduler's while placing, the
nodes' while placing and while idle); the scheduler's memory (tracemalloc while it elects
itself and loads the node cache, RSS growth after placing); keys and DB size in etcd.
The ratio column (--nodes over the baseline) is what holds on a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import runpy
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cnetd.cluster.assignments import AssignmentWatcher  # noqa: E402
from cnetd.cluster.election import Election  # noqa: E402
from cnetd.cluster.etcd import Compare, EtcdClient, EtcdError, EtcdOptions, LeaseLost, TxnResult  # noqa: E402
from cnetd.cluster.etcd_wire import Op  # noqa: E402
from cnetd.cluster.placement import NoFit  # noqa: E402
from cnetd.cluster.records import (  # noqa: E402
    Assignment,
    NodeRecord,
    Resources,
    encode,
    node_key,
)
from cnetd.cluster.scheduler import Scheduler  # noqa: E402
from tests.support.etcd import EtcdCluster  # noqa: E402

PREFIX = "/cnet"
CLUSTER_CPU = 8000.0
CLUSTER_MEMORY = 32 * 10**12
TASK = Resources(cpu=0.5, memory=512 * 10**6)
MB = 10**6


def rss() -> int:
    """This process's resident set size in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class TimedClient(EtcdClient):
    """The scheduler's client, timing each txn: etcd's share of a placement."""

    def __init__(self, options: EtcdOptions) -> None:
        super().__init__(options)
        self.txn_ms: list[float] = []

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op] = (),
                  failure: Sequence[Op] = ()) -> TxnResult:
        started = time.perf_counter()
        try:
            return await super().txn(compare, success, failure)
        finally:
            self.txn_ms.append((time.perf_counter() - started) * 1000)


# --- the simulated nodes (child process) ----------------------------------------------------------


@dataclass
class SimulatedNode:
    etcd: EtcdClient
    node_id: str
    capacity: Resources
    ttl: int
    refresh: float
    lease_id: int = 0
    registration: int = 0
    used: Resources = Resources()
    created: set[str] = field(default_factory=set)
    duplicates: int = 0
    rewrites: int = 0
    watcher: AssignmentWatcher | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self) -> NodeRecord:
        return NodeRecord(node_id=self.node_id, name=self.node_id, advertise_url=f"http://{self.node_id}:8080",
                          labels={"region": "sim"}, capacity=self.capacity, free=self.capacity.minus(self.used),
                          sandbox="none", version="bench",
                          applied_revision=self.watcher.applied_revision if self.watcher else 0)

    async def register(self) -> None:
        self.lease_id = (await self.etcd.grant(self.ttl)).id
        put = await self.etcd.put(node_key(PREFIX, self.node_id), encode(self.record()), lease=self.lease_id)
        self.registration = put.revision  # a new key: created at this revision

    def current_registration(self) -> int:
        return self.registration

    def applied(self, _revision: int) -> None:
        self.changed.set()  # the record's applied_revision must catch up

    async def create(self, assignment: Assignment) -> None:
        if assignment.task_id in self.created:
            self.duplicates += 1
            return
        self.created.add(assignment.task_id)
        self.used = Resources(cpu=self.used.cpu + assignment.demand.cpu,
                              memory=self.used.memory + assignment.demand.memory)
        self.changed.set()

    async def keep_alive(self) -> None:
        interval = self.ttl / 3
        await asyncio.sleep(random.uniform(0, interval))
        while True:
            try:
                await self.etcd.keepalive(self.lease_id)
            except LeaseLost:
                await self.register()
            except EtcdError:
                pass
            await asyncio.sleep(interval)

    async def rewrite(self) -> None:
        """On allocation changes (at most once a second) and every `refresh` seconds."""
        wait = random.uniform(0, self.refresh)  # nodes out of step, as nodes started at different times are
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.changed.wait()
            wait = self.refresh
            self.changed.clear()
            try:
                await self.etcd.put(node_key(PREFIX, self.node_id), encode(self.record()), lease=self.lease_id)
                self.rewrites += 1
            except EtcdError:
                pass
            await asyncio.sleep(1.0)


async def simulate(endpoint: str, count: int, ttl: int, refresh: float) -> None:
    etcd = EtcdClient(EtcdOptions(endpoints=(endpoint,), timeout=10.0))
    capacity = Resources(cpu=CLUSTER_CPU / count, memory=CLUSTER_MEMORY // count, disk=10**12)
    nodes = [SimulatedNode(etcd, f"sim-{i:05d}", capacity, ttl, refresh) for i in range(count)]
    started = time.perf_counter()
    for batch in range(0, count, 50):
        await asyncio.gather(*(node.register() for node in nodes[batch:batch + 50]))
    tasks: list[asyncio.Task[None]] = []
    for node in nodes:
        node.watcher = AssignmentWatcher(etcd, PREFIX, node.node_id, node.current_registration, node.create,
                                         on_applied=node.applied)
        await node.watcher.start()
        tasks += [asyncio.create_task(node.keep_alive()), asyncio.create_task(node.rewrite())]
    while not all(node.watcher is not None and node.watcher.following for node in nodes):
        await asyncio.sleep(0.1)
    emit({"ready": True, "register_s": time.perf_counter() - started})
    loop = asyncio.get_running_loop()
    while True:
        command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        emit({"t": time.perf_counter(), "requests": dict(etcd.requests),
              "created": sum(len(n.created) for n in nodes), "duplicates": sum(n.duplicates for n in nodes),
              "rewrites": sum(n.rewrites for n in nodes)})
        if command in ("stop", ""):
            break
    for task in tasks:
        task.cancel()
    for node in nodes:
        assert node.watcher is not None
        await node.watcher.close()
    await etcd.close()


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


# --- the scheduler side (this process) ------------------------------------------------------------


class Simulation:
    """The child process simulating the nodes, asked for its counters over stdin/stdout."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, endpoint: str, nodes: int, ttl: int, refresh: float) -> Simulation:
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "simulate", "--endpoint", endpoint, "--nodes", str(nodes), "--ttl", str(ttl),
            "--refresh", str(refresh), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        simulation = cls(process)
        await simulation.read()  # {"ready": ...}
        return simulation

    async def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the node simulation exited ({await self.process.wait()})")
        message: dict[str, Any] = json.loads(line)
        return message

    async def ask(self, command: str = "report") -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        return await self.read()

    async def stop(self) -> dict[str, Any]:
        final = await self.ask("stop")
        await self.process.wait()
        return final


def rate(before: dict[str, Any], after: dict[str, Any]) -> float:
    requests = sum(after["requests"].values()) - sum(before["requests"].values())
    return float(requests / (after["t"] - before["t"]))


async def wait_for(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


async def scenario(cluster: EtcdCluster, nodes: int, args: argparse.Namespace) -> dict[str, float]:
    endpoint = cluster.endpoints[0]
    simulation = await Simulation.start(endpoint, nodes, args.ttl, args.refresh)
    etcd = TimedClient(EtcdOptions(endpoints=(endpoint,), timeout=10.0))
    rss_start = rss()
    tracemalloc.start()  # only while the cache loads: it would slow the placements measured below
    lease = (await etcd.grant(args.ttl)).id
    keeping = asyncio.create_task(_keep(etcd, lease, args.ttl))
    election = Election(etcd, PREFIX, "scheduler", "http://scheduler:8080", lambda: lease)
    scheduler = Scheduler(etcd, PREFIX, "scheduler", election, "spread")
    await election.start()
    await scheduler.start()

    async def cache_full() -> bool:
        return election.is_leader and scheduler.nodes.ready and len(scheduler.nodes.nodes) == nodes
    await wait_for(cache_full, "the scheduler to lead and list every node", 60)
    traced_cache, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_cache = rss()

    idle_from = await simulation.ask()
    await asyncio.sleep(args.idle)  # the steady state: keepalives and refreshes only
    idle_to = await simulation.ask()
    if args.verbose:
        delta = {path: count - idle_from["requests"].get(path, 0) for path, count in idle_to["requests"].items()}
        print(f"  {nodes} nodes, idle {idle_to['t'] - idle_from['t']:.1f}s: {delta}", file=sys.stderr)

    task_ids = [str(uuid.uuid4()) for _ in range(args.tasks)]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for task_id in task_ids:
        queue.put_nowait(task_id)
    latencies: list[float] = []
    no_fit = 0

    async def worker() -> None:
        nonlocal no_fit
        while not queue.empty():
            task_id = queue.get_nowait()
            started = time.perf_counter()
            try:
                await scheduler.place(task_id, "task", {"name": task_id[:8], "command": "true"}, TASK, "auto",
                                      posted_by="scheduler")
            except NoFit:
                no_fit += 1
            latencies.append((time.perf_counter() - started) * 1000)

    sched_before = sum(etcd.requests.values())
    nodes_before = await simulation.ask()
    etcd.txn_ms.clear()
    cpu_started = time.process_time()
    placing_started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.in_flight)))
    placing_s = time.perf_counter() - placing_started
    cpu_ms = (time.process_time() - cpu_started) * 1000
    sched_requests = sum(etcd.requests.values()) - sched_before
    rss_placed = rss()

    async def all_created() -> bool:
        created: int = (await simulation.ask())["created"]
        return created >= int(args.tasks) - no_fit
    await wait_for(all_created, "every node to create its tasks", 120)
    drain_s = time.perf_counter() - placing_started
    nodes_after = await simulation.ask()

    keys = (await etcd.range(b"\x00", range_end=b"\x00", count_only=True)).count
    placed = (await etcd.range(f"{PREFIX}/placed/", prefix=True, count_only=True)).count
    status = cluster.members[0].request("/v3/maintenance/status", {})
    await scheduler.close()
    await election.close()
    keeping.cancel()
    await etcd.close()
    final = await simulation.stop()
    if final["duplicates"] or placed != args.tasks or no_fit or final["created"] != args.tasks:
        print(f"  !! {nodes} nodes: {final['created']} created, {final['duplicates']} duplicate creates, "
              f"{placed} placed keys, {no_fit} no-fit",
              file=sys.stderr)
    return {
        "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
        "txn p50": percentile(etcd.txn_ms, 50), "txn p99": percentile(etcd.txn_ms, 99),
        "cpu per task": cpu_ms / args.tasks,
        "placements/s": args.tasks / placing_s, "drain": drain_s,
        "sched req/s": sched_requests / placing_s,
        "sched req/task": sched_requests / args.tasks,
        "nodes req/s placing": rate(nodes_before, nodes_after),
        "nodes req/s idle": rate(idle_from, idle_to),
        "idle req/s per node": rate(idle_from, idle_to) / nodes,
        "traced cache": traced_cache / MB,
        "rss cache": (rss_cache - rss_start) / MB, "rss placed": (rss_placed - rss_start) / MB,
        "keys": keys, "db": int(status.get("dbSize", 0)) / MB, "db in use": int(status.get("dbSizeInUse", 0)) / MB,
        "watches": nodes + 2,
    }


async def _keep(etcd: EtcdClient, lease: int, ttl: int) -> None:
    while True:
        await asyncio.sleep(ttl / 3)
        await etcd.keepalive(lease)


ROWS = [
    ("place() p50 (ms)", "p50", "{:.2f}"),
    ("place() p99 (ms)", "p99", "{:.2f}"),
    ("  its etcd txn p50 (ms)", "txn p50", "{:.2f}"),
    ("  its etcd txn p99 (ms)", "txn p99", "{:.2f}"),
    ("scheduler CPU per placement (ms)", "cpu per task", "{:.2f}"),
    ("placements/s", "placements/s", "{:.0f}"),
    ("until all created on nodes (s)", "drain", "{:.1f}"),
    ("scheduler etcd req/s placing", "sched req/s", "{:.0f}"),
    ("scheduler etcd requests per task", "sched req/task", "{:.2f}"),
    ("nodes etcd req/s placing", "nodes req/s placing", "{:.0f}"),
    ("nodes etcd req/s idle", "nodes req/s idle", "{:.1f}"),
    ("  idle req/s per node", "idle req/s per node", "{:.3f}"),
    ("scheduler memory, cache loaded (MB)", "traced cache", "{:.2f}"),
    ("scheduler RSS growth, cache (MB)", "rss cache", "{:.1f}"),
    ("scheduler RSS growth, placed (MB)", "rss placed", "{:.1f}"),
    ("etcd keys", "keys", "{:.0f}"),
    ("etcd db size (MB)", "db", "{:.1f}"),
    ("etcd db size in use (MB)", "db in use", "{:.1f}"),
    ("watch streams", "watches", "{:.0f}"),
]


async def run(args: argparse.Namespace) -> None:
    results: list[dict[str, float]] = []
    for nodes in (args.baseline_nodes, args.nodes):
        with tempfile.TemporaryDirectory() as base, EtcdCluster(Path(base)) as cluster:
            print(f"... {nodes} nodes", file=sys.stderr)
            results.append(await scenario(cluster, nodes, args))
    baseline, scaled = results
    print(f"{args.tasks} tasks placed 'auto' (spread), {args.in_flight} in flight; lease TTL {args.ttl}s, "
          f"node records refreshed every {args.refresh:g}s; one etcd member; same total capacity\n")
    print(f"{'':34} {f'{args.baseline_nodes} nodes':>12} {f'{args.nodes} nodes':>12} {'ratio':>8}")
    for label, key, fmt in ROWS:
        ratio = scaled[key] / baseline[key] if baseline[key] else float("nan")
        print(f"{label:34} {fmt.format(baseline[key]):>12} {fmt.format(scaled[key]):>12} {ratio:7.2f}x")


def time_until_running(api: Any, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    reply = api.post("/api/tasks", body)
    if reply.status != 201:
        raise RuntimeError(f"POST /api/tasks: {reply.status} {reply.text}")
    task_id = reply.body["id"]
    while api.get(f"/api/tasks/{task_id}").body["status"] != "running":  # a on c's: answered by c
        if time.perf_counter() - started > 30:
            raise RuntimeError(f"task {task_id} did not run within 30 s")
        time.sleep(0.002)
    return (time.perf_counter() - started) * 1000


def run_placement(args: argparse.Namespace) -> None:
    from tests.support.agent import AgentProcess
    from tests.support.cluster import cluster_agent, nodes_of, start_all, wait_status
    from tests.support.waiting import wait_until

    with tempfile.TemporaryDirectory() as base, EtcdCluster(Path(base) / "etcd") as cluster:
        made: list[AgentProcess] = []

        def make(config: dict[str, Any], name: str) -> AgentProcess:
            agent = AgentProcess(Path(base) / name, config)
            made.append(agent)
            return agent

        extra = {"tasks": {"max_concurrent": 4 * args.tasks}}
        a, c = (cluster_agent(make, cluster.endpoints, name, extra=extra) for name in "ac")
        try:
            start_all(a, c)
            wait_status(a, "c", "online")
            wait_until(lambda: any(n.get("scheduler") for n in nodes_of(a).values()), 20, "a scheduler")
            sleeper = {"name": "bench", "command": "sleep", "args": ["300"]}
            for _ in range(3):  # warm both paths
                time_until_running(a.api, sleeper)
                time_until_running(a.api, {**sleeper, "placement": {"node_id": "c"}})
            local = [time_until_running(a.api, sleeper) for _ in range(args.tasks)]
            placed = [time_until_running(a.api, {**sleeper, "placement": {"node_id": "c"}}) for _ in range(args.tasks)]
        finally:
            for agent in made:
                agent.stop()
                agent.kill_task_processes()
    print(f"POST /api/tasks on a -> running, {args.tasks} tasks each, one at a time; one etcd member\n")
    print(f"{'':36} {'p50 ms':>8} {'p95 ms':>8} {'vs local':>9}")
    base_p50 = percentile(local, 50)
    for label, values in (("local (runs on a)", local), ('placement {"node_id": "c"}', placed)):
        p50, p95 = percentile(values, 50), percentile(values, 95)
        print(f"{label:36} {p50:8.1f} {p95:8.1f} {p50 / base_p50:8.2f}x")


def main() -> int:
    if sys.argv[1:2] == ["failover"]:  # its own script, with its own options
        sys.argv = [str(REPO / "bench" / "cluster_failover.py"), *sys.argv[2:]]
        runpy.run_path(sys.argv[0], run_name="__main__")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parts = parser.add_subparsers(dest="part", required=True)
    scale = parts.add_parser("scale", help="simulated nodes and the real scheduler, against a baseline")
    scale.add_argument("--nodes", type=int, default=500)
    scale.add_argument("--baseline-nodes", type=int, default=10)
    scale.add_argument("--tasks", type=int, default=2000)
    scale.add_argument("--in-flight", type=int, default=8)
    scale.add_argument("--ttl", type=int, default=15, help="lease TTL in seconds (cluster.lease_ttl)")
    scale.add_argument("--refresh", type=float, default=10.0, help="seconds between a node's periodic rewrites")
    scale.add_argument("--idle", type=float, default=10.0, help="seconds of steady state measured before placing")
    scale.add_argument("--verbose", action="store_true", help="requests by path, on stderr")
    placement = parts.add_parser("placement", help="POST -> running through the scheduler vs locally, real agents")
    placement.add_argument("--tasks", type=int, default=40)
    parts.add_parser("failover", help="SIGKILL the node that trained a served model: bench/cluster_failover.py",
                     add_help=False)
    simulation = parts.add_parser("simulate")  # the child process of `scale`
    simulation.add_argument("--endpoint", required=True)
    simulation.add_argument("--nodes", type=int, required=True)
    simulation.add_argument("--ttl", type=int, required=True)
    simulation.add_argument("--refresh", type=float, required=True)
    args = parser.parse_args()
    if args.part == "simulate":
        asyncio.run(simulate(args.endpoint, args.nodes, args.ttl, args.refresh))
    elif args.part == "placement":
        run_placement(args)
    else:
        asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
