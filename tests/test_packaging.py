"""The shipped agent: the one-file binary (built once per session by
packaging/build-binary.sh), packaging/install.sh, and the systemd units, run under a real
systemd booted in private namespaces (tests/harness): READY only once serving, models that
outlive restarts, crashes and stops of the service, and stop_on_exit."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cnetd import __version__
from tests.harness.systemd_ns import SystemdNamespace
from tests.support.agent import AgentProcess, free_port
from tests.support.http import Client
from tests.support.lock import unpinned
from tests.support.waiting import wait_until
from tests.test_ml_api import LINEAR_BODY

REPO = Path(__file__).resolve().parents[1]
PACKAGING = REPO / "packaging"
BUILD_DIST = REPO / "build" / "test-dist"
# Events of a model's versions and serving (cnetd/ml/versions, cnetd/ml/serving/scaling), kept
# with its task's own.
VERSION_EVENTS = frozenset({"version", "promoted", "rolled_back", "rollout", "rollout_ended", "retired", "scaled",
                            "scale_waiting"})
VENV_BIN = Path(sys.executable).parent
# The binary's tasks run this venv's python, which the binary does not bind back as it binds
# its own bundle: an allowed root makes it readable to them even where the checkout lies
# under /tmp (a fresh clone may), which a task sees replaced by its private TMPDIR.
VENV_ROOT = str(Path(sys.prefix))
BUILD_BUDGET = 240.0  # seconds; past this the build is too slow for CI and a test says so
TERMINAL = {"completed", "failed", "stopped"}


@pytest.fixture(scope="session")
def agent_binary() -> tuple[Path, float]:
    """(the binary, seconds the build took), built once per session into build/test-dist
    (dist/ is left to whoever builds by hand)."""
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(PACKAGING / "build-binary.sh")], cwd=REPO, capture_output=True, text=True,
        timeout=900, stdin=subprocess.DEVNULL, env={**os.environ, "DIST": str(BUILD_DIST)},
    )
    took = time.monotonic() - started
    assert proc.returncode == 0, f"build-binary.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    binary = BUILD_DIST / "cnet-agent"
    assert binary.is_file() and os.access(binary, os.X_OK)
    return binary, took


@pytest.fixture
def binary(agent_binary: tuple[Path, float]) -> Path:
    return agent_binary[0]


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, **kw)


# --- the binary -----------------------------------------------------------------------


def test_build_is_fast_enough_for_ci(agent_binary: tuple[Path, float]) -> None:
    assert agent_binary[1] < BUILD_BUDGET, f"building the binary took {agent_binary[1]:.0f}s"


def test_the_build_venv_holds_the_locked_versions(agent_binary: tuple[Path, float]) -> None:
    """build-binary.sh installs PyInstaller and the runtime dependencies with constraints.txt."""
    left = unpinned(REPO / "build" / "venv" / "bin" / "python")
    assert not left, "the build venv differs from constraints.txt:\n" + "\n".join(left)


def test_version_and_check_config(binary: Path, tmp_path: Path) -> None:
    assert run([str(binary), "--version"]).stdout.strip() == f"cnet-agent {__version__}"
    checked = run([str(binary), "check-config", "-config", str(PACKAGING / "config.yaml")])
    assert checked.returncode == 0, checked.stderr
    effective = json.loads(checked.stdout)
    assert effective["agent"]["address"] == "127.0.0.1" and effective["agent"]["port"] == 8080
    assert effective["agent"]["state_dir"] == "/var/lib/cnet"
    assert effective["tasks"]["sandbox"] == "auto" and effective["tasks"]["stop_on_exit"] is False
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  max_concurrent: ten\n")
    refused = run([str(binary), "check-config", "-config", str(bad)])
    assert refused.returncode == 2 and refused.stdout == ""
    assert "tasks.max_concurrent" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_binary_carries_its_files_and_no_ml_stack(binary: Path) -> None:
    """Templates, static files, migrations, the serving worker and numpy (the V2 binary
    tensor codec's) are inside; TensorFlow and scikit-learn (which only models use, with
    their own python) are not."""
    lister = (
        "import sys\n"
        "from PyInstaller.archive.readers import CArchiveReader, ZlibArchiveReader\n"
        "arch = CArchiveReader(sys.argv[1])\n"
        "names = list(arch.toc)\n"
        "for name, entry in arch.toc.items():\n"
        "    if entry[-1] == 'z':\n"
        "        names += list(ZlibArchiveReader(sys.argv[1], entry[0] + arch._start_offset).toc)\n"
        "print('\\n'.join(names))\n"
    )
    listing = run([str(REPO / "build" / "venv" / "bin" / "python"), "-c", lister, str(binary)])
    assert listing.returncode == 0, listing.stderr
    names = set(listing.stdout.split())
    wanted = {"cnetd/store/migrations/0001_initial.sql", "cnetd.cli", "cnetd.app",
              "cnetd.grpcapi.server", "cnetd.grpcapi.grpc_predict_v2_pb2", "grpc", "google.protobuf"}
    wanted |= {f"templates/{p.relative_to(REPO / 'templates')}" for p in (REPO / "templates").rglob("*") if p.is_file()}
    if (REPO / "cnetd/ml/serving/worker.py").exists():
        wanted.add("cnetd/ml/serving/worker.py")
    assert wanted <= names, sorted(wanted - names)
    assert "numpy" in {n.split(".")[0].split("/")[0] for n in names}
    ml_packages = {"tensorflow", "keras", "sklearn", "scipy", "pandas", "joblib"}
    heavy = sorted(n for n in names if n.split(".")[0].split("/")[0] in ml_packages)
    assert heavy == []
    assert binary.stat().st_size < 40 * 1024 * 1024


@pytest.mark.slow
def test_binary_serves_the_api_and_ui_and_trains_a_model(binary: Path, agent_factory: Callable[..., AgentProcess],
                                                         tmp_path: Path) -> None:
    # The binary runs models with the python the command names, found on PATH: .venv first.
    roots = {"ml": {"allowed_roots": [str(tmp_path / "agent"), str(REPO / "examples"), VENV_ROOT]},
             "serving": {"grpc_port": free_port()}}
    agent = agent_factory(roots, command=[str(binary)], env={"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    agent.start()
    health = agent.api.get("/api/health")
    assert health.status == 200 and health.body["version"] == __version__
    if (REPO / "templates" / "base.html").exists():
        page = agent.api.get("/")
        assert page.status == 200 and page.headers["Content-Type"].startswith("text/html"), page.text[:500]
        assert "<html" in page.text.lower()
        static = agent.api.get("/static/htmx.min.js")
        assert static.status == 200 and len(static.text) > 1000

    body = copy.deepcopy(LINEAR_BODY)
    body["serving"] = {"replicas": 1}  # warm serving: the worker script is shipped in the binary
    reply = agent.api.post("/api/ml/models", body)
    assert reply.status == 201, reply.text
    model = agent.wait_status(reply.body["id"], TERMINAL, 180, path="/api/ml/models/")
    assert model["status"] == "completed", agent.api.get(f"/api/ml/models/{model['id']}/logs").text
    assert (agent.workdir / "models" / "linear_regression_model.joblib").is_file()

    def serving() -> dict[str, Any] | None:
        state = agent.api.get(f"/api/ml/models/{model['id']}").body["serving"]
        assert state["state"] != "failed", state
        return state if state["state"] == "serving" and state["ready_replicas"] >= 1 else None

    wait_until(serving, 90, "the served model's worker to be ready")
    predicted = agent.api.post(f"/api/ml/models/{model['id']}/predict?wait=true", {"input_data": 5.5})
    assert predicted.status == 200, predicted.text
    assert predicted.body["served_by"] and abs(predicted.body["prediction"] - 14.0) < 0.2

    # V2 over gRPC from the binary (grpcio and protobuf are bundled), with the official client.
    import numpy as np
    import tritonclient.grpc as triton

    with triton.InferenceServerClient(f"127.0.0.1:{agent.config['serving']['grpc_port']}") as grpc_client:
        assert grpc_client.is_server_live()
        x = triton.InferInput("x", [1, 1], "FP64")
        x.set_data_from_numpy(np.array([[5.5]]))
        answer = grpc_client.infer("linear-regression-model", [x]).as_numpy("predictions")
        assert answer.tolist() == [predicted.body["prediction"]]

    # Task processes get the environment the binary was started with, not the bundle's.
    probe = "import os; print(sorted(k for k in os.environ if k.startswith(('LD_LIBRARY_PATH', '_PYI', '_MEI'))))"
    task = agent.api.post("/api/tasks", {"name": "env", "command": sys.executable, "args": ["-c", probe]}).body
    agent.wait_done(task["id"])
    assert agent.api.get(f"/api/tasks/{task['id']}/logs").body == ["[]"]


def test_sigterm_exits_quickly_and_cleans_the_bundle(binary: Path, agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory(command=[str(binary)]).start()
    assert agent.proc is not None
    child = int(Path(f"/proc/{agent.proc.pid}/task/{agent.proc.pid}/children").read_text().split()[0])
    bundle = Path(next(line.split()[-1] for line in Path(f"/proc/{child}/maps").read_text().splitlines()
                       if "/_MEI" in line and "libpython" in line)).parent
    assert bundle.is_dir()
    started = time.monotonic()
    assert agent.kill(signal.SIGTERM) == 0, agent.log_text()
    assert time.monotonic() - started < 5
    assert not bundle.exists(), f"{bundle} left behind"


# --- install.sh without systemd (DESTDIR) ---------------------------------------------


def test_install_stages_files_idempotently_and_keeps_the_config(binary: Path, tmp_path: Path) -> None:
    dest = tmp_path / "stage"
    env = {**os.environ, "DESTDIR": str(dest)}
    install = [str(PACKAGING / "install.sh"), "--binary", str(binary)]
    first = run(install, env=env)
    assert first.returncode == 0, first.stderr
    placed = {
        "usr/local/bin/cnet-agent": 0o755,
        "etc/systemd/system/cnet-agent.service": 0o644,
        "etc/systemd/system/cnet.slice": 0o644,
        "etc/cnet/config.yaml": 0o640,
    }
    for path, mode in placed.items():
        assert (dest / path).stat().st_mode & 0o777 == mode, path
    assert (dest / "etc/cnet/config.yaml").read_text() == (PACKAGING / "config.yaml").read_text()
    # A staged tree is for a package: one token baked into every machine would be no secret.
    assert "staged: no API token made" in first.stdout and not (dest / "etc/cnet/token").exists()
    unit = (dest / "etc/systemd/system/cnet-agent.service").read_text()
    assert "ExecStart=/usr/local/bin/cnet-agent -config /etc/cnet/config.yaml\n" in unit

    (dest / "etc/cnet/config.yaml").write_text("agent:\n  port: 9999\n")  # the operator's own
    second = run(install, env=env)
    assert second.returncode == 0, second.stderr
    assert "installed" not in second.stdout and "kept the existing /etc/cnet/config.yaml" in second.stdout
    assert (dest / "etc/cnet/config.yaml").read_text() == "agent:\n  port: 9999\n"

    bad = run([*install, "--prefix", "relative/dir"], env=env)
    assert bad.returncode != 0 and "absolute path" in bad.stderr

    removed = run([str(PACKAGING / "install.sh"), "--uninstall"], env=env)
    assert removed.returncode == 0, removed.stderr
    assert not (dest / "usr/local/bin/cnet-agent").exists()
    assert not (dest / "etc/systemd/system/cnet-agent.service").exists()
    assert (dest / "etc/cnet/config.yaml").exists()
    purged = run([str(PACKAGING / "install.sh"), "--uninstall", "--purge"], env=env)
    assert purged.returncode == 0 and not (dest / "etc/cnet").exists()


def test_install_refuses_an_invalid_existing_config(binary: Path, tmp_path: Path) -> None:
    dest = tmp_path / "stage"
    (dest / "etc/cnet").mkdir(parents=True)
    (dest / "etc/cnet/config.yaml").write_text("agent:\n  port: lots\n")
    proc = run([str(PACKAGING / "install.sh"), "--binary", str(binary)], env={**os.environ, "DESTDIR": str(dest)})
    assert proc.returncode != 0 and "agent.port" in proc.stderr


# --- under a real systemd -------------------------------------------------------------

# The harness's systemd has booted only an empty target. A service with default
# dependencies would pull in sysinit.target and with it the host's boot services
# (systemd-tmpfiles would empty the host's /tmp, systemd-sysctl and udev would act on the
# host): the test drop-in turns default dependencies off, and these targets are masked
# while the tests run so that nothing can pull them in.
HOST_TARGETS = ("sysinit.target", "basic.target", "network.target", "network-online.target",
                "sockets.target", "timers.target", "paths.target", "local-fs.target")

GATED_MODEL = '''\
"""Trains in 200 steps and waits at a gate file halfway: a restart happens while it waits."""
import json, os, sys, time
command, model_path, gate = sys.argv[1], sys.argv[2], sys.argv[3]
steps = 200
for i in range(1, steps + 1):
    print(json.dumps({"progress": round(i / steps, 3), "step": i}), flush=True)
    if i == steps // 2:
        open(gate + ".waiting", "w").close()
        while not os.path.exists(gate):
            time.sleep(0.02)
    time.sleep(0.002)
os.makedirs(os.path.dirname(model_path), exist_ok=True)
with open(model_path, "w") as f:
    f.write("weights\\n")
print(json.dumps({"status": "success", "steps": steps}), flush=True)
'''


class Service:
    """cnet-agent.service installed by packaging/install.sh into the harness's systemd,
    with a test drop-in: its own state dir, port and log file."""

    def __init__(self, ns: SystemdNamespace, binary: Path, root: Path) -> None:
        self.ns = ns
        self.binary = binary
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        self.prefix = root / "usr"
        self.config_dir = root / "etc" / "cnet"
        self.config_path = self.config_dir / "config.yaml"
        self.log_path = root / "agent.log"
        self.work = root / "work"
        self.work.mkdir()
        self.state_name = f"cnet-test-{uuid.uuid4().hex[:12]}"
        self.state_dir = Path("/var/lib") / self.state_name
        self.port = free_port()
        self.token = ""
        self.api = Client(f"http://127.0.0.1:{self.port}")
        self.task_ids: list[str] = []

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = self.ns.run(["systemctl", *args], timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"systemctl {' '.join(args)}: exit {proc.returncode}: {proc.stderr}\n{self.log()}")
        return proc

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"-p{p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def write_config(self, **tasks: Any) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "agent": {"port": self.port},
            # Tasks run as the installed default: a uid of their own, in a private namespace
            # that reaches pytest's 0700 tmp dirs through veils.
            "tasks": {"sandbox": "systemd", "stop_grace": "2s", **tasks},
            "ml": {"allowed_roots": [str(self.work), VENV_ROOT]},  # tasks run sys.executable
        }
        self.config_path.write_text(yaml.safe_dump(config))

    def install(self, *extra: str) -> subprocess.CompletedProcess[str]:
        proc = self.ns.run(
            ["bash", str(PACKAGING / "install.sh"), "--binary", str(self.binary), "--prefix", str(self.prefix),
             "--config-dir", str(self.config_dir), *extra], timeout=120, cwd="/",
        )
        assert proc.returncode == 0, f"install.sh: {proc.stdout}\n{proc.stderr}\n{self.log()}"
        self.token = (self.config_dir / "token").read_text().strip()  # install.sh made it
        self.api = Client(f"http://127.0.0.1:{self.port}", self.token)
        return proc

    def add_test_dropin(self) -> None:
        dropin = "\n".join([
            "[Unit]",
            "DefaultDependencies=no",
            "[Service]",
            "StateDirectory=",
            f"StateDirectory={self.state_name}",
            f"Environment=CNET_STATE_DIR={self.state_dir}",
            f"WorkingDirectory={self.state_dir}",
            f"StandardOutput=append:{self.log_path}",
            "StandardError=inherit",
            "",
        ])
        staged = self.root / "test.conf"
        staged.write_text(dropin)
        self.ns.run(["mkdir", "-p", "/etc/systemd/system/cnet-agent.service.d"], check=True)
        self.ns.run(["cp", str(staged), "/etc/systemd/system/cnet-agent.service.d/test.conf"], check=True)
        self.systemctl("daemon-reload")

    def verify(self) -> subprocess.CompletedProcess[str]:
        """systemd-analyze verify on the installed units as a real host sees them: the
        guard masks are lifted for it (it only simulates the start transaction)."""
        self.systemctl("unmask", "--runtime", *HOST_TARGETS)
        self.systemctl("unmask", *HOST_TARGETS)  # the harness masks them from boot on, too
        try:
            return self.ns.run(["systemd-analyze", "verify", "--man=no", "/etc/systemd/system/cnet-agent.service",
                                "/etc/systemd/system/cnet.slice"], timeout=60)
        finally:
            self.systemctl("mask", *HOST_TARGETS)
            self.systemctl("mask", "--runtime", *HOST_TARGETS)

    def active_state(self) -> str:
        return self.show("cnet-agent.service", "ActiveState")["ActiveState"]

    def main_pid(self) -> int:
        return int(self.show("cnet-agent.service", "MainPID")["MainPID"])

    def deploy_gated(self, name: str) -> tuple[str, Path]:
        script = self.work / "gated_model.py"
        script.write_text(GATED_MODEL)
        gate = self.work / "models" / f"gate-{name}"  # in its model's dir: the code is read-only to it
        body = {
            "name": name, "model_type": "custom", "model_path": str(self.work / "models" / f"{name}.bin"),
            "script_path": str(script), "command": sys.executable,
            "args": [str(script), "train", str(self.work / "models" / f"{name}.bin"), str(gate)],
            "working_dir": str(self.work),
        }
        reply = self.api.post("/api/ml/models", body)
        assert reply.status == 201, reply.text
        self.task_ids.append(reply.body["id"])
        wait_until(lambda: Path(f"{gate}.waiting").exists(), 60, f"model {name} to reach its gate")
        return reply.body["id"], gate

    def scope_pids(self, task_id: str) -> set[int]:
        """Host pids in the task's scope (empty when the scope is gone)."""
        props = self.show(f"cnet-{task_id}.scope", "ActiveState", "ControlGroup")
        if props.get("ActiveState") != "active" or not props.get("ControlGroup"):
            return set()
        procs = self.ns.host_cgroup("/sys/fs/cgroup/systemd" + props["ControlGroup"]) / "cgroup.procs"
        return {int(p) for p in procs.read_text().split()}

    def wait_done(self, task_id: str, timeout: float = 60) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            try:
                reply = self.api.get(f"/api/tasks/{task_id}", timeout=5)
            except OSError:
                return None
            return reply.body if reply.status == 200 and reply.body["status"] in TERMINAL else None

        return wait_until(done, timeout, f"task {task_id} to end")

    def db_rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.state_dir / "cnet.db")
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def teardown(self) -> None:
        self.systemctl("stop", "cnet-agent.service", check=False)
        for task_id in self.task_ids:
            self.systemctl("kill", "-s", "SIGKILL", f"cnet-{task_id}.scope", check=False)
            self.systemctl("stop", f"cnet-{task_id}.scope", check=False)
        self.ns.run(["bash", str(PACKAGING / "install.sh"), "--prefix", str(self.prefix), "--config-dir",
                     str(self.config_dir), "--uninstall"], timeout=120, cwd="/")
        self.ns.run(["rm", "-rf", "/etc/systemd/system/cnet-agent.service.d"])
        self.systemctl("daemon-reload", check=False)
        self.systemctl("reset-failed", check=False)
        shutil.rmtree(self.state_dir, ignore_errors=True)


@pytest.fixture
def service(systemd_ns: SystemdNamespace, binary: Path, tmp_path: Path) -> Iterator[Service]:
    masked = systemd_ns.run(["systemctl", "mask", "--runtime", *HOST_TARGETS], timeout=60)
    assert masked.returncode == 0, masked.stderr
    svc = Service(systemd_ns, binary, tmp_path / "svc")
    try:
        yield svc
    finally:
        svc.teardown()
        systemd_ns.run(["systemctl", "unmask", "--runtime", *HOST_TARGETS], timeout=60)


def start_and_watch(svc: Service, timeout: float = 60) -> list[str]:
    """systemctl start without waiting, then the states seen until active; at the first
    'active' the API must already answer."""
    svc.systemctl("start", "--no-block", "cnet-agent.service")
    seen: list[str] = []

    def active() -> bool:
        state = svc.active_state()
        if not seen or seen[-1] != state:
            seen.append(state)
        if state == "failed":
            raise AssertionError(f"cnet-agent failed to start:\n{svc.log()}")
        return state == "active"

    wait_until(active, timeout, "cnet-agent to become active", interval=0.005)
    health = svc.api.get("/api/health", timeout=5)  # one request: no retry
    assert health.status == 200, health.text
    return seen


@pytest.mark.systemd
def test_units_verify_and_service_is_active_only_once_ready(service: Service) -> None:
    service.write_config()  # the default: each task under a uid of its own
    install = service.install("--no-start")
    assert "enabled cnet-agent.service" in install.stdout
    # The config set no token, so install.sh made one, root's alone, and named it in the config.
    token_file = service.config_dir / "token"
    assert f"generated an API token: {token_file}" in install.stdout
    assert len(service.token) == 64 and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.stat().st_uid == 0
    assert yaml.safe_load(service.config_path.read_text())["auth"] == {"token_file": str(token_file)}
    verify = service.verify()
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    assert service.systemctl("is-enabled", "cnet-agent.service").stdout.strip() == "enabled"
    service.add_test_dropin()

    seen = start_and_watch(service)
    assert "activating" in seen, seen
    props = service.show("cnet-agent.service", "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic",
                         "StatusText", "NotifyAccess", "WatchdogUSec", "Type")
    assert props["Type"] == "notify" and props["NotifyAccess"] == "all"
    assert int(props["ActiveEnterTimestampMonotonic"]) > int(props["ExecMainStartTimestampMonotonic"])
    assert props["StatusText"].startswith(f"serving http://127.0.0.1:{service.port}"), props
    assert props["WatchdogUSec"] in ("30s", "30000000")
    health = service.api.get("/api/health").body
    assert health["sandbox"]["backend"] == "systemd"
    anonymous = Client(f"http://127.0.0.1:{service.port}")
    assert anonymous.get("/api/health").status == 200
    assert anonymous.get("/api/tasks").status == 401 and anonymous.post("/api/tasks", {"command": "true"}).status == 401
    assert service.api.get("/api/tasks").status == 200
    assert service.state_dir.joinpath("cnet.db").is_file()
    # Under the installed unit, a task runs under a uid of its own in a private namespace:
    # the state dir is veiled, the database out of its sight.
    assert health["sandbox"]["task_user"]["mode"] == "dynamic" and health["sandbox"]["isolation"]["namespaces"], health
    probe = (f"import os; print(os.getuid() >= 1879048192, os.getcwd(), os.path.exists({str(service.state_dir / 'cnet.db')!r}),"
             f" os.path.exists({str(service.state_dir)!r}))")
    task = service.api.post("/api/tasks", {"name": "whoami", "command": "/usr/bin/python3", "args": ["-c", probe],
                                           "working_dir": str(service.work)})
    assert task.status == 201, task.text
    service.task_ids.append(task.body["id"])
    assert service.wait_done(task.body["id"])["status"] == "completed"
    assert service.api.get(f"/api/tasks/{task.body['id']}/logs").body == [f"True {service.work} False True"]

    # install.sh again: nothing changed, so the running agent is left alone.
    pid = service.main_pid()
    again = service.install()
    assert "unchanged" in again.stdout and "is running and unchanged" in again.stdout
    assert "sets an API token already" in again.stdout and token_file.read_text().strip() == service.token
    assert service.main_pid() == pid

    stopped_at = time.monotonic()
    service.systemctl("stop", "cnet-agent.service")
    assert time.monotonic() - stopped_at < 10
    assert service.active_state() == "inactive"
    assert "INFO cnetd.server: stopped" in service.log() and "Traceback" not in service.log()

    # install.sh on a stopped service starts it; --uninstall stops and removes it.
    started = service.install()
    assert "starting cnet-agent.service" in started.stdout and service.active_state() == "active"
    assert service.api.get("/api/health").status == 200
    removed = service.ns.run(["bash", str(PACKAGING / "install.sh"), "--prefix", str(service.prefix),
                              "--config-dir", str(service.config_dir), "--uninstall"], timeout=120, cwd="/")
    assert removed.returncode == 0, removed.stderr
    assert "kept " in removed.stdout and service.config_path.exists()
    assert f"kept the API token {token_file}" in removed.stdout and token_file.exists()
    assert not (service.prefix / "bin" / "cnet-agent").exists()
    assert service.show("cnet-agent.service", "LoadState")["LoadState"] == "not-found"


@pytest.mark.systemd
def test_models_outlive_restart_crash_and_stop_of_the_service(service: Service) -> None:
    service.write_config()
    service.install("--no-start")
    service.add_test_dropin()
    start_and_watch(service)

    task_id, gate = service.deploy_gated("survivor")
    pids = service.scope_pids(task_id)
    assert pids, "the model's scope has no processes"

    # 1. systemctl restart, mid-training.
    old_main = service.main_pid()
    service.systemctl("restart", "cnet-agent.service")
    assert service.active_state() == "active" and service.main_pid() != old_main
    assert service.api.get("/api/health").status == 200
    assert service.scope_pids(task_id) == pids, "the restart touched the model's scope"
    assert service.api.get(f"/api/tasks/{task_id}").body["status"] == "running"

    # 2. The agent crashes (SIGKILL to the agent, the bootloader's child; the bootloader
    # cleans its unpack dir and dies of the same signal): Restart=on-failure.
    crashed_main = service.main_pid()
    children = service.ns.run(["cat", f"/proc/{crashed_main}/task/{crashed_main}/children"], check=True).stdout.split()
    assert len(children) == 1, children
    service.ns.run(["kill", "-KILL", children[0]], check=True)
    wait_until(lambda: service.main_pid() not in (0, crashed_main) and service.active_state() == "active",
               30, "systemd to restart the crashed agent")
    assert service.show("cnet-agent.service", "NRestarts")["NRestarts"] == "1"
    assert service.scope_pids(task_id) == pids

    # 3. systemctl stop: the model goes on alone.
    service.systemctl("stop", "cnet-agent.service")
    assert service.scope_pids(task_id) == pids
    service.systemctl("start", "cnet-agent.service")
    assert service.api.get("/api/health", timeout=5).status == 200  # start returned: it serves

    gate.touch()
    done = service.wait_done(task_id)
    assert (done["status"], done["exit_code"], done["progress"]) == ("completed", 0, 1.0), done
    assert done["result"] == {"status": "success", "steps": 200}
    assert (service.work / "models" / "survivor.bin").read_text() == "weights\n"
    lines = service.api.get(f"/api/tasks/{task_id}/logs?lines=1000").body
    expected = [json.dumps({"progress": round(i / 200, 3), "step": i}) for i in range(1, 201)]
    assert lines == [*expected, json.dumps({"status": "success", "steps": 200})]
    total, distinct = service.db_rows("SELECT COUNT(*), COUNT(DISTINCT line) FROM log_lines WHERE task_id = ?", task_id)[0]
    assert total == distinct == 201
    events = [e["type"] for e in service.api.get(f"/api/tasks/{task_id}/events").body]
    # (a model's version events, e.g. "promoted" once it is the default, come after its task's)
    lifecycle = [e for e in events if e not in VERSION_EVENTS]
    assert lifecycle[:3] == ["created", "starting", "started"] and lifecycle[-1] == "completed", events
    assert set(lifecycle[3:-1]) == {"recovered"}, events
    wait_until(lambda: not service.scope_pids(task_id), 30, "the finished model's scope to go")


@pytest.mark.systemd
def test_stop_on_exit_stops_the_models_on_purpose(service: Service) -> None:
    service.write_config(stop_on_exit=True)
    service.install("--no-start")
    service.add_test_dropin()
    start_and_watch(service)
    task_id, gate = service.deploy_gated("stopped-on-exit")
    assert service.scope_pids(task_id)

    service.systemctl("stop", "cnet-agent.service")
    assert service.active_state() == "inactive"
    wait_until(lambda: not service.scope_pids(task_id), 30, "the model's scope to be stopped")
    status, reason = service.db_rows("SELECT status, reason FROM tasks WHERE id = ?", task_id)[0]
    assert status == "stopped", (status, reason)
    events = [row[0] for row in service.db_rows("SELECT type FROM task_events WHERE task_id = ? ORDER BY id", task_id)]
    assert events[-1] == "stopped", events
    gate.touch()


@pytest.mark.systemd
def test_an_invalid_config_fails_the_start_once_with_its_message(service: Service) -> None:
    service.write_config()
    service.install("--no-start")
    service.config_path.write_text("agent:\n  port: lots\n")
    service.add_test_dropin()
    started = service.systemctl("start", "cnet-agent.service", check=False)
    assert started.returncode != 0
    props = service.show("cnet-agent.service", "ActiveState", "NRestarts", "ExecMainStatus")
    assert props == {"ActiveState": "failed", "NRestarts": "0", "ExecMainStatus": "2"}, props
    assert "agent.port" in service.log()


def test_bundle_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cnetd.bundle as the frozen binary uses it: a stable copy of a bundled script for
    child processes, and an environment without the bootloader's additions."""
    from cnetd import bundle

    assert bundle.stable_copy("cnetd/sdnotify.py", tmp_path) == REPO / "cnetd" / "sdnotify.py"  # not frozen: in place
    unpacked = tmp_path / "_MEI123"
    (unpacked / "cnetd" / "ml" / "serving").mkdir(parents=True)
    (unpacked / "cnetd" / "ml" / "serving" / "worker.py").write_text("print('worker')\n")
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(unpacked), raising=False)
    state = tmp_path / "state"
    copy_ = bundle.stable_copy("cnetd/ml/serving/worker.py", state)
    assert copy_.parent == state / "lib" and copy_.name.startswith("worker-") and copy_.suffix == ".py"
    assert copy_.read_text() == "print('worker')\n" and copy_.stat().st_mode & 0o777 == 0o644
    assert bundle.stable_copy("cnetd/ml/serving/worker.py", state) == copy_  # the same content: the same file
    env = {"LD_LIBRARY_PATH": str(unpacked), "LD_LIBRARY_PATH_ORIG": "/opt/lib", "_PYI_APPLICATION_HOME_DIR": str(unpacked),
           "PATH": "/usr/bin"}
    bundle.restore_environment(env)
    assert env == {"LD_LIBRARY_PATH": "/opt/lib", "PATH": "/usr/bin"}
    env = {"LD_LIBRARY_PATH": str(unpacked)}
    bundle.restore_environment(env)
    assert env == {}
