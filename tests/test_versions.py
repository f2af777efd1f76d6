"""Model versions against a real agent: every deploy of a name is its next version with its
own copy of the artifact; the default switches only to a warm version; promote, rollback and
rollouts switch without a failed request; pointers survive a restart."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import AgentProcess
from tests.support.waiting import wait_until

MODEL = Path(__file__).resolve().parent / "support" / "versioned_model.py"
MODEL_PATH = "models/v.json"


def body(name: str, slope: float, fail_mod: int = 0, serving: dict[str, Any] | None = None,
         **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name, "model_path": MODEL_PATH, "script_path": "versioned_model.py", "command": "python3",
        "args": ["versioned_model.py", "train", MODEL_PATH, str(slope), str(fail_mod)], **extra,
    }
    if serving is not None:
        out["serving"] = serving
    return out


@pytest.fixture
def vagent(agent_factory: Callable[..., AgentProcess]) -> AgentProcess:
    agent = agent_factory({"serving": {"rollback_window": "1h"}})
    shutil.copy(MODEL, agent.workdir / "versioned_model.py")
    (agent.workdir / "models").mkdir()
    return agent.start()


def deploy(agent: AgentProcess, payload: dict[str, Any]) -> str:
    reply = agent.api.post("/api/ml/models", payload)
    assert reply.status == 201, reply.text
    model_id: str = reply.body["id"]
    done = agent.wait_status(model_id, {"completed", "failed", "stopped"}, 90, path="/api/ml/models/")
    assert done["status"] == "completed", done
    return model_id


def model(agent: AgentProcess, name: str) -> dict[str, Any]:
    reply = agent.api.get(f"/api/ml/models/{name}")
    assert reply.status == 200, reply.text
    return reply.body  # type: ignore[no-any-return]


def wait_model(agent: AgentProcess, name: str, test: Callable[[dict[str, Any]], bool], timeout: float,
               what: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        found = model(agent, name)
        return found if test(found) else None

    return wait_until(check, timeout, what)


def wait_default(agent: AgentProcess, name: str, version: int, timeout: float = 90) -> dict[str, Any]:
    return wait_model(agent, name, lambda m: m["default_version"] == version, timeout,
                      f"version {version} of {name} as the default")


def infer(agent: AgentProcess, name: str, x: float, version: int | None = None,
          key: str | None = None) -> tuple[int, Any]:
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    headers = {"X-Request-Key": key} if key else None
    reply = agent.api.post(path, {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [x]}]},
                           headers=headers, timeout=30)
    if reply.status != 200:
        return reply.status, reply.text
    return 200, (reply.body["model_version"], reply.body["outputs"][0]["data"][0])


class Load:
    """Several clients sending V2 requests for a name until stopped; every answer kept."""

    def __init__(self, agent: AgentProcess, name: str, clients: int = 4) -> None:
        self.agent, self.name = agent, name
        self.results: list[tuple[int, Any]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, client: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            self.results.append(infer(self.agent, self.name, 0.5, key=f"c{client}-{n}"))

    @property
    def failed(self) -> list[tuple[int, Any]]:
        return [r for r in self.results if r[0] != 200]

    def versions_since(self, start: int) -> set[str]:
        return {r[1][0] for r in self.results[start:] if r[0] == 200}

    def wait_requests(self, n: int) -> None:
        start = len(self.results)
        wait_until(lambda: len(self.results) >= start + n, 60, f"{n} more requests")

    @contextmanager
    def running(self) -> Iterator[Load]:
        for t in self._threads:
            t.start()
        try:
            yield self
        finally:
            self._stop.set()
            for t in self._threads:
                t.join(30)


def test_two_deploys_two_versions_default_when_warm_and_pinned_v1_unchanged(vagent: AgentProcess) -> None:
    agent = vagent
    v1 = deploy(agent, body("lin", 2, serving={"replicas": 1}))
    first = wait_default(agent, "lin", 1)
    (row,) = first["versions"]
    assert row["version"] == 1 and row["state"] == "ready" and row["role"] == "default"
    assert len(row["sha256"]) == 64 and row["size"] > 0 and row["sidecars"] == ["v.json.meta.json"]
    assert row["training_result"]["slope"] == 2.0
    wait_until(lambda: infer(agent, "lin", 1.0)[0] == 200, 60, "v1 answering")
    assert infer(agent, "lin", 1.0) == (200, ("1", 2.0))

    # The same name again: version 2, trained into the same model_path (in place).
    reply = agent.api.post("/api/ml/models", body("lin", 5))
    assert reply.status == 201, reply.text
    v2 = reply.body["id"]
    assert agent.api.get(f"/api/ml/models/{v2}").body["version"] == 2
    # Until v2 is warm, v1 answers for the name: never a failed request.
    seen = set()
    deadline = time.monotonic() + 90
    while model(agent, "lin")["default_version"] != 2:
        status, answer = infer(agent, "lin", 1.0)
        assert status == 200, answer
        seen.add(answer)
        assert time.monotonic() < deadline
    assert seen <= {("1", 2.0), ("2", 5.0)}
    assert infer(agent, "lin", 1.0) == (200, ("2", 5.0))
    # v1 pinned: its own copy, although the model file now holds v2 (a reload of the file
    # would have happened within 3 s: it is looked at every second).
    until = time.monotonic() + 3

    def still_v1() -> bool:
        assert infer(agent, "lin", 1.0, version=1) == (200, ("1", 2.0))
        return time.monotonic() > until

    wait_until(still_v1, 30, "v1 answering as before for 3 s")
    assert agent.api.get(f"/api/ml/models/{v1}").body["serving"]["reloads"] == 0
    assert infer(agent, "lin", 1.0, version=2) == (200, ("2", 5.0))
    versions = agent.api.get(f"/api/ml/models/{v1}/versions").body
    assert [v["version"] for v in versions["versions"]] == [1, 2]
    assert versions["versions"][0]["sha256"] != versions["versions"][1]["sha256"]
    assert versions["versions"][0]["role"] == "previous" and versions["versions"][1]["role"] == "default"
    # Metadata lists the real version numbers; the seed's predict names the version.
    assert agent.api.get("/v2/models/lin").body["versions"] == ["2", "1"]
    predicted = agent.api.post("/api/ml/models/lin/predict?wait=true", {"input_data": 2})
    assert predicted.status == 200 and predicted.headers["X-Model-Version"] == "2" and predicted.body["prediction"] == 10
    pinned = agent.api.post(f"/api/ml/models/{v1}/predict?wait=true", {"input_data": 2})
    assert pinned.headers["X-Model-Version"] == "1" and pinned.body["prediction"] == 4
    # The cold path too: a prediction task of v1 reads v1's copy (in its own namespace).
    cold = agent.api.post(f"/api/ml/models/{v1}/predict", {"input_data": 3})
    assert cold.status == 201 and cold.headers["X-Model-Version"] == "1", cold.text
    done = agent.wait_done(cold.body["prediction_task_id"], 60)
    assert done["status"] == "completed" and done["result"]["prediction"] == 6, done


def test_manual_promote_and_rollback_under_load(vagent: AgentProcess) -> None:
    agent = vagent
    deploy(agent, body("m", 2, serving={"replicas": 1}))
    wait_default(agent, "m", 1)
    wait_until(lambda: infer(agent, "m", 1.0)[0] == 200, 60, "v1 answering")
    deploy(agent, body("m", 3, promote="manual"))
    assert model(agent, "m")["default_version"] == 1
    with Load(agent, "m").running() as load:
        load.wait_requests(20)
        promoted = agent.api.post("/api/ml/models/m/promote", {"version": 2}, timeout=120)
        assert promoted.status == 200, promoted.text
        assert promoted.body["default_version"] == 2
        mark = len(load.results)
        load.wait_requests(20)
        assert load.versions_since(mark + 8) == {"2"}
        started = time.monotonic()
        back = agent.api.post("/api/ml/models/m/rollback")
        assert back.status == 200 and back.body["reloaded"] is False, back.text
        assert time.monotonic() - started < 1.0
        mark = len(load.results)
        load.wait_requests(20)
        assert load.versions_since(mark + 8) == {"1"}
        again = agent.api.post("/api/ml/models/m/rollback")  # back to 2: a rollback can be undone
        assert again.status == 200 and again.body["default_version"] == 2
        load.wait_requests(20)
    assert load.failed == [], load.failed[:5]
    events = model(agent, "m")["events"]
    assert [e["type"] for e in events if e["type"] in ("promoted", "rolled_back")][-3:] == [
        "promoted", "rolled_back", "rolled_back"]


def test_bad_canary_rolled_back_good_canary_promoted_restart_keeps_state(vagent: AgentProcess) -> None:
    agent = vagent
    deploy(agent, body("c", 2, serving={"replicas": 1, "max_batch_size": 1}))
    wait_default(agent, "c", 1)
    wait_until(lambda: infer(agent, "c", 1.0)[0] == 200, 60, "v1 answering")
    deploy(agent, body("c", 4, fail_mod=1, promote="manual"))  # fails on every x >= 1
    deploy(agent, body("c", 6, promote="manual"))
    # A bad canary: it refuses x = 1; rolled back automatically, with the reason.
    rollout = {"version": 2, "canary_percent": 50, "duration": "30s", "max_error_rate": 0.05, "min_requests": 10}
    started = agent.api.post("/api/ml/models/c/rollout", rollout, timeout=120)
    assert started.status == 202, started.text
    errors = 0
    for i in range(60):
        status, _ = infer(agent, "c", 1.0, key=f"k{i}")
        errors += status != 200
        if model(agent, "c")["canary_version"] is None:
            break
    assert errors > 0
    final = wait_model(agent, "c", lambda m: m["canary_version"] is None, 40, "the automatic rollback")
    assert final["default_version"] == 1
    ended = [e for e in final["events"] if e["type"] == "rollout_ended"][-1]
    assert "rolled back automatically" in ended["message"] and "error rate" in ended["message"], ended

    # A good canary under load, interrupted by an agent restart: it goes on, then is promoted.
    rollout = {"version": 3, "canary_percent": 30, "duration": "8s", "max_error_rate": 0.01,
               "max_p99_ratio": 50, "min_requests": 5}
    started = agent.api.post("/api/ml/models/c/rollout", rollout, timeout=120)
    assert started.status == 202, started.text
    with Load(agent, "c", clients=3).running() as load:
        load.wait_requests(60)
        assert load.versions_since(0) == {"1", "3"}
    assert load.failed == []
    workers = {v["version"]: agent.api.get(f"/api/ml/models/{v['model_id']}").body["serving"]["workers"]
               for v in model(agent, "c")["versions"] if v["served"]}
    agent.stop()
    agent.start()
    state = model(agent, "c")
    assert state["default_version"] == 1 and state["canary_version"] == 3
    for version in (1, 3):  # the same warm workers, found again
        model_id = next(v["model_id"] for v in state["versions"] if v["version"] == version)
        again = agent.api.get(f"/api/ml/models/{model_id}").body["serving"]["workers"]
        assert [w["task_id"] for w in again] == [w["task_id"] for w in workers[version]]
    # sticky: the same key always lands on the same version
    wait_until(lambda: infer(agent, "c", 1.0, key="same")[0] == 200, 60, "answering after the restart")
    assert len({infer(agent, "c", 1.0, key="same")[1][0] for _ in range(10)}) == 1
    with Load(agent, "c", clients=3).running() as load:
        wait_default(agent, "c", 3, timeout=60)
        load.wait_requests(10)
    assert load.failed == []
    ended = [e for e in model(agent, "c")["events"] if e["type"] == "rollout_ended"][-1]
    assert "promoted" in ended["message"], ended


def test_register_artifact_is_confined_and_bad_bodies_are_refused(vagent: AgentProcess) -> None:
    agent = vagent
    deploy(agent, body("r", 2))
    wait_default(agent, "r", 1)
    work = agent.workdir
    secret = work / "secret.txt"
    secret.write_text("not a model")
    (work / "models" / "shadow-link.json").symlink_to("/etc/shadow")
    (work / "models" / "etc").symlink_to("/etc")
    (work / "models" / "dir.json").mkdir()
    (work / "models" / "inside-link.json").symlink_to(work / MODEL_PATH)  # inside the roots, still a link
    for artifact, words in [
        ("../../../../etc/shadow", "outside"),
        ("/etc/shadow", "outside"),
        ("models/shadow-link.json", "outside"),
        ("models/etc/passwd", "outside"),
        ("models/inside-link.json", "symlink"),
        ("state/cnet.db", "state dir"),
        ("secret.txt", "model root"),
        ("models/dir.json", "not a regular file"),
        ("models/missing.json", "no such file"),
        ("models/x\u0000.json", "NUL"),
    ]:
        reply = agent.api.post("/api/ml/models/r/versions", {"artifact": artifact})
        assert reply.status == 400, (artifact, reply.text)
        assert "artifact" in reply.text and words.lower() in reply.text.lower(), (artifact, reply.text)
    assert [v["version"] for v in agent.api.get("/api/ml/models/r/versions").body["versions"]] == [1]

    (work / "models" / "hand.json").write_text('{"slope": 7.0, "fail_mod": 0}')
    (work / "models" / "hand.json.meta.json").write_text('{"slope": 7.0}')
    registered = agent.api.post("/api/ml/models/r/versions", {"artifact": "models/hand.json", "promote": "manual"})
    assert registered.status == 201, registered.text
    assert registered.body["version"] == 2 and registered.body["state"] == "ready"
    assert registered.body["source"] == "registered" and registered.body["sidecars"] == ["hand.json.meta.json"]
    (work / "models" / "hand.json").write_text('{"slope": 9.0, "fail_mod": 0}')  # the copy is the agent's
    assert agent.api.post("/api/ml/models/r/promote", {"version": 2}).status == 200
    assert model(agent, "r")["default_version"] == 2
    served = agent.api.post("/api/ml/models/r/serve?wait=true", {"replicas": 1}, timeout=90)
    assert served.status == 200, served.text
    assert infer(agent, "r", 1.0) == (200, ("2", 7.0))
    private = work / "models" / "private.json"
    private.write_text('{"slope": 1.0}')
    private.chmod(0o600)  # root's, unreadable by others: not the agent's to hand to a model
    reply = agent.api.post("/api/ml/models/r/versions", {"artifact": "models/private.json"})
    assert reply.status == 400 and "readable" in reply.text, reply.text

    # A version that is neither default nor previous, stopped: retired, its copy removed.
    third = agent.api.post("/api/ml/models/r/versions", {"artifact": "models/hand.json", "promote": "manual"}).body
    assert third["version"] == 3 and Path(third["artifact"]).is_file()
    assert agent.api.delete(f"/api/ml/models/{third['model_id']}").status in (200, 409)
    rows = {v["version"]: v for v in agent.api.get("/api/ml/models/r/versions").body["versions"]}
    assert rows[3]["state"] == "retired" and not Path(third["artifact"]).exists()
    assert rows[1]["state"] == rows[2]["state"] == "ready" and Path(rows[2]["artifact"]).is_file()

    # Names that look like deploy ids are refused; bad bodies name their field.
    uuid_name = body("123e4567-e89b-12d3-a456-426614174000", 1)
    reply = agent.api.post("/api/ml/models", uuid_name)
    assert reply.status == 400 and "name" in reply.text and "deploy id" in reply.text, reply.text
    bad_bodies: list[tuple[str, Any, int, str]] = [
        ("rollout", {"version": 1, "canary_percent": 0}, 400, "canary_percent"),
        ("rollout", {"version": 1, "canary_percent": 101}, 400, "canary_percent"),
        ("rollout", {"version": 1, "duration": "1000d"}, 400, "duration"),
        ("rollout", {"version": 1, "duration": "soon"}, 400, "duration"),
        ("rollout", {"version": -1}, 400, "version"),
        ("rollout", {"version": 10**15}, 400, "version"),
        ("rollout", {"version": 1, "surprise": True}, 400, "surprise"),
        ("rollout", {"version": 1, "max_error_rate": 2}, 400, "max_error_rate"),
        ("rollout", {"version": 99}, 404, "no version 99"),
        ("rollout", {"version": 2}, 409, "default"),
        ("promote", {"version": "1; DROP TABLE"}, 400, "version"),
        ("promote", {"version": 42}, 404, "no version 42"),
        ("rollout/abort", None, 409, "no rollout"),
        ("versions", {"artifact": "x" * 5000}, 400, "artifact"),
    ]
    for route, payload, status, words in bad_bodies:
        reply = agent.api.post(f"/api/ml/models/r/{route}", payload)
        assert reply.status == status and words in reply.text, (route, payload, reply.text)
    assert agent.api.get("/api/ml/models/nope/versions").status == 404
    assert agent.api.post("/api/ml/models/nope/rollback").status == 404
    assert agent.api.get("/api/ml/models/..%2F..%2Fetc/versions").status == 404
    assert agent.api.post("/v2/models/r/versions/7/infer", {"inputs": []}).status in (400, 404)


def test_rollback_after_the_window_reloads_and_says_so(agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory({"serving": {"rollback_window": "1s"}})
    shutil.copy(MODEL, agent.workdir / "versioned_model.py")
    (agent.workdir / "models").mkdir()
    agent.start()
    v1 = deploy(agent, body("w", 2, serving={"replicas": 1}))
    wait_default(agent, "w", 1)
    deploy(agent, body("w", 3))
    wait_default(agent, "w", 2)
    # The window passes: v1 is let go of (its workers stop), with an event saying why.
    wait_until(lambda: agent.api.get(f"/api/ml/models/{v1}").body["serving"]["state"] == "stopped", 30,
               "v1 no longer served")
    wait_until(lambda: any("rollback window" in e["message"] for e in model(agent, "w")["events"]), 10, "the event")
    back = agent.api.post("/api/ml/models/w/rollback", timeout=120)
    assert back.status == 200, back.text
    assert back.body["reloaded"] is True and "rollback window" in back.body["message"], back.body
    assert back.body["default_version"] == 1
    assert infer(agent, "w", 1.0) == (200, ("1", 2.0))
