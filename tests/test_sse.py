"""One SSE writer for the API's log follow and the UI's live task page, against a real
agent: the same headers, and the same Last-Event-ID handling. An id the stream never sent
(text, a sign, a superscript digit, a number past SQLite's integers) is a 400 naming the
header before the stream starts, on both (the API used to crash after its 200, the UI to
replay everything or crash on "²"); a real id resumes after it, every line of it."""

from __future__ import annotations

import http.client
import re
import sys
from collections.abc import Iterator

import pytest

from tests.support.agent import AgentProcess

PY = sys.executable
LINES = 300
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}


@pytest.fixture(scope="module")
def ended(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, str, str]]:
    """An agent with an ended model task that printed 300 lines: (agent, task id, model id)."""
    agent = AgentProcess(tmp_path_factory.mktemp("sse")).start()
    try:
        script = agent.workdir / "count.py"
        script.write_text(f"for i in range(1, {LINES + 1}): print(f'line {{i}}')\n")
        reply = agent.api.post("/api/ml/models", {"name": "count", "command": PY, "script_path": "count.py",
                                                  "args": ["count.py"], "model_path": "models/count.json"})
        assert reply.status == 201, reply.text
        assert agent.wait_done(reply.body["id"])["status"] == "completed"
        yield agent, reply.body["id"], reply.body["id"]
    finally:
        agent.stop()
        agent.kill_task_processes()


def get(agent: AgentProcess, path: str, last_event_id: bytes | None = None) -> tuple[int, dict[str, str], str]:
    """GET with the raw bytes of a Last-Event-ID header (http.client, so any byte goes)."""
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
    try:
        conn.putrequest("GET", path)
        conn.putheader("Accept", "text/event-stream")
        if last_event_id is not None:
            conn.putheader("Last-Event-ID", last_event_id)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode(errors="replace")
    finally:
        conn.close()


def streams(task_id: str, model_id: str) -> dict[str, str]:
    return {
        "api task": f"/api/tasks/{task_id}/logs?follow=1",
        "api model": f"/api/ml/models/{model_id}/logs?follow=1",
        "ui live": f"/tasks/{task_id}/live",
    }


BAD_IDS = [b"abc", b"-1", b"+5", b"1.5", b"0x10", b"5 6", "²".encode(), "٣".encode(), b"9" * 20, b"9" * 5000]


@pytest.mark.parametrize("stream", ["api task", "api model", "ui live"])
def test_an_id_the_stream_never_sent_is_a_400_before_it_starts(ended: tuple[AgentProcess, str, str], stream: str) -> None:
    agent, task_id, model_id = ended
    path = streams(task_id, model_id)[stream]
    for bad in BAD_IDS:
        status, headers, body = get(agent, path, bad)
        assert status == 400, (bad, status, body[:200])
        assert headers["Content-Type"].startswith("application/json"), (bad, headers)
        assert body.startswith('{"error": "Last-Event-ID: must be an event id this stream sent'), (bad, body)
    assert agent.api.get("/api/health").status == 200


def test_the_ui_after_parameter_is_checked_the_same_way(ended: tuple[AgentProcess, str, str]) -> None:
    agent, task_id, _ = ended
    for bad in ("abc", "%C2%B2", "9" * 30):  # %C2%B2: "²"
        status, _, body = get(agent, f"/tasks/{task_id}/live?after={bad}")
        assert status == 400 and body.startswith('{"error": "after: must be an event id'), (bad, body)


@pytest.mark.parametrize("stream", ["api task", "api model", "ui live"])
def test_the_same_headers_and_a_resume_gets_every_line_after_the_id(ended: tuple[AgentProcess, str, str], stream: str) -> None:
    agent, task_id, model_id = ended
    path = streams(task_id, model_id)[stream]
    status, headers, body = get(agent, path, b"150")
    assert status == 200 and {k: headers.get(k) for k in SSE_HEADERS} == SSE_HEADERS
    if stream == "ui live":  # lines come as HTML fragments: <div class="ln" data-n="seq">
        seqs = [int(n) for n in re.findall(r'data-n="(\d+)"', body)]
    else:
        seqs = [int(n) for n in re.findall(r"^id: (\d+)$", body, re.MULTILINE)]
    assert seqs == list(range(151, LINES + 1)), seqs[:5]  # all 150 of them, not only the last 100
    assert "event: end" in body
    status, _, body = get(agent, path, b"")  # an empty header: a new follower
    assert status == 200 and "event: end" in body
