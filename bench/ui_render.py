"""Web UI render time with a full store: the dashboard and a model page (plus the lists)
with 1,000 tasks, 100 of them models, and 300 log lines on the model page's task.

    .venv/bin/python bench/ui_render.py [--tasks 1000] [--requests 200] [--cluster]

With --cluster the agent is one node of a cluster on a local etcd member (started here, as
the tests start theirs), which also holds as many task summaries of three other nodes as
the store has tasks (a third of them on a node that is offline), and the whole-cluster
lists (/tasks?node=all, /models?node=all) are timed too, with their ratio to this node's
list in the same run: they read every summary from etcd on each request (and each poll).

The app runs in this process (create_app, the same factory as the daemon) behind a real
aiohttp server on loopback; the store is filled through the store's own functions with
finished tasks (so the scheduler starts nothing). Each time is one full GET as the client
sees it — routing, queries, rendering, HTTP — so it is an upper bound on server time.
Goal: p50 under 50 ms for the dashboard and the model page.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from cnetd.agent import AGENT  # noqa: E402
from cnetd.app import create_app  # noqa: E402
from cnetd.clock import utc_now  # noqa: E402
from cnetd.cluster.etcd import Put  # noqa: E402
from cnetd.cluster.records import NodeRecord, TaskSummary, encode, seen_key, task_key  # noqa: E402
from cnetd.config import default_config  # noqa: E402
from cnetd.limits import ResourceLimits  # noqa: E402
from cnetd.store import logs as lq  # noqa: E402
from cnetd.store import models as mq  # noqa: E402
from cnetd.store import tasks as q  # noqa: E402
from cnetd.store.models import ModelRecord  # noqa: E402
from cnetd.tasks.model import Status, Task  # noqa: E402
from cnetd.tasks.states import event  # noqa: E402
from tests.support.etcd import EtcdCluster  # noqa: E402

GOAL_MS = 50.0
STATUSES = (Status.COMPLETED, Status.COMPLETED, Status.COMPLETED, Status.FAILED, Status.STOPPED)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def fill(conn: sqlite3.Connection, n: int, node_id: str, log_dir: Path) -> str:
    """n finished tasks (every tenth a model with its deploy task); returns a model id."""
    model_id = ""
    now = utc_now()
    for i in range(n):
        task_id = str(uuid.uuid4())
        is_model = i % 10 == 0
        status = STATUSES[i % len(STATUSES)]
        task = Task(
            id=task_id, name=f"{'model' if is_model else 'task'}-{i}", type="ml_model" if is_model else "process",
            kind="train" if is_model else "run", status=status, command="python3",
            args=["examples/ml_models/simple_linear_regression.py", "train", f"models/m{i}.joblib", "1000"],
            env={"PYTHONPATH": "examples/ml_models"}, working_dir=".",
            resources=ResourceLimits(1.0, 512_000_000, 1_000_000_000, 0), created_at=now, started_at=now,
            stopped_at=now, exit_code=0 if status == Status.COMPLETED else 1,
            reason="exit code 1" if status == Status.FAILED else None, log_file=str(log_dir / f"{task_id}.log"),
            node_id=node_id, progress=1.0 if is_model else None,
            result={"status": "success", "metrics": {"r2": 0.99}} if status == Status.COMPLETED else None,
            sandbox="none",
        )
        q.insert_task(conn, task)
        for kind in ("created", "starting", "started", str(status)):
            q.insert_event(conn, event(task_id, kind, f"{kind} (bench)"))
        if is_model:
            mq.insert_model(conn, ModelRecord(
                id=task_id, name=task.name, model_type="linear_regression", model_path=f"models/m{i}.joblib",
                script_path="examples/ml_models/simple_linear_regression.py", created_at=now,
            ))
            if not model_id:
                model_id = task_id
                lines = [f'{{"progress": {j / 300:.3f}, "stage": "epoch {j}"}}' for j in range(300)]
                lq.append_lines(conn, task_id, 1, lines, 0)
    return model_id


async def measure(client: TestClient, path: str, n: int) -> list[float]:
    for _ in range(5):  # warm up: template compilation, caches
        (await client.get(path, headers={"Accept": "text/html"})).release()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        response = await client.get(path, headers={"Accept": "text/html"})
        await response.read()
        times.append((time.perf_counter() - start) * 1000)
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status}")
    return times


OTHER_NODES = ("node-b", "node-c", "node-d")  # node-d: offline (its tasks are shown lost)


async def mirror(agent: object, n: int) -> None:
    """n task summaries of the other nodes in etcd, as their mirrors would have written them,
    and node-d's seen/ record (offline: no nodes/ key)."""
    cluster = agent.cluster  # type: ignore[attr-defined]
    prefix = cluster.settings.prefix
    now = utc_now()
    ops = []
    for i in range(n):
        node = OTHER_NODES[i % len(OTHER_NODES)]
        is_model = i % 10 == 0
        summary = TaskSummary(
            id=str(uuid.uuid4()), name=f"{node}-{'model' if is_model else 'task'}-{i}",
            type="ml_model" if is_model else "process", kind="train" if is_model else "run",
            status="running" if i % 3 == 0 else "completed", node_id=node, created_at=now, started_at=now,
            stopped_at=None if i % 3 == 0 else now, exit_code=None if i % 3 == 0 else 0, updated_at=now)
        ops.append(Put(task_key(prefix, node, summary.id).encode(), encode(summary)))
    ops.append(Put(seen_key(prefix, "node-d").encode(),
                   encode(NodeRecord(node_id="node-d", name="d", advertise_url="http://127.0.0.1:9", last_seen=now))))
    for start in range(0, len(ops), 100):
        await cluster.etcd.txn([], ops[start : start + 100])


async def main(tasks: int, requests: int, endpoints: tuple[str, ...] = ()) -> int:
    with tempfile.TemporaryDirectory(prefix="cnet-ui-bench-") as tmp:
        base = Path(tmp)
        (base / "examples").symlink_to(REPO / "examples")
        sections: dict[str, object] = {"tasks": {"sandbox": "none"}}
        if endpoints:
            (base / "cluster.token").write_text("bench-cluster-token-0123456789\n")
            (base / "cluster.token").chmod(0o600)
            sections["cluster"] = {"etcd": {"endpoints": list(endpoints)}, "lease_ttl": "5s",
                                   "token_file": str(base / "cluster.token")}
        config = default_config(base, **sections)
        app = create_app(config, base)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            agent = app[AGENT]
            log_dir = config.agent.state_dir / "logs"
            # the store, as the agent would have filled it
            model_id = await agent.tasks.db.write(lambda c: fill(c, tasks, agent.node_id, log_dir))
            pages = [
                ("dashboard  /", "/"),
                ("model page /models/{id}", f"/models/{model_id}"),
                ("tasks list /tasks", "/tasks"),
                ("models list /models", "/models"),
            ]
            if endpoints:
                await mirror(agent, tasks)
                pages += [("cluster /tasks?node=all", "/tasks?node=all"),
                          ("cluster /models?node=all", "/models?node=all")]
            where = f", {tasks} more of 3 other nodes in etcd" if endpoints else ""
            print(f"{tasks} tasks in the store ({tasks // 10} models){where}, {requests} sequential GETs per page\n")
            print(f"{'page':<26} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'x /tasks':>9}")
            failed = False
            base_p50 = 0.0
            for label, path in pages:
                times = await measure(client, path, requests)
                p50, p99 = percentile(times, 0.5), percentile(times, 0.99)
                if path == "/tasks":
                    base_p50 = p50
                ratio = f"{p50 / base_p50:9.1f}" if base_p50 and path.endswith("node=all") else f"{'':9}"
                print(f"{label:<26} {p50:8.1f} {p99:8.1f} {max(times):8.1f} {ratio}")
                if path in ("/", f"/models/{model_id}") and p50 >= GOAL_MS:
                    failed = True
            print(f"\ngoal: p50 < {GOAL_MS:.0f} ms for the dashboard and the model page: {'MISSED' if failed else 'met'}")
            return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--cluster", action="store_true", help="also time the whole-cluster lists (starts etcd)")
    args = parser.parse_args()
    if not args.cluster:
        sys.exit(asyncio.run(main(args.tasks, args.requests)))
    with tempfile.TemporaryDirectory(prefix="cnet-ui-bench-etcd-") as etcd_dir, EtcdCluster(Path(etcd_dir)) as etcd:
        sys.exit(asyncio.run(main(args.tasks, args.requests, etcd.endpoints)))
