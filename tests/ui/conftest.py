"""Browser tests: Debian's Chromium driven by Playwright against a real agent process.

Every page is opened through `Browse`, which records console errors, Content-Security-
Policy violations and every request the page makes, so a test can assert that nothing went
wrong and nothing left the agent. A CSP violation on any page fails the test that opened it.
`Browse.check_a11y` runs axe-core on the page as it is (tests/ui/axe.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import REPO, AgentProcess
from tests.ui import axe

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (bin/setup-venv ml,dev)")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
FAILURES = REPO / "test-artifacts" / "ui-failures"  # what each page showed when a test failed
TRACE = os.environ.get("CNET_UI_TRACE") == "1"  # also keep a Playwright trace of every failed test
VIEWPORTS = {"laptop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: ./bin/test installs Debian's chromium as root", allow_module_level=True)


@dataclass
class Browse:
    """A page of one browser context, with what it logged and requested."""

    page: Any
    base_url: str
    viewport: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    network: list[str] = field(default_factory=list)  # "+seconds METHOD url -> status", for failure reports
    csp_violations: list[str] = field(default_factory=list)

    def goto(self, path: str) -> Any:
        response = self.page.goto(self.base_url + path, wait_until="load")
        assert response is not None and response.status < 400, f"GET {path}: {response and response.status}"
        return response

    def shot(self, name: str, full_page: bool = True) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}-{self.viewport}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def check_a11y(self, name: str) -> list[axe.Finding]:
        """axe-core on the page as it is now (tests/ui/axe.py): fails on a serious or
        critical finding, prints the others."""
        return axe.audit(self.page, f"{name}-{self.viewport}")

    def assert_clean(self) -> None:
        """No console error, no CSP violation, no uncaught exception, no request to anything but the agent."""
        assert self.console_errors == [], self.console_errors
        assert self.csp_violations == [], self.csp_violations
        strangers = [u for u in self.requests if not u.startswith(self.base_url + "/")]
        assert strangers == [], f"requests that left the agent: {strangers}"


# Playwright's full-page screenshots apply an empty inline style, which the page's policy
# blocks and reports (the agent sends 'report-sample', so an empty sample means an empty
# style). An empty style changes nothing, so that one report is not held against the page.
# Screenshots also hide the caret: `caret-color: transparent !important` on every field,
# through the CSSOM (allowed). When a poll swaps in a fragment meanwhile, htmx settles a
# field that has an id by first copying the old field's attributes onto the new one, that
# style attribute included, which the policy blocks: Playwright's doing, not the page's.
EMPTY_STYLE_HASH = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="  # sha256 of ""
CARET_STYLE = "caret-color: transparent !important;"
CARET_STYLE_HASH = "sha256-LCYO6aZgIIKUnjcSr4gFsHQ6Y4vrxnN7Ev5la8a4W4Y="  # sha256 of CARET_STYLE
PLAYWRIGHTS_OWN = (EMPTY_STYLE_HASH, CARET_STYLE_HASH)
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", function (e) {
  if (e.violatedDirective === "style-src-attr" &&
      (e.sample === "" || e.sample === """ + json.dumps(CARET_STYLE) + """)) { return; }
  window.__cnetCspViolation(e.violatedDirective + " blocked " + (e.blockedURI || "inline") +
    (e.sample ? " [" + e.sample + "]" : "") + " at " + e.sourceFile + ":" + e.lineNumber + " (" + location.pathname + ")");
});
"""


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, f"ui_report_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    reports = [getattr(request.node, f"ui_report_{when}", None) for when in ("setup", "call")]
    return any(r is not None and r.failed for r in reports)


def _save_failure(directory: Path, b: Browse, index: int) -> None:
    """A screenshot, the DOM and the network log of a page, as it was when the test failed."""
    stem = directory / f"{index}-{b.viewport}"
    try:
        b.page.screenshot(path=f"{stem}.png", full_page=True, timeout=10_000)
        Path(f"{stem}.html").write_text(b.page.content())
    except Exception as exc:  # the page may be gone: keep what else there is
        Path(f"{stem}.error.txt").write_text(repr(exc))
    Path(f"{stem}.log").write_text("\n".join([f"url: {b.page.url}", "console errors:", *b.console_errors,
                                               "CSP violations:", *b.csp_violations, "network:", *b.network]) + "\n")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def browse(browser: Any, request: pytest.FixtureRequest) -> Iterator[Callable[..., Browse]]:
    """browse(agent, viewport="laptop") -> a fresh context and page watched for errors.

    When the test fails, every page's screenshot, DOM and network log (and, with
    CNET_UI_TRACE=1, a Playwright trace) go to test-artifacts/ui-failures/<test>/."""
    contexts: list[Any] = []
    made: list[Browse] = []
    agents: list[AgentProcess] = []
    started = time.monotonic()

    def open_page(agent: AgentProcess, viewport: str = "laptop") -> Browse:
        context = browser.new_context(viewport=VIEWPORTS[viewport], device_scale_factor=1, base_url=agent.url)
        context.set_default_timeout(15_000)
        if TRACE:
            context.tracing.start(screenshots=True, snapshots=True)
        contexts.append(context)
        if agent not in agents:
            agents.append(agent)
        page = context.new_page()
        b = Browse(page=page, base_url=agent.url, viewport=viewport)
        # Every violation of the page's policy, reported from the page itself (the binding
        # and the listener are Playwright's, outside the page's CSP, and outlive navigations).
        context.expose_binding("__cnetCspViolation", lambda source, text: b.csp_violations.append(text))
        context.add_init_script(CSP_LISTENER)
        page.on("console", lambda m: b.console_errors.append(f"{m.type}: {m.text} ({page.url})")
                if m.type == "error" and not any(h in m.text for h in PLAYWRIGHTS_OWN) else None)
        page.on("pageerror", lambda e: b.console_errors.append(f"uncaught: {e} ({page.url})"))
        page.on("request", lambda r: b.requests.append(r.url))
        stamp = lambda: f"+{time.monotonic() - started:7.3f}s"  # noqa: E731
        page.on("request", lambda r: b.network.append(f"{stamp()} {r.method} {r.url}"))
        page.on("response", lambda r: b.network.append(f"{stamp()} {r.request.method} {r.url} -> {r.status}"))
        page.on("requestfailed", lambda r: b.network.append(f"{stamp()} {r.method} {r.url} FAILED {r.failure}"))
        made.append(b)
        return b

    yield open_page
    failed = _failed(request)
    directory = FAILURES / re.sub(r"[^\w.-]+", "_", request.node.name)
    if failed:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for index, b in enumerate(made):
            _save_failure(directory, b, index)
        for index, agent in enumerate(agents):
            (directory / f"agent-{index}.log").write_text(agent.log_text())
    for index, context in enumerate(contexts):
        if TRACE:
            context.tracing.stop(path=str(directory / f"trace-{index}.zip") if failed else None)
        context.close()
    violations = [v for b in made for v in b.csp_violations]
    assert violations == [], f"Content-Security-Policy violations: {violations}"


@pytest.fixture(scope="module")
def ui_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One agent shared by a module's flows (each starts from what it creates itself)."""
    workdir = tmp_path_factory.mktemp("ui-agent")
    agent = AgentProcess(workdir).start()
    try:
        yield agent
    finally:
        agent.stop()
        agent.kill_task_processes()
        shutil.rmtree(workdir / "state" / "logs", ignore_errors=True)
