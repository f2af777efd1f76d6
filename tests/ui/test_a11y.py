"""axe-core on the pages and states the flows of test_ui.py do not reach: the sign-in page
with and without its error, a signed-in page (its Sign out button), the not-found page, and
the forms' errors on a phone. (test_ui.py checks every other page in the states it makes.)"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import expect

from tests.support.agent import AgentProcess
from tests.support.fake_gpus import FakeGpus
from tests.test_security import TOKEN
from tests.ui.conftest import Browse


def drop_console_errors(b: Browse, status: int) -> None:
    """Chromium logs a console error for a page answered with an error status, which is
    what these pages are: that one is expected, any other still fails the test."""
    b.console_errors[:] = [e for e in b.console_errors if f"status of {status}" not in e]


def test_sign_in_page_with_and_without_its_error(agent_factory: Callable[..., AgentProcess],
                                                  browse: Callable[..., Browse]) -> None:
    agent = agent_factory({"auth": {"tokens": [TOKEN]}}).start()
    for viewport in ("laptop", "phone"):
        b = browse(agent, viewport)
        page = b.page
        b.goto("/login")
        token = page.get_by_label("API token")
        expect(token).to_be_focused()
        b.check_a11y("login")
        token.fill("not-the-token-0123456789")
        page.keyboard.press("Enter")
        expect(page.get_by_role("alert")).to_have_text("That token is not valid.")
        expect(token).to_have_attribute("aria-invalid", "true")
        expect(token).to_have_accessible_description("That token is not valid.")  # read out with the field
        b.shot("login-error")
        b.check_a11y("login-error")
        drop_console_errors(b, 401)
        token.fill(TOKEN)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(agent.url + "/")
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        b.check_a11y("dashboard-signed-in")
        b.assert_clean()


def test_not_found_page(agent: AgentProcess, browse: Callable[..., Browse]) -> None:
    for viewport in ("laptop", "phone"):
        b = browse(agent, viewport)
        response = b.page.goto(agent.url + "/tasks/no-such-task")
        assert response is not None and response.status == 404
        expect(b.page.locator("h1")).to_have_text("Not found")
        b.check_a11y("not-found")
        drop_console_errors(b, 404)
        b.assert_clean()


def test_form_errors_on_a_phone(agent: AgentProcess, browse: Callable[..., Browse]) -> None:
    b = browse(agent, "phone")
    page = b.page
    b.goto("/models")
    page.get_by_role("link", name="Linear regression").click()
    expect(page.locator("#deploy-name")).to_have_value("linear-regression-model")
    page.locator("#deploy-cpu_limit").fill("-1")
    page.get_by_role("button", name="Deploy").click()
    expect(page.locator("#deploy-field-cpu_limit .field-error")).to_contain_text("must be a number of cores > 0")
    b.shot("deploy-error")
    b.check_a11y("deploy-error")

    b.goto("/tasks")
    page.locator("#task-name").fill("no-such-command")
    page.locator("#task-command").fill("definitely-not-a-command-here")
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#task-field-command .field-error")).to_be_visible()
    b.check_a11y("task-form-error")
    b.assert_clean()


def test_gpus_on_the_dashboard_and_a_gpu_task_chart(agent_factory: Callable[..., AgentProcess],
                                                     browse: Callable[..., Browse], tmp_path: Path) -> None:
    """A node with GPUs (the NVML test double: no GPU on these machines) shows each GPU on
    the dashboard, and a task with GPUs charts its GPU memory."""
    fake = FakeGpus(tmp_path / "gpus.json")
    agent = agent_factory({"gpus": {"simulate_file": str(fake.path), "refresh": "0.2s"}}).start()
    reply = agent.api.post("/api/tasks", {"name": "gpu", "command": "python3", "args": ["-c", "import time; time.sleep(60)"],
                                          "resources": {"gpu_memory": "1GiB"}})
    assert reply.status == 201, reply.text
    running = agent.wait_status(reply.body["id"], {"running"})
    pid = next(int(e["message"].split("pid ")[1].split(",")[0])
               for e in agent.api.get(f"/api/tasks/{running['id']}/events").body if e["type"] == "started")
    fake.account(pid, fake.uuids[0], 300 * 2**20)
    for viewport in ("laptop", "phone"):
        b = browse(agent, viewport)
        b.goto("/")
        expect(b.page.get_by_role("progressbar", name="GPU 1 memory usage")).to_be_visible()
        expect(b.page.get_by_text("Simulated GPU 0")).to_be_visible()
        b.check_a11y("dashboard-gpus")
        b.goto(f"/tasks/{running['id']}")
        expect(b.page.get_by_role("img", name=re.compile(r"^GPU memory usage"))).to_be_visible(timeout=20_000)
        b.shot("task-gpu-chart")
        b.check_a11y("task-gpu-chart")
        b.assert_clean()
