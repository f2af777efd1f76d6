"""Browser tests: Debian's Chromium driven by Playwright against a real agent process.

Every page is opened through `Browse`, which records console errors and every request
the page makes, so a test can assert that nothing went wrong and nothing left the agent.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import REPO, AgentProcess

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (bin/setup-venv ml,dev)")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
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

    def goto(self, path: str) -> Any:
        response = self.page.goto(self.base_url + path, wait_until="load")
        assert response is not None and response.status < 400, f"GET {path}: {response and response.status}"
        return response

    def shot(self, name: str, full_page: bool = True) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}-{self.viewport}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def assert_clean(self) -> None:
        """No console error, no uncaught exception, no request to anything but the agent."""
        assert self.console_errors == [], self.console_errors
        strangers = [u for u in self.requests if not u.startswith(self.base_url + "/")]
        assert strangers == [], f"requests that left the agent: {strangers}"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def browse(browser: Any) -> Iterator[Callable[..., Browse]]:
    """browse(agent, viewport="laptop") -> a fresh context and page watched for errors."""
    contexts: list[Any] = []
    made: list[Browse] = []

    def open_page(agent: AgentProcess, viewport: str = "laptop") -> Browse:
        context = browser.new_context(viewport=VIEWPORTS[viewport], device_scale_factor=1, base_url=agent.url)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        b = Browse(page=page, base_url=agent.url, viewport=viewport)
        page.on("console", lambda m: b.console_errors.append(f"{m.type}: {m.text} ({page.url})") if m.type == "error" else None)
        page.on("pageerror", lambda e: b.console_errors.append(f"uncaught: {e} ({page.url})"))
        page.on("request", lambda r: b.requests.append(r.url))
        made.append(b)
        return b

    yield open_page
    for context in contexts:
        context.close()


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
