"""The task boundary, tried as an attacker would (issue 11): nothing a request sends reaches
a root process, each model and process task runs under a uid of its own in a private
namespace, and tasks cannot reach each other, the agent's state or its secrets.

Each test drives a real agent (root) with real tasks; the launch-path tests run on every
sandbox backend, the systemd harness included. The agents' work dirs are pytest's 0700 tmp
dirs: tasks reach them through their namespace, as a checkout under a 0700 home.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cnetd.config import UidRange
from tests.support.agent import REPO, AgentProcess
from tests.support.waiting import wait_until

PURE_MODEL = Path(__file__).with_name("support") / "pure_model.py"
RANGE = UidRange()

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the task boundary needs an agent running as root")

WHO_AM_I = """
import json, os
status = dict(line.split(':', 1) for line in open('/proc/self/status'))
print(json.dumps({'uid': os.getuid(), 'euid': os.geteuid(), 'gid': os.getgid(), 'groups': os.getgroups(),
                  'home': os.environ['HOME'], 'user': os.environ['USER'], 'cwd': os.getcwd(),
                  'no_new_privs': status['NoNewPrivs'].strip(), 'cap_eff': status['CapEff'].strip(),
                  'cap_bnd': status['CapBnd'].strip(), 'env': dict(os.environ)}))
"""


@pytest.fixture
def make_agent(agent_factory: Callable[..., AgentProcess], request: pytest.FixtureRequest) -> Callable[..., AgentProcess]:
    made = iter(range(1000))

    def make(backend: str = "none", name: str = "agent", config: dict[str, Any] | None = None, **kw: Any) -> AgentProcess:
        n = next(made)
        merged: dict[str, Any] = {"tasks": {"sandbox": backend, "stop_grace": "2s"}, **(config or {})}
        merged["tasks"] = {"sandbox": backend, "stop_grace": "2s", **(config or {}).get("tasks", {})}
        if backend == "cgroup":
            merged["tasks"]["cgroup_group"] = f"{request.getfixturevalue('cgroup_group')}-tb{n}"
        if backend == "systemd":
            ns = request.getfixturevalue("systemd_ns")
            merged["tasks"]["slice"] = f"cnet-tb{n}.slice"
            kw = {"prefix": ns.prefix(cwd=Path(request.getfixturevalue("tmp_path")) / name), "inner_pid": ns.inner_pid, **kw}
        return agent_factory(merged, name, **kw)

    return make


def run_task(agent: AgentProcess, code: str, **extra: Any) -> dict[str, Any]:
    reply = agent.api.post("/api/tasks", {"name": "probe", "command": "python3", "args": ["-c", code], **extra})
    assert reply.status == 201, reply.text
    return agent.wait_done(reply.body["id"], timeout=60)


def logs(agent: AgentProcess, task_id: str) -> list[str]:
    return agent.api.get(f"/api/tasks/{task_id}/logs").body


def identities(agent: AgentProcess) -> dict[str, int]:
    conn = sqlite3.connect(agent.state_dir / "cnet.db")
    try:
        return dict(conn.execute("SELECT owner, uid FROM identities").fetchall())
    finally:
        conn.close()


BACKENDS = ["none", "cgroup", pytest.param("systemd", marks=pytest.mark.systemd)]


# ---- who a task runs as ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_task_runs_under_a_uid_of_its_own_without_a_way_back(make_agent: Callable[..., AgentProcess], backend: str) -> None:
    agent = make_agent(backend).start()
    health = agent.api.get("/api/health").body["sandbox"]
    assert health["task_user"]["mode"] == "dynamic" and health["task_user"]["uid_range"] == [RANGE.start, RANGE.end]
    assert health["isolation"]["namespaces"] is True, health["isolation"]

    first, second = run_task(agent, WHO_AM_I), run_task(agent, WHO_AM_I)
    for done in (first, second):
        assert done["status"] == "completed", (done, logs(agent, done["id"]))
        who = done["result"]
        uid = who["uid"]
        assert RANGE.start <= uid <= RANGE.end and done["uid"] == uid
        assert (who["euid"], who["gid"], who["groups"]) == (uid, uid, [uid])
        assert who["no_new_privs"] == "1" and int(who["cap_eff"], 16) == 0 and int(who["cap_bnd"], 16) == 0
        assert done["run_as"] == who["user"] == f"cnet-{uid - RANGE.start}"
        assert who["home"] == str(agent.state_dir / "home" / str(uid))
        events = agent.api.get(f"/api/tasks/{done['id']}/events").body
        assert any(e["type"] == "started" and f"uid {uid})" in e["message"] for e in events), events
    assert first["uid"] != second["uid"], "two process tasks shared a uid"
    # A process task gives its uid back when it ends; its HOME goes with it.
    owners = identities(agent)
    assert f"task:{first['id']}" not in owners and f"task:{second['id']}" not in owners
    assert not (agent.state_dir / "home" / str(first["uid"])).exists()

    # The exit shim stays root: it records the real exit code, and a stop still ends the task.
    failed = run_task(agent, "import sys; sys.exit(7)")
    assert failed["status"] == "failed" and failed["exit_code"] == 7
    reply = agent.api.post("/api/tasks", {"name": "sleeper", "command": "python3",
                                          "args": ["-c", "import time; print('up', flush=True); time.sleep(600)"]})
    sleeper = agent.wait_status(reply.body["id"], {"running"})
    wait_until(lambda: "up" in logs(agent, sleeper["id"]), 30, "the sleeper to print")
    assert agent.api.delete(f"/api/tasks/{sleeper['id']}").status == 200
    assert agent.wait_done(sleeper["id"], timeout=30)["status"] == "stopped"


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_request_env_never_reaches_a_root_process(make_agent: Callable[..., AgentProcess], backend: str,
                                                       tmp_path: Path) -> None:
    """The review's repro: a planted `mv` first on the request's PATH ran as root in the exit
    shim, and LD_PRELOAD loaded into three root processes. Now the root half runs with a
    fixed environment: the planted mv never runs as root, and the preload is tried by the
    task's program alone (the dynamic loader says so once per process that had it)."""
    planted = tmp_path / "planted"
    planted.mkdir()
    records = planted / "records"
    records.mkdir()
    records.chmod(0o1777)
    for name in ("mv", "printf", "sh"):
        tool = planted / name
        tool.write_text(f"#!/bin/sh\nid -u > {records}/{name}-$$\nexec /usr/bin/{name} \"$@\"\n")
        tool.chmod(0o755)
    planted.chmod(0o755)
    tmp_path.chmod(0o755)  # so that a task could run the planted tools if anything offered them
    agent = make_agent(backend).start()
    probe = "/nonexistent/cnet-probe-preload.so"
    reply = agent.api.post("/api/tasks", {"name": "env-attack", "command": "/bin/true",
                                          "env": {"PATH": f"{planted}:/usr/bin:/bin", "LD_PRELOAD": probe}})
    assert reply.status == 201, reply.text
    done = agent.wait_done(reply.body["id"])
    assert done["status"] == "completed", (done, logs(agent, done["id"]))
    assert done["program"] == "/bin/true" or done["program"] == "/usr/bin/true"
    ran_as = {p.name: p.read_text().strip() for p in records.iterdir()}
    assert "0" not in ran_as.values(), f"a planted tool ran as root: {ran_as}"
    preload_lines = [line for line in logs(agent, done["id"]) if "cnet-probe-preload.so" in line]
    assert len(preload_lines) == 1, f"LD_PRELOAD reached more than the task's own program: {preload_lines}"


def test_an_allow_list_is_checked_against_what_really_runs(make_agent: Callable[..., AgentProcess], tmp_path: Path) -> None:
    """`sleep` resolved through the request's PATH once ran /usr/bin/id. Now the command is
    resolved at submit with the agent's PATH, stored, and exec'd exactly; with an allow-list
    a request may not set PATH, LD_* or PYTHON* at all."""
    fake = tmp_path / "evil"
    fake.mkdir()
    (fake / "sleep").write_text("#!/bin/sh\nexec /usr/bin/id\n")
    (fake / "sleep").chmod(0o755)
    agent = make_agent(config={"tasks": {"allowed_commands": ["sleep"]}}).start()
    for variable in ("PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONSTARTUP"):
        reply = agent.api.post("/api/tasks", {"name": "x", "command": "sleep", "args": ["0"], "env": {variable: str(fake)}})
        assert reply.status == 400 and reply.body["details"]["field"] == f"env.{variable}", reply.text
    for command in ("id", str(fake / "sleep")):
        reply = agent.api.post("/api/tasks", {"name": "x", "command": command})
        assert reply.status == 400 and reply.body["details"]["field"] == "command", reply.text
    reply = agent.api.post("/api/tasks", {"name": "ok", "command": "sleep", "args": ["0"]})
    assert reply.status == 201, reply.text
    done = agent.wait_done(reply.body["id"])
    assert done["status"] == "completed" and os.path.realpath(done["program"]) == os.path.realpath(shutil.which("sleep") or "")
    assert agent.api.get("/api/tasks").body and len(agent.api.get("/api/tasks").body) == 1


def test_tasks_do_not_inherit_the_agents_environment(make_agent: Callable[..., AgentProcess]) -> None:
    token = "agent-admin-token-0123456789abcdef"
    agent = make_agent(env={"CNET_AUTH_TOKEN": token, "AGENT_ONLY_SECRET": "do-not-leak", "LC_ALL": "C.UTF-8"})
    agent.api.token = token
    agent.start()
    done = run_task(agent, WHO_AM_I, env={"MINE": "kept"})
    assert done["status"] == "completed", done
    env = done["result"]["env"]
    text = json.dumps(env)
    assert token not in text and "do-not-leak" not in text and not any(k.startswith("CNET_") for k in env), env
    assert env["MINE"] == "kept" and env["LC_ALL"] == "C.UTF-8" and env["TMPDIR"].endswith(done["id"])


# ---- paths root acts on ---------------------------------------------------------------------


def test_root_never_creates_or_chowns_along_a_path_a_request_names(make_agent: Callable[..., AgentProcess],
                                                                   tmp_path: Path) -> None:
    agent = make_agent(config={"tasks": {"max_concurrent": 1}}).start()
    scripts = agent.workdir / "scripts"
    scripts.mkdir()
    shutil.copy(PURE_MODEL, scripts / "pure_model.py")
    body = {"name": "m", "command": "python3", "script_path": "scripts/pure_model.py"}

    # Model files go under the model roots only: not into code the agent imports.
    for model_path in ("yaml/__init__.py", "cnetd/x.py", "../x.json", "/etc/cron.d/x"):
        reply = agent.api.post("/api/ml/models", {**body, "model_path": model_path})
        assert reply.status == 400 and "outside the model roots" in reply.body["error"], reply.text
    outside = tmp_path / "outside"
    outside.mkdir()
    (agent.workdir / "models").mkdir(exist_ok=True)
    (agent.workdir / "models" / "link").symlink_to(outside)
    reply = agent.api.post("/api/ml/models", {**body, "model_path": "models/link/m.json"})
    assert reply.status == 400 and "symlink" in reply.body["error"], reply.text

    # The swap after the submit: the deploy waits behind a sleeper, then its model dir is
    # replaced by a symlink to a directory outside; the start refuses to follow it.
    sleeper = agent.api.post("/api/tasks", {"name": "slot", "command": "sleep", "args": ["600"]}).body
    agent.wait_status(sleeper["id"], {"running"})
    reply = agent.api.post("/api/ml/models", {**body, "name": "racer", "model_path": "models/racer/sub/m.json"})
    assert reply.status == 201, reply.text
    (agent.workdir / "models" / "racer").symlink_to(outside)
    assert agent.api.delete(f"/api/tasks/{sleeper['id']}").status == 200
    racer = agent.wait_done(reply.body["id"])
    assert racer["status"] == "failed" and "symlink" in racer["reason"], racer
    assert list(outside.iterdir()) == [] and outside.stat().st_uid == 0
    assert agent.api.get("/api/tasks").body  # the agent is fine


def test_the_agent_does_not_import_from_its_working_directory(agent_factory: Callable[..., AgentProcess]) -> None:
    """model_path yaml/__init__.py in the agent's cwd was imported as root at the next start
    of `python -m cnetd`. bin/cnet-agent runs python -I: the cwd is not on sys.path."""
    agent = agent_factory(command=[str(REPO / "bin" / "cnet-agent")])
    marker = agent.workdir / "imported-as-root"
    (agent.workdir / "yaml").mkdir()
    (agent.workdir / "yaml" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\nraise ImportError\n")
    agent.start()
    assert not marker.exists()


# ---- tasks cannot reach each other -----------------------------------------------------------


CROSS_PROBE = """
import json, os, socket, sys
target = json.loads(sys.argv[1])
def attempt(fn):
    try:
        fn()
        return 'allowed'
    except OSError as exc:
        return type(exc).__name__
def connect(path):
    s = socket.socket(socket.AF_UNIX); s.connect(path)
out = {
    'environ': attempt(lambda: open('/proc/%d/environ' % target['pid'], 'rb').read()),
    'kill': attempt(lambda: os.kill(target['pid'], 0)),
    'other_tmp': attempt(lambda: open(target['tmp'] + '/secret').read()),
    'other_home': attempt(lambda: os.listdir(target['home'])),
    'tmp_listing': sorted(os.listdir('/tmp')),
    'state_db': attempt(lambda: open(target['state'] + '/cnet.db', 'rb').read()),
    'state_logs': attempt(lambda: os.listdir(target['state'] + '/logs')),
    'config': attempt(lambda: open(target['config']).read()),
    'write_code': attempt(lambda: open(target['code'] + '/planted.py', 'w').write('x')),
    'var_tmp': attempt(lambda: open('/var/tmp/x', 'w').write('x')),
    'shm': attempt(lambda: open('/dev/shm/x', 'w').write('x')),
    'procs': sorted(int(p) for p in os.listdir('/proc') if p.isdigit()),
}
for key in ('model_dir', 'model_file', 'socket'):
    if key in target:
        out[key] = attempt({'model_dir': lambda: open(target['model_dir'] + '/planted', 'w').write('x'),
                            'model_file': lambda: open(target['model_file']).read(),
                            'socket': lambda: connect(target['socket'])}[key])
print(json.dumps(out))
"""

SECRET_SLEEPER = """
import os, time
open(os.path.join(os.environ['TMPDIR'], 'secret'), 'w').write('s3cret')
open(os.path.join(os.environ['HOME'], 'secret'), 'w').write('s3cret')
print('pid', os.getpid(), flush=True)
time.sleep(600)
"""


def _pid_from_log(agent: AgentProcess, task_id: str) -> int:
    line = wait_until(lambda: next((ln for ln in logs(agent, task_id) if ln.startswith("pid ")), None), 30, "the pid line")
    return int(line.split()[1])


def test_process_tasks_cannot_reach_each_other_or_the_agent(make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent().start()
    victim = agent.api.post("/api/tasks", {"name": "victim", "command": "python3", "args": ["-c", SECRET_SLEEPER],
                                           "env": {"DB_PASSWORD": "victim-secret"}}).body
    victim = agent.wait_status(victim["id"], {"running"})
    pid = _pid_from_log(agent, victim["id"])
    target = {"pid": pid, "tmp": str(agent.state_dir / "tmp" / victim["id"]),
              "home": str(agent.state_dir / "home" / str(victim["uid"])), "state": str(agent.state_dir),
              "config": str(agent.config_path), "code": str(agent.workdir)}
    done = agent.api.post("/api/tasks", {"name": "attacker", "command": "python3",
                                         "args": ["-c", CROSS_PROBE, json.dumps(target)]}).body
    done = agent.wait_done(done["id"])
    assert done["status"] == "completed", logs(agent, done["id"])
    seen = done["result"]
    for key in ("environ", "kill", "other_tmp", "other_home", "state_db", "state_logs", "config", "write_code"):
        assert seen[key] != "allowed", (key, seen)
    assert seen["kill"] in ("PermissionError", "ProcessLookupError") and pid not in seen["procs"], seen
    assert "secret" not in seen["tmp_listing"]
    assert seen["var_tmp"] == "allowed" and seen["shm"] == "allowed"  # its own private ones
    assert agent.api.get(f"/api/tasks/{victim['id']}").body["status"] == "running"
    assert agent.api.delete(f"/api/tasks/{victim['id']}").status == 200


def test_models_cannot_reach_each_others_files_or_workers(make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent().start()
    scripts = agent.workdir / "scripts"
    scripts.mkdir()
    shutil.copy(PURE_MODEL, scripts / "pure_model.py")
    (scripts / "probe.py").write_text(CROSS_PROBE)

    def deploy(name: str, model_path: str, **extra: Any) -> dict[str, Any]:
        reply = agent.api.post("/api/ml/models", {"name": name, "command": "python3", "script_path": "scripts/pure_model.py",
                                                  "model_path": model_path, **extra})
        assert reply.status == 201, reply.text
        return agent.wait_done(reply.body["id"])

    victim = deploy("victim", "models/victim/m.json")
    assert victim["status"] == "completed", logs(agent, victim["id"])
    shared = deploy("shared-root", "models/in-root.json")  # straight in the (shared) model root
    assert shared["status"] == "completed", logs(agent, shared["id"])
    model_dir = agent.workdir / "models" / "victim"
    assert model_dir.stat().st_uid == victim["uid"] and stat.S_IMODE(model_dir.stat().st_mode) == 0o750
    assert stat.S_IMODE((agent.workdir / "models").stat().st_mode) == 0o1733
    assert (agent.workdir / "models" / "in-root.json").stat().st_uid == shared["uid"] != victim["uid"]
    serve = agent.api.post(f"/api/ml/models/{victim['id']}/serve?wait=true", {"loader": "script"})
    assert serve.status == 200, serve.text
    (worker,) = serve.body["serving"]["workers"]
    worker_task = agent.api.get(f"/api/tasks/{worker['task_id']}").body
    assert worker_task["uid"] == victim["uid"]
    sock = next(a for a in worker_task["args"] if a.endswith(".sock"))
    sock_dir = Path(sock).parent
    assert (sock_dir.stat().st_uid, sock_dir.stat().st_gid, stat.S_IMODE(sock_dir.stat().st_mode)) == (0, victim["uid"], 0o730)

    target = {"pid": 1, "tmp": "/nonexistent", "home": str(agent.state_dir / "home" / str(victim["uid"])),
              "state": str(agent.state_dir), "config": str(agent.config_path), "code": str(agent.workdir),
              "model_dir": str(model_dir), "model_file": str(model_dir / "m.json"), "socket": sock}
    reply = agent.api.post("/api/ml/models", {
        "name": "attacker", "command": "python3", "script_path": "scripts/probe.py", "model_path": "models/attacker/m.json",
        "args": ["scripts/probe.py", json.dumps(target)],
    })
    assert reply.status == 201, reply.text
    attacker = agent.wait_done(reply.body["id"])
    assert attacker["status"] == "completed", logs(agent, attacker["id"])
    seen = attacker["result"]
    for key in ("model_dir", "model_file", "socket", "other_home", "state_db"):
        assert seen[key] != "allowed", (key, seen)
    # Another model's file in the shared root: neither readable nor replaceable.
    reply = agent.api.post("/api/ml/models", {"name": "squatter", "command": "python3",
                                              "script_path": "scripts/pure_model.py", "model_path": "models/in-root.json"})
    assert reply.status == 400, reply.text
    assert reply.body["details"]["field"] == "model_path" and "belongs to uid" in reply.body["error"], reply.text
    # The same model deployed again (same name) keeps its uid and may retrain its own file.
    again = deploy("shared-root", "models/in-root.json")
    assert again["status"] == "completed" and again["uid"] == shared["uid"]
    inference = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
    answer = agent.api.post("/v2/models/victim/infer", inference)
    assert answer.status == 200 and answer.body["outputs"][0]["data"] == pytest.approx([5.0]), answer.text


def test_a_worker_socket_is_trusted_only_when_its_peer_is_the_worker(tmp_path: Path) -> None:
    """The agent checks SO_PEERCRED before it speaks to a worker: whatever listens at the
    path must run as the worker task's uid, inside its sandbox."""
    import asyncio

    from cnetd.ml.serving.client import ProtocolError, WorkerClient

    path = tmp_path / "w.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    seen: list[tuple[int, int]] = []

    def refuse(pid: int, uid: int) -> str | None:
        seen.append((pid, uid))
        return f"it runs as uid {uid}, the task as uid 12345"

    async def connect() -> None:
        await WorkerClient.connect(str(path), "impostor", refuse)

    with pytest.raises(ProtocolError, match="not the worker"):
        asyncio.run(connect())
    assert seen == [(os.getpid(), 0)]
    listener.close()


def test_membership_of_a_pid_in_a_task(tmp_path: Path) -> None:
    from cnetd.supervisor.base import Handle
    from cnetd.supervisor.membership import handle_owns_pid

    leader = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        handle = Handle(backend="none", pid=leader.pid, pid_start=0, exit_path=str(tmp_path / "x"))
        assert handle_owns_pid(handle, leader.pid)
        assert not handle_owns_pid(handle, os.getpid())
    finally:
        leader.kill()
        leader.wait()


# ---- /tmp, disk_limit, and a checkout under a 0700 home --------------------------------------------


def test_tmp_is_private_and_counts_against_disk_limit(make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent().start()
    marker = Path("/tmp") / f"cnet-boundary-{os.getpid()}"
    done = run_task(agent, f"open({str(marker)!r}, 'w').write('x'); import os; print(os.listdir('/tmp'))")
    assert done["status"] == "completed", logs(agent, done["id"])
    assert not marker.exists(), "a task's /tmp is the host's"
    for directory in ("/tmp", "/var/tmp"):
        writer = ("import time\n"
                  f"with open('{directory}/fill', 'wb') as f:\n"
                  "    for _ in range(40):\n"
                  "        f.write(b'x' * 1_000_000); f.flush(); time.sleep(0.05)\n"
                  "time.sleep(600)")
        hog = run_task(agent, writer, resources={"disk_limit": 3_000_000})
        assert hog["status"] == "failed" and hog["reason"].startswith("disk limit exceeded"), (directory, hog)


def test_a_checkout_under_a_0700_home_runs_the_guides_model(tmp_path: Path, agent_factory: Callable[..., AgentProcess]) -> None:
    """A clone in root's 0700 home: tasks run under their own uids and still reach the
    checkout (the guide's linear regression trains, predicts and serves), while the rest of
    the home stays out of their sight."""
    home = Path("/var/tmp") / f"cnet-home-{os.getpid()}"
    home.mkdir(mode=0o700)
    try:
        checkout = home / "cnet"
        (home / ".ssh").mkdir()
        (home / ".ssh" / "id_rsa").write_text("private key\n")
        (home / ".ssh" / "id_rsa").chmod(0o644)  # readable, were its directory not in the way
        agent = agent_factory({"ml": {"allowed_roots": []}}, name="cnet", root=home)
        shutil.rmtree(agent.workdir / "examples", ignore_errors=True)
        (agent.workdir / "examples").unlink(missing_ok=True)
        shutil.copytree(REPO / "examples", checkout / "examples")
        agent.start()
        from tests.test_ml_api import LINEAR_BODY

        reply = agent.api.post("/api/ml/models", LINEAR_BODY)
        assert reply.status == 201, reply.text
        model = agent.wait_done(reply.body["id"], timeout=180)
        assert model["status"] == "completed", logs(agent, model["id"])
        assert model["run_as"].startswith("cnet-") and RANGE.start <= model["uid"] <= RANGE.end
        assert (checkout / "models" / "linear_regression_model.joblib").stat().st_uid == model["uid"]
        prediction = agent.api.post(f"/api/ml/models/{model['id']}/predict?wait=true", {"input_data": 5.5})
        assert prediction.status == 200 and prediction.body["prediction"] == pytest.approx(14.0, abs=0.5), prediction.text
        peek = run_task(agent, f"import os; print(os.listdir({str(home)!r}))")
        assert peek["status"] == "completed" and ".ssh" not in json.dumps(logs(agent, peek["id"])), logs(agent, peek["id"])
    finally:
        shutil.rmtree(home, ignore_errors=True)


# ---- configured users, and what a task cannot reach --------------------------------------------


def test_one_configured_user_still_works(make_agent: Callable[..., AgentProcess]) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    agent = make_agent(config={"tasks": {"run_as": "nobody"}}).start()
    assert agent.api.get("/api/health").body["sandbox"]["task_user"]["mode"] == "static"
    done = run_task(agent, WHO_AM_I)
    assert done["status"] == "completed", logs(agent, done["id"])
    assert done["result"]["uid"] == nobody.pw_uid and done["run_as"] == "nobody"


def test_what_a_task_cannot_reach_is_a_400_naming_the_field(make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent().start()
    private = agent.workdir / "private"
    private.mkdir(mode=0o700)
    shutil.copy(PURE_MODEL, private / "model.py")
    tool = private / "tool.sh"
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    public = agent.workdir / "public"
    public.mkdir(mode=0o755)
    shutil.copy(PURE_MODEL, public / "model.py")
    root_dir = agent.workdir / "models" / "roots-own"
    root_dir.mkdir(parents=True)
    cases = [
        ("/api/ml/models", {"name": "a", "command": "python3", "script_path": "private/model.py",
                            "model_path": "models/a.json"}, "script_path", "cannot"),
        ("/api/ml/models", {"name": "b", "command": "python3", "script_path": "public/model.py",
                            "model_path": "models/roots-own/b.json"}, "model_path", "belongs to root"),
        ("/api/tasks", {"name": "c", "command": str(tool)}, "command", "cannot"),
        ("/api/tasks", {"name": "d", "command": "python3", "args": ["-c", "pass"], "working_dir": "private"},
         "working_dir", "cannot"),
    ]
    for path, body, field, why in cases:
        reply = agent.api.post(path, body)
        assert reply.status == 400 and reply.body["details"]["field"] == field, (field, reply.text)
        assert (why in reply.body["error"] and " is drwx" in reply.body["error"]) or why == "belongs to root", reply.body
    assert agent.api.get("/api/tasks").body == []  # nothing half-created


def test_a_run_as_user_that_does_not_exist_stops_the_agent_at_start(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("tasks:\n  run_as: no-such-user-cnet\n")
    proc = subprocess.run([sys.executable, "-I", "-m", "cnetd", "-config", str(config)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"cnet-agent: {config}: tasks.run_as: no such user 'no-such-user-cnet'"
    checked = subprocess.run([sys.executable, "-I", "-m", "cnetd", "check-config", "-config", str(config)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 2 and "no such user" in checked.stderr


def test_resolving_who_tasks_run_as() -> None:
    import pwd

    from cnetd.config import default_config
    from cnetd.security.identity import Identities
    from cnetd.security.privilege import TaskUserError, resolve_task_user, task_uid_predicate

    nobody = pwd.getpwnam("nobody")
    assert resolve_task_user("nobody", euid=0).name == "nobody"  # type: ignore[union-attr]
    assert resolve_task_user("root", euid=0) is None
    assert resolve_task_user("0", euid=0) is None
    by_id = resolve_task_user(f"{nobody.pw_uid}:{nobody.pw_gid}", euid=0)
    assert by_id is not None and (by_id.name, by_id.uid, by_id.groups) == ("nobody", nobody.pw_uid, (nobody.pw_gid,))
    # Not root: tasks run as the agent's user; asking for another one is an error, not ignored.
    assert resolve_task_user(None, euid=nobody.pw_uid) is None
    assert resolve_task_user("dynamic", euid=nobody.pw_uid) is None
    with pytest.raises(TaskUserError, match="needs the agent to run as root"):
        resolve_task_user("root", euid=nobody.pw_uid)
    with pytest.raises(TaskUserError, match="no such group"):
        resolve_task_user("nobody:no-such-group-cnet", euid=0)

    dynamic = default_config("/tmp")
    assert Identities.from_config(dynamic, euid=0).mode == "dynamic"
    assert Identities.from_config(dynamic, euid=1000).mode == "agent"
    static = default_config("/tmp", tasks={"run_as": "nobody"})
    assert Identities.from_config(static, euid=0).mode == "static"
    as_root = default_config("/tmp", tasks={"run_as": "root"})
    assert Identities.from_config(as_root, euid=0).mode == "agent"
    is_task = task_uid_predicate(dynamic, euid=0)
    assert is_task(RANGE.start) and is_task(RANGE.end) and not is_task(0) and not is_task(nobody.pw_uid)
    assert task_uid_predicate(static, euid=0)(nobody.pw_uid) and not task_uid_predicate(as_root, euid=0)(0)


def test_uids_are_handed_out_round_the_range_and_never_twice(tmp_path: Path) -> None:
    from cnetd.store import identities as iq
    from cnetd.store.db import apply_migrations

    conn = sqlite3.connect(tmp_path / "ids.db", isolation_level=None)
    apply_migrations(conn)
    start, end = RANGE.start, RANGE.start + 2
    a = iq.allocate(conn, "task:a", start, end, "now")
    b = iq.allocate(conn, "model:b", start, end, "now")
    assert (a, b) == (start, start + 1) and iq.allocate(conn, "model:b", start, end, "now") == b
    c = iq.allocate(conn, "task:c", start, end, "now")
    with pytest.raises(iq.NoFreeUid):
        iq.allocate(conn, "task:d", start, end, "now")
    assert iq.release(conn, "task:a") == a
    # The freed uid comes back only once the rest of the range has been used.
    assert iq.allocate(conn, "task:d", start, end, "now") == a and c == end


def test_a_task_written_by_an_older_agent_never_runs_as_root(make_agent: Callable[..., AgentProcess]) -> None:
    """A pending task from before uids existed (its uid is NULL) gets one when it starts."""
    agent = make_agent(config={"tasks": {"max_concurrent": 1}}).start()
    gate = agent.api.post("/api/tasks", {"name": "gate", "command": "sleep", "args": ["600"]}).body
    agent.wait_status(gate["id"], {"running"})
    queued = agent.api.post("/api/tasks", {"name": "old", "command": "python3", "args": ["-c", WHO_AM_I]}).body
    agent.stop()
    conn = sqlite3.connect(agent.state_dir / "cnet.db")
    conn.execute("UPDATE tasks SET uid = NULL WHERE id = ?", (queued["id"],))
    conn.execute("DELETE FROM identities WHERE owner = ?", (f"task:{queued['id']}",))
    conn.commit()
    conn.close()
    agent.start()
    assert agent.api.delete(f"/api/tasks/{gate['id']}").status == 200
    done = agent.wait_done(queued["id"])
    assert done["status"] == "completed", logs(agent, done["id"])
    assert RANGE.start <= done["result"]["uid"] <= RANGE.end and done["uid"] == done["result"]["uid"]


def test_the_view_a_task_is_judged_by_matches_its_namespace(tmp_path: Path) -> None:
    """The submit-time checks see what enter.py will set up: a checkout under a 0700 home is
    reachable through its veil, the state dir and the host's /tmp are not, masked files are not."""
    from cnetd.security.privilege import EXECUTE, READ, WRITE, TaskUser
    from cnetd.security.taskview import ViewBuilder

    home = tmp_path / "home"
    checkout = home / "cnet"
    (checkout / "private").mkdir(parents=True)
    home.chmod(0o700)
    checkout.chmod(0o755)
    (checkout / "private").chmod(0o700)
    (checkout / "code.py").write_text("x")
    (checkout / "config.yaml").write_text("secret")
    state = checkout / "state"
    state.mkdir()
    user = TaskUser("t", RANGE.start, RANGE.start, (RANGE.start,), "/nonexistent")
    view = (ViewBuilder(user, state, state / "inaccessible").readable([checkout]).writable([])
            .masked([checkout / "config.yaml"]).build(None))
    ops = view.ops()
    veils = [Path(str(o["path"])) for o in ops if o["op"] == "veil"]
    above = [v for v in veils if v in checkout.parents]  # the outermost directory a stranger cannot enter
    assert ops[0] == {"op": "readonly"} and len(above) == 1 and (above[0] == home or above[0] in home.parents), veils
    assert state in veils
    assert ops.index({"op": "veil", "path": str(above[0])}) < [o.get("target") for o in ops].index(str(checkout))
    assert view.access_problem(checkout / "code.py", READ) is None
    assert "read-only" in (view.access_problem(checkout, WRITE) or "")
    assert "cannot reach" in (view.access_problem(checkout / "private" / "x", READ) or "")
    for hidden in (state / "cnet.db", checkout / "config.yaml", home / ".ssh", Path("/tmp/anything")):
        assert "hidden from tasks" in (view.access_problem(hidden, EXECUTE) or ""), hidden
