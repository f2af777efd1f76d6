"""Least privilege: an agent running as root starts every task as tasks.run_as (default
`nobody`), with no way back to root, in every sandbox backend; what such a task cannot
reach is a 400 naming the field at submit, not a PermissionError in its log.

Everything here lives in a world-traversable directory under /var/tmp: pytest's own tmp
dirs are 0700 root, which an unprivileged task could not enter. Tasks use the system
python (/usr/bin/python3) and a standard-library model script, so that they do not
depend on where this checkout (and its venv) lies.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cnetd.security.privilege import TaskUserError, resolve_task_user
from tests.support.agent import AgentProcess
from tests.support.waiting import wait_until

SYSTEM_PYTHON = "/usr/bin/python3"
PURE_MODEL = Path(__file__).with_name("support") / "pure_model.py"
NOBODY = pwd.getpwnam("nobody")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs an agent running as root"),
    pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason=f"{SYSTEM_PYTHON} is needed for tasks as nobody"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is needed"),
]

WHO_AM_I = """
import json, os
status = dict(line.split(':', 1) for line in open('/proc/self/status'))
print(json.dumps({'uid': os.getuid(), 'euid': os.geteuid(), 'gid': os.getgid(), 'groups': os.getgroups(),
                  'home': os.environ['HOME'], 'user': os.environ['USER'], 'cwd': os.getcwd(),
                  'no_new_privs': status['NoNewPrivs'].strip(), 'cap_eff': status['CapEff'].strip()}))
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory that any user may enter (unlike pytest's tmp_path)."""
    path = Path(tempfile.mkdtemp(prefix="cnet-lp-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_agent(shared_dir: Path, agent_factory: Callable[..., AgentProcess],
               request: pytest.FixtureRequest) -> Callable[..., AgentProcess]:
    made = iter(range(1000))

    def make(backend: str = "none", name: str = "agent", **tasks: Any) -> AgentProcess:
        n = next(made)
        config: dict[str, Any] = {"tasks": {"sandbox": backend, "stop_grace": "2s", "run_as": None, **tasks},
                                  "ml": {"allowed_roots": [str(shared_dir / name)]}}
        kw: dict[str, Any] = {}
        if backend == "cgroup":
            config["tasks"]["cgroup_group"] = f"{request.getfixturevalue('cgroup_group')}-lp{n}"
        if backend == "systemd":
            ns = request.getfixturevalue("systemd_ns")
            config["tasks"]["slice"] = f"cnet-lp{n}.slice"
            kw = {"prefix": ns.prefix(cwd=shared_dir / name), "inner_pid": ns.inner_pid}
        agent = agent_factory(config, name, root=shared_dir, **kw)
        agent.workdir.chmod(0o755)
        return agent

    return make


def run_task(agent: AgentProcess, code: str, **extra: Any) -> dict[str, Any]:
    reply = agent.api.post("/api/tasks", {"name": "probe", "command": SYSTEM_PYTHON, "args": ["-c", code], **extra})
    assert reply.status == 201, reply.text
    return agent.wait_done(reply.body["id"], timeout=60)


@pytest.mark.parametrize("backend", ["none", "cgroup", pytest.param("systemd", marks=pytest.mark.systemd)])
def test_tasks_run_as_nobody_without_a_way_back(make_agent: Callable[..., AgentProcess], backend: str) -> None:
    agent = make_agent(backend).start()
    assert agent.api.get("/api/health").body["sandbox"]["task_user"] == {
        "name": "nobody", "uid": NOBODY.pw_uid, "gid": NOBODY.pw_gid,
    }

    done = run_task(agent, WHO_AM_I)
    assert done["status"] == "completed", done
    assert done["run_as"] == "nobody"
    events = agent.api.get(f"/api/tasks/{done['id']}/events").body
    assert any(e["type"] == "started" and e["message"].endswith("as nobody)") for e in events), events
    who = done["result"]
    assert (who["uid"], who["euid"], who["gid"]) == (NOBODY.pw_uid, NOBODY.pw_uid, NOBODY.pw_gid)
    assert set(who["groups"]) <= set(os.getgrouplist("nobody", NOBODY.pw_gid))
    assert who["user"] == "nobody" and who["cwd"] == str(agent.workdir)
    assert who["no_new_privs"] == "1" and int(who["cap_eff"], 16) == 0
    # nobody's passwd home (/nonexistent) is not usable: it gets a private one in the state dir.
    home = Path(who["home"])
    assert home == agent.state_dir / "home" / "nobody"
    assert home.stat().st_uid == NOBODY.pw_uid and stat.S_IMODE(home.stat().st_mode) == 0o700

    # The shim stays root: it records the real exit code, and a stop still ends the task.
    failed = run_task(agent, "import sys; sys.exit(7)")
    assert failed["status"] == "failed" and failed["exit_code"] == 7
    reply = agent.api.post("/api/tasks", {"name": "sleeper", "command": SYSTEM_PYTHON,
                                          "args": ["-c", "import time; print('up', flush=True); time.sleep(600)"]})
    sleeper = agent.wait_status(reply.body["id"], {"running"})
    wait_until(lambda: "up" in agent.api.get(f"/api/tasks/{sleeper['id']}/logs").text, 30, "the sleeper to print")
    assert agent.api.delete(f"/api/tasks/{sleeper['id']}").status == 200
    assert agent.wait_done(sleeper["id"], timeout=30)["status"] == "stopped"


def test_a_task_cannot_read_the_agents_state_or_write_root_files(make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent().start()
    secret = run_task(agent, "print('first task')", env={"API_TOKEN": "s3cret-value-0123456789"})
    root_file = agent.workdir / "root-owned.txt"
    root_file.write_text("root's\n")
    root_file.chmod(0o644)
    probe = f"""
import json
def attempt(fn):
    try:
        fn()
        return 'allowed'
    except PermissionError:
        return 'denied'
state = {str(agent.state_dir)!r}
print(json.dumps({{
    'db': attempt(lambda: open(state + '/cnet.db', 'rb').read()),
    'wal': attempt(lambda: open(state + '/cnet.db-wal', 'rb').read()),
    'other_log': attempt(lambda: open(state + '/logs/{secret['id']}.log').read()),
    'list_state': attempt(lambda: __import__('os').listdir(state)),
    'root_file': attempt(lambda: open({str(root_file)!r}, 'a').write('x')),
}}))
"""
    done = run_task(agent, probe)
    assert done["status"] == "completed", done
    assert done["result"] == {"db": "denied", "wal": "denied", "other_log": "denied", "list_state": "denied",
                              "root_file": "denied"}
    assert root_file.read_text() == "root's\n"


def test_a_model_trains_predicts_and_serves_as_nobody(make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent().start()
    scripts = agent.workdir / "scripts"
    scripts.mkdir(mode=0o755)
    shutil.copy(PURE_MODEL, scripts / "pure_model.py")
    (scripts / "pure_model.py").chmod(0o644)
    reply = agent.api.post("/api/ml/models", {
        "name": "pure", "model_type": "linear_regression", "command": SYSTEM_PYTHON,
        "script_path": "scripts/pure_model.py", "model_path": "models/nested/pure.json",
    })
    assert reply.status == 201, reply.text
    trained = agent.wait_done(reply.body["id"])
    assert trained["status"] == "completed", agent.api.get(f"/api/tasks/{reply.body['id']}/logs").text
    assert trained["result"]["uid"] == NOBODY.pw_uid
    # The agent made the missing model dirs for the task user; the model file is the task's.
    for path in (agent.workdir / "models", agent.workdir / "models" / "nested", agent.workdir / "models/nested/pure.json"):
        assert path.stat().st_uid == NOBODY.pw_uid, path

    prediction = agent.api.post(f"/api/ml/models/{trained['id']}/predict?wait=true", {"input_data": 5.5})
    assert prediction.status == 200, prediction.text
    assert prediction.body["result"]["prediction"] == pytest.approx(14.0)
    assert prediction.body["result"]["uid"] == NOBODY.pw_uid

    serve = agent.api.post(f"/api/ml/models/{trained['id']}/serve?wait=true", {"loader": "script"})
    assert serve.status == 200, serve.text
    (worker,) = serve.body["serving"]["workers"]
    socket_dir = Path(next(a for a in agent.api.get(f"/api/tasks/{worker['task_id']}").body["args"] if a.endswith(".sock"))).parent
    assert socket_dir.parent == agent.state_dir / "run"
    assert socket_dir.stat().st_uid == NOBODY.pw_uid and stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
    answer = agent.api.post("/v2/models/pure/infer", {"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]}]})
    assert answer.status == 200, answer.text
    assert answer.body["outputs"][0]["data"] == pytest.approx([5.0, 7.0])
    assert agent.api.delete(f"/api/ml/models/{trained['id']}/serve").status == 200
    wait_until(lambda: not socket_dir.exists(), 30, "the worker's socket dir to be removed")


def test_what_the_task_user_cannot_reach_is_a_400_naming_the_field(make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent().start()
    private = agent.workdir / "private"
    private.mkdir(mode=0o700)
    (private / "model.py").write_text(PURE_MODEL.read_text())
    tool = private / "tool.sh"
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    readonly_models = agent.workdir / "readonly-models"
    readonly_models.mkdir(mode=0o755)
    public = agent.workdir / "public"
    public.mkdir(mode=0o755)
    (public / "model.py").write_text(PURE_MODEL.read_text())

    cases = [
        ("/api/ml/models", {"name": "a", "command": SYSTEM_PYTHON, "script_path": "private/model.py",
                            "model_path": "models/a.json"}, "script_path"),
        ("/api/ml/models", {"name": "b", "command": SYSTEM_PYTHON, "script_path": "public/model.py",
                            "model_path": "readonly-models/b.json"}, "model_path"),
        ("/api/tasks", {"name": "c", "command": str(tool)}, "command"),
        ("/api/tasks", {"name": "d", "command": SYSTEM_PYTHON, "args": ["-c", "pass"], "working_dir": "private"},
         "working_dir"),
    ]
    for path, body, field in cases:
        reply = agent.api.post(path, body)
        assert reply.status == 400, (field, reply.text)
        assert reply.body["details"]["field"] == field, reply.body
        message = reply.body["error"]
        assert message.startswith(f"{field}: ") and "user 'nobody' cannot" in message and " is drwx" in message, message
    assert agent.api.get("/api/tasks").body == []  # nothing half-created


def test_a_run_as_user_that_does_not_exist_stops_the_agent_at_start(shared_dir: Path) -> None:
    config = shared_dir / "config.yaml"
    config.write_text("tasks:\n  run_as: no-such-user-cnet\n")
    proc = subprocess.run([sys.executable, "-m", "cnetd", "-config", str(config)], capture_output=True, text=True,
                          timeout=60, cwd=shared_dir)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"cnet-agent: {config}: tasks.run_as: no such user 'no-such-user-cnet'"
    checked = subprocess.run([sys.executable, "-m", "cnetd", "check-config", "-config", str(config)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 2 and "no such user" in checked.stderr


def test_resolving_the_task_user() -> None:
    assert resolve_task_user(None, euid=0).name == "nobody"  # type: ignore[union-attr]
    assert resolve_task_user("root", euid=0) is None
    assert resolve_task_user("0", euid=0) is None
    by_id = resolve_task_user(f"{NOBODY.pw_uid}:{NOBODY.pw_gid}", euid=0)
    assert by_id is not None and (by_id.name, by_id.uid, by_id.groups) == ("nobody", NOBODY.pw_uid, (NOBODY.pw_gid,))
    # Not root: tasks run as the agent's user; asking for another one is an error, not ignored.
    assert resolve_task_user(None, euid=NOBODY.pw_uid) is None
    assert resolve_task_user("nobody", euid=NOBODY.pw_uid) is None
    with pytest.raises(TaskUserError, match="needs the agent to run as root"):
        resolve_task_user("root", euid=NOBODY.pw_uid)
    with pytest.raises(TaskUserError, match="no such group"):
        resolve_task_user("nobody:no-such-group-cnet", euid=0)
    assert json.dumps(by_id.to_json())


def test_a_process_task_cannot_have_the_agent_make_directories_for_it(make_agent: Callable[..., AgentProcess]) -> None:
    """MODEL_PATH in a plain task's env is just a variable: the agent (root) creates model
    directories only for ML deploys, whose model_path passed ml.allowed_roots."""
    agent = make_agent().start()
    outside = agent.workdir.parent / "not-for-tasks" / "sub"
    done = run_task(agent, "print('ran')", env={"MODEL_PATH": str(outside / "m.bin")})
    assert done["status"] == "completed"
    assert not outside.parent.exists()


def test_each_task_has_a_private_tmpdir_that_counts_and_goes(make_agent: Callable[..., AgentProcess]) -> None:
    """TMPDIR is the task's own directory (only its user may enter it), its writes count
    against disk_limit, and it is removed once the task has ended."""
    agent = make_agent().start()
    probe = ("import json, os, tempfile\n"
             "path = tempfile.mkdtemp()\n"
             "open(os.path.join(path, 'x'), 'w').write('scratch')\n"
             "st = os.stat(os.environ['TMPDIR'])\n"
             "print(json.dumps({'tmpdir': os.environ['TMPDIR'], 'made': path, 'uid': st.st_uid,"
             " 'mode': oct(st.st_mode & 0o777)}))")
    done = run_task(agent, probe)
    assert done["status"] == "completed", done
    tmpdir = Path(done["result"]["tmpdir"])
    assert tmpdir == agent.state_dir / "tmp" / done["id"] and done["result"]["made"].startswith(str(tmpdir))
    assert (done["result"]["uid"], done["result"]["mode"]) == (NOBODY.pw_uid, "0o700")
    wait_until(lambda: not tmpdir.exists(), 10, "the task's TMPDIR to be removed")

    # (A NamedTemporaryFile: the meter sees files by name; an unlinked one is not counted.)
    writer = ("import tempfile, time\n"
              "with tempfile.NamedTemporaryFile() as f:\n"
              "    for _ in range(40):\n"
              "        f.write(b'x' * 1_000_000); f.flush(); time.sleep(0.05)\n"
              "    time.sleep(600)")
    hog = run_task(agent, writer, resources={"disk_limit": 5_000_000})
    assert hog["status"] == "failed" and hog["reason"].startswith("disk limit exceeded"), hog
