"""Per-version monitoring against a real agent with real workers: /metrics labelled by
version, roll-ups written to SQLite and served by GET /api/ml/models/{name}/metrics, input
drift moving when the served inputs move, and the window parameter's bad values."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.agent import AgentProcess
from tests.support.waiting import wait_until
from tests.test_serving import infer, line_value, wait_ready

# Two features; trains by writing its file and printing input_stats (a: mean 0 std 1,
# b: mean 10 std 2); serves a + b, and rejects an instance whose a is below -1000.
DRIFT_SCRIPT = '''
import json, sys
command, path = sys.argv[1], sys.argv[2]
if command == "train":
    open(path, "w").write("drift")
    print(json.dumps({"status": "success",
                      "input_stats": {"features": ["a", "b"], "mean": [0.0, 10.0], "std": [1.0, 2.0]}}))
elif command == "serve":
    print(json.dumps({"ready": True, "n_features": 2}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        rows = request["instances"]
        if any(row[0] < -1000 for row in rows):
            print(json.dumps({"id": request["id"], "error": "a is far too small"}), flush=True)
            continue
        print(json.dumps({"id": request["id"], "predictions": [row[0] + row[1] for row in rows]}), flush=True)
'''

ROLLUP = 0.5  # seconds: serving.rollup_interval in these tests


def deploy(agent: AgentProcess, name: str = "drifty") -> str:
    body = {"name": name, "command": sys.executable, "script_path": "drift_model.py", "model_path": f"models/{name}.txt",
            "args": ["drift_model.py", "train", f"models/{name}.txt"], "serving": {"replicas": 1}}
    reply = agent.api.post("/api/ml/models", body)
    assert reply.status == 201, reply.text
    model_id: str = reply.body["id"]
    done = agent.wait_status(model_id, {"completed", "failed"}, 60, path="/api/ml/models/")
    assert done["status"] == "completed", done
    wait_ready(agent, model_id)
    return model_id


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One agent rolling up every half second, with two versions of "drifty" served."""
    agent = AgentProcess(tmp_path_factory.mktemp("monitoring") / "agent",
                         {"serving": {"rollup_interval": f"{ROLLUP}s"}})
    (agent.workdir / "drift_model.py").write_text(DRIFT_SCRIPT)
    agent.start()
    try:
        first = deploy(agent)
        second = deploy(agent)
        yield {"agent": agent, "v1": first, "v2": second}
    finally:
        agent.stop()
        agent.kill_task_processes()


def send(agent: AgentProcess, rows: list[list[float]], version: str | None = None) -> int:
    flat = [v for row in rows for v in row]
    return infer(agent, "drifty", flat, [len(rows), 2], version=version).status


def test_metrics_carry_the_version_label(monitored: dict[str, Any]) -> None:
    agent, v1, v2 = monitored["agent"], monitored["v1"], monitored["v2"]
    for _ in range(5):
        assert send(agent, [[0.0, 10.0]], version=v1) == 200
        assert send(agent, [[0.0, 10.0], [1.0, 9.0]], version=v2) == 200
    assert send(agent, [[-5000.0, 10.0]], version=v2) == 400
    text = agent.api.get("/metrics").text
    assert line_value(text, "cnet_inference_requests_total", model_id=v1, version="1", code="200", outcome="ok") >= 5
    assert line_value(text, "cnet_inference_requests_total", model_id=v2, version="2", code="200", outcome="ok") >= 5
    assert line_value(text, "cnet_inference_requests_total", model_id=v2, version="2", outcome="bad_input") >= 1
    for family in ("cnet_inference_request_duration_seconds", "cnet_inference_queue_seconds",
                   "cnet_inference_compute_seconds"):
        assert line_value(text, f"{family}_count", model="drifty", version="2") >= 5, family
    assert line_value(text, "cnet_serving_load_seconds_count", version="1") >= 1
    assert line_value(text, "cnet_inference_in_flight", version="1") == 0
    assert line_value(text, "cnet_serving_replicas", version="2", state="ready") == 1
    # every family's samples stand together under its one TYPE line
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(families) == len(set(families))


def test_rollups_are_written_and_served_per_version(monitored: dict[str, Any]) -> None:
    agent, v1, v2 = monitored["agent"], monitored["v1"], monitored["v2"]
    for _ in range(20):
        assert send(agent, [[0.5, 10.0]], version=v1) == 200
    assert send(agent, [[-5000.0, 10.0]], version=v1) == 400

    def counted() -> dict[str, Any] | None:
        reply = agent.api.get("/api/ml/models/drifty/metrics?window=1h")
        assert reply.status == 200, reply.text
        first = next(v for v in reply.body["versions"] if v["model_id"] == v1)
        return reply.body if first["totals"]["count"] >= 21 and first["totals"]["errors"] >= 1 else None

    body = wait_until(counted, 20, "the roll-ups of version 1")
    assert body["name"] == "drifty" and body["window_seconds"] == 3600 and body["interval_seconds"] == ROLLUP
    by_version = {v["version"]: v for v in body["versions"]}
    assert set(by_version) == {"1", "2"} and by_version["2"]["model_id"] == v2
    point = next(p for p in by_version["1"]["points"] if p["count"] > 0)
    assert point["p50_ms"] is not None and point["p50_ms"] <= point["p95_ms"] <= point["p99_ms"]
    assert point["throughput"] > 0
    # a week: the half-second roll-ups merged into 420 s points, the counts kept
    week = agent.api.get("/api/ml/models/drifty/metrics?window=7d").body
    assert week["step_seconds"] == 420
    merged = next(v for v in week["versions"] if v["model_id"] == v1)
    assert merged["totals"]["count"] >= 21 and len(merged["points"]) <= 2
    # the same answer by deploy id
    by_id = agent.api.get(f"/api/ml/models/{v2}/metrics?window=1h").body
    assert by_id["name"] == "drifty" and len(by_id["versions"]) == 2
    # the rows are in SQLite
    conn = sqlite3.connect(f"file:{agent.state_dir / 'cnet.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT version, SUM(count) FROM model_rollups WHERE name = 'drifty' GROUP BY version").fetchall()
    finally:
        conn.close()
    assert dict(rows)["1"] >= 21


def drift_of(agent: AgentProcess, model_id: str) -> dict[str, Any] | None:
    body = agent.api.get(f"/api/ml/models/{model_id}/metrics?window=1m").body
    version = next(v for v in body["versions"] if v["model_id"] == model_id)
    drift: dict[str, Any] | None = version["drift"]
    return drift


def test_drift_score_moves_when_inputs_move(monitored: dict[str, Any]) -> None:
    agent, v2 = monitored["agent"], monitored["v2"]
    wait_until(lambda: drift_of(agent, v2), 10, "drift tracking of version 2")
    before = drift_of(agent, v2)
    assert before is not None
    # inputs centred like the training data: a small score
    for i in range(20):
        assert send(agent, [[(-1) ** i * 0.5, 10.0 + (-1) ** i]], version=v2) == 200
    calm = {f["feature"]: f for f in drift_of(agent, v2)["features"]}  # type: ignore[index]
    assert calm["a"]["score"] < 0.5 and calm["b"]["score"] < 0.5, calm
    # feature a moves by 3 training stds; b stays
    for _ in range(200):
        assert send(agent, [[3.0, 10.0]], version=v2) == 200
    moved = {f["feature"]: f for f in drift_of(agent, v2)["features"]}  # type: ignore[index]
    assert moved["a"]["score"] > 2.0 and moved["b"]["score"] < 0.5, moved
    text = agent.api.get("/metrics").text
    assert line_value(text, "cnet_model_input_drift_score", model_id=v2, version="2", feature="a") > 2.0
    assert line_value(text, "cnet_model_input_drift_score", model_id=v2, feature="b") < 0.5


@pytest.mark.parametrize("window", [
    "0h", "1", "h", "-1h", "1.5h", "1w", "100000d", "30s", "32d", "1h;DROP TABLE model_rollups", "%2e%2e%2f", "1h ",
    "9" * 200 + "h", "\uff11h", "1h\n", "1h&window=2h",
])
def test_bad_windows_are_a_400_naming_window(monitored: dict[str, Any], window: str) -> None:
    from urllib.parse import quote
    reply = monitored["agent"].api.get(f"/api/ml/models/drifty/metrics?window={quote(window)}")
    assert reply.status == 400, reply.text
    assert reply.body["details"]["field"] == "window" and "window" in reply.body["error"]
    assert len(reply.text) < 1000


@pytest.mark.parametrize("name", ["nope", "..%2f..%2fetc", "x" * 300, "%00", "drifty%27%20OR%201=1"])
def test_unknown_models_are_a_404(monitored: dict[str, Any], name: str) -> None:
    reply = monitored["agent"].api.get(f"/api/ml/models/{name}/metrics?window=1h")
    assert reply.status == 404, reply.text


def test_rollups_older_than_the_retention_are_deleted(agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory({"serving": {"rollup_interval": "0.2s", "rollup_retention": "1s"}})
    (agent.workdir / "drift_model.py").write_text(DRIFT_SCRIPT)
    agent.start()
    deploy(agent, "kept-short")
    db = agent.state_dir / "cnet.db"

    def rows() -> list[tuple[int, str]]:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT COUNT(*), COALESCE(MIN(at), '') FROM model_rollups").fetchall()  # type: ignore[no-any-return]
        finally:
            conn.close()

    wait_until(lambda: rows()[0][0] >= 3, 20, "roll-ups of an idle served model (a row per interval)")
    # 0.2 s apart and kept 1 s: a handful at any time, never one from the start
    first = rows()[0][1]
    wait_until(lambda: rows()[0][1] > first, 10, "the oldest roll-up deleted")
    assert rows()[0][0] <= 7


def test_roles_follow_the_pointers_and_a_canary_stands_beside_the_default(monitored: dict[str, Any]) -> None:
    agent, v1, v2 = monitored["agent"], monitored["v1"], monitored["v2"]

    def roles() -> dict[str, str | None]:
        body = agent.api.get("/api/ml/models/drifty/metrics").body
        return {v["model_id"]: v["role"] for v in body["versions"]}

    wait_until(lambda: roles().get(v2) == "default", 30, "version 2 the default")
    assert roles()[v1] in ("previous", None)
    body = {"name": "drifty", "command": sys.executable, "script_path": "drift_model.py",
            "model_path": "models/drifty3.txt", "args": ["drift_model.py", "train", "models/drifty3.txt"],
            "serving": {"replicas": 1}, "promote": "manual"}
    reply = agent.api.post("/api/ml/models", body)
    assert reply.status == 201, reply.text
    v3 = reply.body["id"]
    assert agent.wait_status(v3, {"completed", "failed"}, 60, path="/api/ml/models/")["status"] == "completed"
    started = agent.api.post("/api/ml/models/drifty/rollout", {"version": 3, "canary_percent": 50, "duration": "5m"},
                             timeout=120)
    assert started.status == 202, started.text
    try:
        wait_until(lambda: roles().get(v3) == "canary", 60, "version 3 the canary")
        assert roles()[v2] == "default"
        for i in range(40):  # sticky by key: both versions answer some
            reply = agent.api.post("/v2/models/drifty/infer", {"inputs": [
                {"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [0.0, 10.0]}]},
                headers={"X-Request-Key": f"k{i}"})
            assert reply.status == 200, reply.text
        text = agent.api.get("/metrics").text
        assert line_value(text, "cnet_inference_requests_total", model_id=v3, version="3", outcome="ok") > 0
        assert line_value(text, "cnet_inference_requests_total", model_id=v2, version="2", outcome="ok") > 0
        page = agent.api.get(f"/models/{v2}").text
        assert '<span class="pill warn">canary</span>' in page and '<span class="pill ok">default</span>' in page
    finally:
        agent.api.post("/api/ml/models/drifty/rollout/abort", {})


def test_the_monitoring_fragment(monitored: dict[str, Any]) -> None:
    agent, v1 = monitored["agent"], monitored["v1"]
    reply = agent.api.get(f"/models/{v1}/monitoring", headers={"HX-Request": "true"})
    assert reply.status == 200 and 'id="monitoring"' in reply.text and "<desc id=\"mc-latency-d\">" in reply.text
    assert "(this deploy)" in reply.text
    for bad in ("nope", "..%2F..%2Fetc%2Fpasswd", "x" * 300, "%00"):
        assert agent.api.get(f"/models/{bad}/monitoring").status == 404, bad
