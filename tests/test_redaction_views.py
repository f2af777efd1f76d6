"""A task's secrets stay out of every view of it, against a real agent: the API's JSON
(create, get, list, events), the UI's task page, the task list, and the live stream's
fragments. The task itself still gets the real values."""

from __future__ import annotations

import http.client
import re
import sys
from pathlib import Path

from tests.support.agent import REPO, AgentProcess
from tests.support.waiting import wait_until

PY = sys.executable
SECRETS = {
    "API_TOKEN": "tok-0001-value",
    "DB_PASS": "dbpass-0002-value",
    "MYSQL_PWD": "pwd-0003-value",
    "DATABASE_DSN": "dsn-0004-value",
    "AUTH": "auth-0005-value",
    "COOKIE": "cookie-0006-value",
    "SESSION": "session-0007-value",
    "PRIVATE": "private-0008-value",
    "DATABASE_URL": "postgres://app:urlpass-0009-value@db/prod",
}
SECRET_VALUES = ("tok-0001", "dbpass-0002", "pwd-0003", "dsn-0004", "auth-0005", "cookie-0006",
                 "session-0007", "private-0008", "urlpass-0009")
HTML = {"Accept": "text/html"}


def leaks(text: str) -> list[str]:
    return [s for s in SECRET_VALUES if s in text]


def first_stream_messages(agent: AgentProcess, path: str, until: bytes = b"event: timeline") -> str:
    """The start of an SSE stream that never ends by itself: read until `until` arrives."""
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=20)
    try:
        conn.request("GET", path, headers={"Accept": "text/event-stream"})
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
        data = b""
        while until not in data or not data.endswith(b"\n\n"):
            chunk = response.read1(65536)
            assert chunk, f"the stream ended before {until!r}: {data[-500:]!r}"
            data += chunk
        return data.decode()
    finally:
        conn.close()


def test_no_view_of_a_task_shows_its_secrets(agent: AgentProcess) -> None:
    code = "import os, time; print(os.environ['DB_PASS'][::-1], os.environ['DATABASE_URL'][::-1], flush=True); time.sleep(60)"
    created = agent.api.post("/api/tasks", {"name": "secrets", "command": PY, "args": ["-c", code],
                                            "env": {**SECRETS, "PLAIN": "visible-value"}})
    assert created.status == 201, created.text
    task_id = created.body["id"]
    assert created.body["env"]["PLAIN"] == "visible-value"
    assert created.body["env"]["DATABASE_URL"] == "postgres://app:<redacted>@db/prod"
    assert leaks(created.text) == []
    agent.wait_status(task_id, {"running"})

    # the task got the real values (its log prints two of them reversed)
    logs = wait_until(lambda: agent.api.get(f"/api/tasks/{task_id}/logs").body, 30, "the task's first log line")
    assert logs == ["eulav-2000-ssapbd dorp/bd@eulav-9000-ssaplru:ppa//:sergtsop"], logs

    views = {
        "GET /api/tasks/{id}": agent.api.get(f"/api/tasks/{task_id}"),
        "GET /api/tasks": agent.api.get("/api/tasks"),
        "GET /api/tasks/{id}/events": agent.api.get(f"/api/tasks/{task_id}/events"),
        "task page": agent.api.get(f"/tasks/{task_id}", headers=HTML),
        "task list page": agent.api.get("/tasks", headers=HTML),
        "dashboard": agent.api.get("/", headers=HTML),
    }
    for name, reply in views.items():
        assert reply.status == 200, f"{name}: {reply.status}"
        assert leaks(reply.text) == [], f"{name} shows {leaks(reply.text)}"
    page = views["task page"].text
    assert "PLAIN=visible-value" in page and "DB_PASS=&lt;redacted&gt;" in page
    assert "postgres://app:&lt;redacted&gt;@db/prod" in page

    stream = first_stream_messages(agent, f"/tasks/{task_id}/live")
    assert "event: summary" in stream and "PLAIN=visible-value" in stream
    assert leaks(stream) == [], f"the live stream shows {leaks(stream)}"
    agent.api.delete(f"/api/tasks/{task_id}")


def test_templates_show_a_task_env_only_through_the_redaction_filter() -> None:
    """A guard for templates to come: `.env` is only tested for truth or piped through redacted_env."""
    offenders = []
    for template in sorted(Path(REPO / "templates").glob("*.html")):
        for match in re.finditer(r"[\w\]\)]\.env\b(?P<after>[^%}]*)", template.read_text()):
            before = template.read_text()[max(0, match.start() - 12):match.start()]
            if not match["after"].lstrip().startswith("|redacted_env") and "{% if" not in before:
                offenders.append(f"{template.name}: ...{before}{match.group(0)}")
    assert offenders == []
