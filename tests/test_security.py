"""Issue 7's rules against a real agent: bind policy, tokens, UI sessions and CSRF,
confinement, redaction, storage faults."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from tests.support.agent import AgentProcess
from tests.support.http import Client
from tests.support.waiting import wait_until

TOKEN = "test-token-0123456789abcdef"
PY = sys.executable


def test_public_bind_without_a_token_is_refused(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent: AgentProcess = agent_factory({"agent": {"address": "0.0.0.0"}})
    agent.start(ready=False)
    assert agent.proc is not None
    assert agent.proc.wait(timeout=30) == 1
    text = agent.log_text()
    assert "refusing to listen on 0.0.0.0 without an API token" in text and "auth.tokens" in text


def test_public_bind_with_a_token_starts(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent: AgentProcess = agent_factory({"agent": {"address": "0.0.0.0"}, "auth": {"tokens": [TOKEN]}})
    agent.start()
    assert Client(agent.url, TOKEN).get("/api/tasks").status == 200


@pytest.fixture
def locked(agent_factory) -> AgentProcess:  # type: ignore[no-untyped-def]
    return agent_factory({"auth": {"tokens": [TOKEN]}}).start()


def test_api_needs_the_token_except_health(locked: AgentProcess) -> None:
    anonymous, wrong, right = Client(locked.url), Client(locked.url, "x" * 26), Client(locked.url, TOKEN)
    assert anonymous.get("/api/health").status == 200
    for client in (anonymous, wrong):
        reply = client.get("/api/tasks")
        assert reply.status == 401 and reply.body["error"].startswith("authentication required")
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        assert client.post("/api/tasks", {"name": "x", "command": "true"}).status == 401
        assert client.get("/v2/health/ready").status == 401
        assert client.get("/v2").status == 401
        assert client.get("/metrics").status == 401
    assert right.get("/api/tasks").status == 200
    assert right.post("/api/tasks", {"name": "x", "command": "true"}).status == 201
    assert anonymous.get("/api/tasks").status == 401
    assert TOKEN not in locked.log_text()


def test_metrics_can_be_public(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent: AgentProcess = agent_factory({"auth": {"tokens": [TOKEN], "metrics_public": True}}).start()
    assert Client(agent.url).get("/metrics").status != 401
    assert Client(agent.url).get("/api/tasks").status == 401


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def post_form(url: str, fields: dict[str, str]) -> tuple[int, dict[str, str]]:
    opener = urllib.request.build_opener(NoRedirect)
    data = urllib.parse.urlencode(fields).encode()
    try:
        with opener.open(urllib.request.Request(url, data=data, method="POST"), timeout=10) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers)


def test_ui_login_sets_a_strict_httponly_session_and_refuses_cross_site_changes(locked: AgentProcess) -> None:
    status, headers = post_form(locked.url + "/login", {"token": "wrong-token-wrong-token", "next": "/"})
    assert status == 401 and "Set-Cookie" not in headers
    status, headers = post_form(locked.url + "/login", {"token": TOKEN, "next": "//evil.example/"})
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    session = cookie.split(";")[0]
    with_cookie = Client(locked.url)
    assert with_cookie.get("/api/tasks", headers={"Cookie": session}).status == 200
    body = {"name": "x", "command": "true"}
    cross = with_cookie.post("/api/tasks", body, headers={"Cookie": session, "Origin": "http://evil.example"})
    assert cross.status == 403
    same = with_cookie.post("/api/tasks", body, headers={"Cookie": session, "Origin": locked.url})
    assert same.status == 201


def test_json_endpoints_refuse_bodies_a_cross_site_form_could_send(agent: AgentProcess) -> None:
    body = b'{"name": "x", "command": "true"}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        reply = agent.api.post("/api/tasks", raw=body, headers={"Content-Type": content_type})
        assert reply.status == 415 and "application/json" in reply.body["error"], reply.text
    assert agent.api.get("/api/tasks").body == []


def test_paths_must_stay_inside_the_allowed_roots(agent: AgentProcess) -> None:
    from tests.test_ml_api import LINEAR_BODY

    outside = agent.workdir.parent / "outside.py"
    outside.write_text("print('hi')\n")
    (agent.workdir / "sneaky.py").symlink_to(outside)
    cases = {
        "script_path": ({"script_path": "sneaky.py"}, "outside the allowed roots"),
        "model_path": ({"model_path": "../../escape.joblib"}, "outside the model roots"),
        "working_dir": ({"working_dir": "/"}, "outside the allowed roots"),
    }
    for field, (patch, why) in cases.items():
        reply = agent.api.post("/api/ml/models", {**LINEAR_BODY, **patch})
        assert reply.status == 400 and reply.body["error"].startswith(field) and why in reply.body["error"], reply.text
    reply = agent.api.post("/api/tasks", {"name": "x", "command": "true", "working_dir": "/etc"})
    assert reply.status == 400 and reply.body["error"].startswith("working_dir")
    assert agent.api.get("/api/tasks").body == []


def test_allowed_commands(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent: AgentProcess = agent_factory({"tasks": {"allowed_commands": ["python3", PY]}}).start()
    assert agent.api.post("/api/tasks", {"name": "ok", "command": "python3", "args": ["-c", "1"]}).status == 201
    assert agent.api.post("/api/tasks", {"name": "ok2", "command": PY, "args": ["-c", "1"]}).status == 201
    reply = agent.api.post("/api/tasks", {"name": "no", "command": "sh", "args": ["-c", "id"]})
    assert reply.status == 400 and "tasks.allowed_commands" in reply.body["error"] and reply.body["error"].startswith("command")


def test_secret_looking_env_values_are_redacted_but_reach_the_task(agent: AgentProcess) -> None:
    env = {"API_TOKEN": "s3cr3t-value", "DB_PASSWORD": "hunter2", "PLAIN": "visible"}
    code = "import os; print(os.environ['API_TOKEN'][::-1])"
    task = agent.api.post("/api/tasks", {"name": "env", "command": PY, "args": ["-c", code], "env": env}).body
    assert task["env"] == {"API_TOKEN": "<redacted>", "DB_PASSWORD": "<redacted>", "PLAIN": "visible"}
    agent.wait_done(task["id"])
    assert agent.api.get(f"/api/tasks/{task['id']}").body["env"]["API_TOKEN"] == "<redacted>"
    assert agent.api.get(f"/api/tasks/{task['id']}/logs").body == ["eulav-t3rc3s"]
    assert "s3cr3t-value" not in agent.api.get("/api/tasks").text


def test_a_corrupt_database_stops_the_agent_with_the_recovery_command(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent: AgentProcess = agent_factory()
    agent.state_dir.mkdir(parents=True)
    (agent.state_dir / "cnet.db").write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    agent.start(ready=False)
    assert agent.proc is not None and agent.proc.wait(timeout=30) == 1
    text = agent.log_text()
    assert "damaged" in text and ".recover" in text and "Traceback" not in text
    assert (agent.state_dir / "cnet.db").stat().st_size == 16 + 8192  # left untouched


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root to mount a small tmpfs")
def test_a_full_disk_gives_503_on_writes_keeps_reads_and_recovers(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent: AgentProcess = agent_factory()
    agent.state_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(agent.state_dir)], check=True)
    try:
        agent.start()
        first = agent.api.post("/api/tasks", {"name": "before", "command": "true"})
        assert first.status == 201
        filler = agent.state_dir / "filler"
        with open(filler, "wb", buffering=0) as f:  # unbuffered: close() has nothing left to flush
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass

        def refused() -> bool:
            reply = agent.api.post("/api/tasks", {"name": "during", "command": "true"})
            return reply.status == 503 and "storage" in reply.body["error"]

        wait_until(refused, 10, "writes to be refused with 503")
        assert agent.api.get("/api/tasks").status == 200
        assert agent.api.get(f"/api/tasks/{first.body['id']}").status == 200
        filler.unlink()
        after = {"name": "after", "command": "true"}
        wait_until(lambda: agent.api.post("/api/tasks", after).status == 201, 10, "writes to work again")
    finally:
        agent.stop()
        subprocess.run(["umount", "-l", str(agent.state_dir)], check=False)


