"""Security headers on every kind of answer of a real agent: a page, an htmx fragment, a
live stream, a static file, a JSON answer, an error, a redirect and the sign-in page."""

from __future__ import annotations

import http.client
import sys

import pytest

from tests.support.agent import AgentProcess

PY = sys.executable
HTML = {"Accept": "text/html"}
PAGE_DIRECTIVES = ["default-src 'self'", "script-src 'self'", "style-src 'self'", "object-src 'none'",
                   "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'"]


def directives(policy: str) -> set[str]:
    return {d.strip() for d in policy.split(";")}


def assert_page_headers(headers: dict[str, str], what: str) -> None:
    assert headers.get("X-Content-Type-Options") == "nosniff", what
    assert headers.get("Referrer-Policy") == "same-origin", what
    assert headers.get("X-Frame-Options") == "DENY", what
    policy = headers.get("Content-Security-Policy", "")
    assert set(PAGE_DIRECTIVES) <= {d.replace(" 'report-sample'", "") for d in directives(policy)}, (what, policy)
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, (what, policy)


def assert_other_headers(headers: dict[str, str], what: str) -> None:
    assert headers.get("X-Content-Type-Options") == "nosniff", what
    assert headers.get("Referrer-Policy") == "same-origin", what
    policy = headers.get("Content-Security-Policy", "")
    assert "default-src 'none'" in directives(policy) and "frame-ancestors 'none'" in directives(policy), (what, policy)


def stream_headers(agent: AgentProcess, path: str) -> dict[str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=20)
    try:
        conn.request("GET", path, headers={"Accept": "text/event-stream"})
        response = conn.getresponse()
        assert response.status == 200
        return dict(response.getheaders())
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/", "/tasks", "/models", "/nodes", "/login", "/tasks/no-such-task"])
def test_pages_carry_the_page_policy(agent: AgentProcess, path: str) -> None:
    reply = agent.api.get(path, headers=HTML)
    assert reply.headers["Content-Type"].startswith("text/html"), reply.headers
    assert_page_headers(reply.headers, path)


def test_fragments_streams_static_files_and_json_carry_them_too(agent: AgentProcess) -> None:
    fragment = agent.api.get("/fragments/resources", headers={**HTML, "HX-Request": "true"})
    assert fragment.status == 200 and fragment.headers["Content-Type"].startswith("text/html")
    assert_page_headers(fragment.headers, "fragment")

    task = agent.api.post("/api/tasks", {"name": "s", "command": PY, "args": ["-c", "import time; time.sleep(30)"]}).body
    live = stream_headers(agent, f"/tasks/{task['id']}/live")
    assert live["Content-Type"] == "text/event-stream"
    assert_other_headers(live, "live stream")
    agent.api.delete(f"/api/tasks/{task['id']}")

    static = agent.api.get("/static/app.js")
    assert static.status == 200 and static.headers["Content-Type"].startswith("text/javascript")
    assert_other_headers(static.headers, "static file")

    for path, accept in [("/api/health", {}), ("/api/tasks", {}), ("/api/no-such-route", {}), ("/v2/health/live", {}),
                         ("/metrics", {}), ("/no-such-page", HTML)]:
        reply = agent.api.get(path, headers=accept)
        assert_other_headers(reply.headers, path)


def test_redirects_carry_them(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent: AgentProcess = agent_factory({"auth": {"tokens": ["headers-token-0123456789"]}}).start()
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=10)
    try:
        conn.request("GET", "/tasks", headers=HTML)
        response = conn.getresponse()
        assert response.status == 303 and response.getheader("Location", "").startswith("/login")
        headers = dict(response.getheaders())
    finally:
        conn.close()
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "same-origin"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def test_pages_have_no_inline_script_or_style(agent: AgentProcess) -> None:
    """What the policy forbids is not in the markup (the browser tests also listen for
    violations; this says which template is at fault without a browser)."""
    agent.api.post("/api/tasks", {"name": "done", "command": "true"})
    for path in ("/", "/tasks", "/models", "/nodes", "/login", "/models/form"):
        text = agent.api.get(path, headers=HTML).text
        assert " style=" not in text and "<style" not in text, path
        for script in text.split("<script")[1:]:
            assert script.lstrip().startswith("src="), (path, script[:80])
