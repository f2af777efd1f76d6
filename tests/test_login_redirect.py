"""After signing in the UI goes to `next`, only ever a plain path on this agent: the known
open-redirect bypasses (browsers drop tab/CR/LF, read "\\" as "/", and some proxies decode
escapes) all land on "/", in the function and through a real login POST."""

from __future__ import annotations

import pytest

from cnetd.security.login import safe_next
from tests.support.agent import AgentProcess
from tests.test_security import TOKEN, post_form

BYPASSES = [
    "/\t/evil.example/x",
    "/\n/evil.example/x",
    "/\r\n/evil.example/x",
    "\t//evil.example/x",
    " /evil.example",
    "/ /evil.example",
    "//evil.example/x",
    "///evil.example/x",
    "/\\evil.example/x",
    "\\\\evil.example/x",
    "/\\/evil.example",
    "/%09/evil.example/x",
    "/%0a/evil.example",
    "/%2F/evil.example",
    "/%2f%2fevil.example",
    "/%5Cevil.example",
    "/%252F/evil.example",  # double-encoded
    "/%25252F/evil.example",  # triple-encoded: refused as still-encoded
    "https:evil.example",
    "https://evil.example/",
    "http:/evil.example",
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "evil.example",
    "./x",
    "?next=//evil",
    "/\u3000/evil.example",  # ideographic space
    "/\u200b/evil.example",  # zero-width space
    "/\x00/evil.example",
    "/\x7f/evil.example",
    "",
    None,
]
KEPT = ["/", "/tasks", "/tasks?status=running&type=process", "/models/abc-123", "/tasks/x#logs",
        "/login?next=%2Ftasks", "/tasks?q=a%26b"]


@pytest.mark.parametrize("target", BYPASSES)
def test_bypasses_go_home(target: str | None) -> None:
    assert safe_next(target) == "/"


@pytest.mark.parametrize("target", KEPT)
def test_plain_paths_are_kept_as_given(target: str) -> None:
    assert safe_next(target) == target


def test_a_real_login_redirects_only_to_this_agent(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent: AgentProcess = agent_factory({"auth": {"tokens": [TOKEN]}}).start()
    for target in [t for t in BYPASSES if t]:
        status, headers = post_form(agent.url + "/login", {"token": TOKEN, "next": target})
        assert status == 303 and headers["Location"] == "/", (target, status, headers.get("Location"))
    status, headers = post_form(agent.url + "/login", {"token": TOKEN, "next": "/tasks?status=running"})
    assert status == 303 and headers["Location"] == "/tasks?status=running"
    # the sign-in page does not carry a bad target in its form either
    page = agent.api.get("/login?next=/%09/evil.example/x", headers={"Accept": "text/html"})
    assert page.status == 200 and 'name="next" value="/"' in page.text, page.text
