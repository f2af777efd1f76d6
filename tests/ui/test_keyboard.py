"""The UI with the keyboard alone, in a real Chromium: Tab reaches every interactive element
of each page, in the page's order, and each shows a focus ring that can be seen (2 px or
more, 3:1 against what is behind it); the deploy form is filled and sent with keys only;
Stop's confirmation is answered with keys; and the focus goes somewhere sensible after
htmx swaps content in (the field in error, the new result or status, the same link after a
poll redraws a list), never back to the top of the page."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.support.agent import AgentProcess
from tests.support.http import Client
from tests.test_security import TOKEN
from tests.ui.conftest import Browse
from tests.ui.test_ui import LIVE, TICKER, status_of

FOCUSABLE = ("a[href], button, input:not([type=hidden]), select, textarea, [tabindex], "
             "summary, [contenteditable=''], [contenteditable=true]")

# One line per element, the same for the element found in the page and the element focused
# (a poll may redraw a part of the page between two Tabs: identity would not survive that).
DESCRIBE = """const describe = (e) => {
  const text = (e.getAttribute("aria-label") || e.innerText || e.value || "").trim()
    .replace(/\\s+/g, " ").slice(0, 40);
  return e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + (e.name ? "[name=" + e.name + "]" : "") +
    (e.getAttribute("href") ? "[href=" + e.getAttribute("href") + "]" : "") + ' "' + text + '"';
};"""

TAB_STOPS = "(selector) => {\n  " + DESCRIBE + """
  const all = [...document.querySelectorAll(selector)];
  const positive = all.filter((e) => e.tabIndex > 0).map(describe);
  // A group of radios is one Tab stop: its checked radio, else its first (arrows move within it).
  const radioStop = (e) => {
    if (e.type !== "radio" || !e.name) { return true; }
    const group = [...(e.form || document).querySelectorAll('input[type=radio][name="' + CSS.escape(e.name) + '"]')];
    const checked = group.find((r) => r.checked);
    return e === (checked || group[0]);
  };
  const stops = all.filter((e) => e.tabIndex >= 0 && !e.disabled && !e.closest("[inert]") &&
    e.checkVisibility({visibilityProperty: true}) && radioStop(e));
  return {positive, stops: stops.map(describe)};
}"""

# The focused element and its focus ring: the outline's style, width and contrast with the
# colour behind it (the element's own background for an inset outline, else the first
# ancestor with one), and whether it is on screen.
FOCUSED = "() => {\n  " + DESCRIBE + """
  const e = document.activeElement;
  if (!e || e === document.body || e === document.documentElement) { return null; }
  const rgb = (c) => { const m = c.match(/[\\d.]+/g).map(Number);
    return {r: m[0], g: m[1], b: m[2], a: m.length > 3 ? m[3] : 1}; };
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
  const s = getComputedStyle(e);
  let behind = {r: 255, g: 255, b: 255, a: 1};
  for (let a = parseFloat(s.outlineOffset) < 0 ? e : e.parentElement; a; a = a.parentElement) {
    const c = rgb(getComputedStyle(a).backgroundColor);
    if (c.a > 0.5) { behind = c; break; }
  }
  const ring = rgb(s.outlineColor);
  const [hi, lo] = [lum(ring), lum(behind)].sort((x, y) => y - x);
  const box = e.getBoundingClientRect();
  return {what: describe(e), style: s.outlineStyle, width: parseFloat(s.outlineWidth) || 0,
          contrast: Math.round((hi + 0.05) / (lo + 0.05) * 100) / 100,
          onScreen: box.bottom > 0 && box.top < innerHeight && box.right > 0 && box.left < innerWidth};
}"""


def focused(page: Any) -> Any:
    return page.locator(":focus")


def tab_through(b: Browse) -> list[dict[str, Any]]:
    """Tab from the top of the page to its end; what each Tab focused."""
    found = b.page.evaluate(TAB_STOPS, FOCUSABLE)
    assert found["positive"] == [], f"a positive tabindex breaks the page's order: {found['positive']}"
    # Start before the first element, as a page just opened does (blur alone would not move
    # where the next Tab starts from).
    b.page.evaluate("""() => { const top = document.documentElement; top.tabIndex = -1; top.focus();
                              top.removeAttribute("tabindex"); window.scrollTo(0, 0); }""")
    seen: list[dict[str, Any]] = []
    for _ in range(len(found["stops"]) + 3):
        b.page.keyboard.press("Tab")
        state = b.page.evaluate(FOCUSED)
        if state is None or (seen and state["what"] == seen[0]["what"]):
            break  # past the last element: the focus left the page (or came round again)
        seen.append(state)
    assert [s["what"] for s in seen] == found["stops"], "Tab missed an element or took them out of the page's order"
    return seen


def assert_focus_visible(seen: list[dict[str, Any]], page_name: str) -> None:
    weak = [s for s in seen if s["style"] in ("none", "hidden") or s["width"] < 2 or s["contrast"] < 3 or not s["onScreen"]]
    assert weak == [], f"{page_name}: elements whose focus cannot be seen: {weak}"


def tab_to(page: Any, locator: Any, limit: int = 80) -> None:
    """Press Tab until `locator` has the focus (fails after `limit` presses)."""
    for _ in range(limit):
        if locator.evaluate("e => e === document.activeElement"):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{limit} Tabs did not reach {locator}")


def retype(page: Any, text: str) -> None:
    page.keyboard.press("Control+A")
    page.keyboard.type(text)


@pytest.fixture(scope="module")
def kb_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """An agent with a token, so that its pages have the sign-in page and Sign out."""
    agent = AgentProcess(tmp_path_factory.mktemp("kb-agent"), {"auth": {"tokens": [TOKEN]}})
    agent.api = Client(agent.url, TOKEN)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
        agent.kill_task_processes()


def signed_in(b: Browse) -> None:
    """Sign in with the keyboard: the token field has the focus when the page opens."""
    b.goto("/login")
    expect(focused(b.page)).to_have_attribute("id", "token")
    b.page.keyboard.type(TOKEN)
    b.page.keyboard.press("Enter")
    b.page.wait_for_url(b.base_url + "/")


def test_tab_reaches_every_control_of_every_page_with_a_visible_focus(
    kb_agent: AgentProcess, browse: Callable[..., Browse]
) -> None:
    task = kb_agent.api.post("/api/tasks", {"name": "kb-done", "command": "true"}).body
    model = kb_agent.api.post("/api/ml/models", {"name": "kb-model", "model_path": "models/kb.joblib", "command": "true",
                                                 "script_path": "examples/ml_models/simple_linear_regression.py",
                                                 "args": ["x"]}).body
    for created in (task, model):
        kb_agent.wait_done(created["id"], 30)
    b = browse(kb_agent)
    b.goto("/login")
    assert_focus_visible(tab_through(b), "/login")
    signed_in(b)
    for path in ["/", "/models", "/tasks", "/nodes", f"/tasks/{task['id']}", f"/models/{model['id']}"]:
        b.goto(path)
        seen = tab_through(b)
        assert seen[0]["what"] == 'a[href=#main] "Skip to content"', seen[0]
        assert any(s["what"] == 'button "Sign out"' for s in seen), seen
        assert_focus_visible(seen, path)
    b.assert_clean()


def test_deploy_form_by_keyboard_alone(kb_agent: AgentProcess, browse: Callable[..., Browse]) -> None:
    b = browse(kb_agent)
    page = b.page
    signed_in(b)
    b.goto("/models")
    tab_to(page, page.get_by_role("link", name="Linear regression"))
    page.keyboard.press("Enter")  # htmx swaps the form in, filled from the preset
    expect(page.locator("#deploy-name")).to_have_value("linear-regression-model")
    expect(focused(page)).to_have_text("Linear regression")  # the focus stays where it was, not at the top
    tab_to(page, page.locator("#deploy-name"))
    retype(page, "kb-linear")
    tab_to(page, page.locator("#deploy-cpu_limit"))
    retype(page, "-1")
    tab_to(page, page.get_by_role("button", name="Deploy"))
    page.keyboard.press("Enter")
    expect(page.locator("#deploy-field-cpu_limit .field-error")).to_contain_text("must be a number of cores > 0")
    expect(page.locator("#deploy-cpu_limit")).to_be_focused()  # the focus went to the field in error
    retype(page, "1")
    page.keyboard.press("Enter")  # a text field's Enter sends its form
    page.wait_for_url(re.compile(r"/models/[0-9a-f-]{36}$"))
    expect(page.locator("h1")).to_have_text("kb-linear")
    b.assert_clean()


def test_stop_is_confirmed_or_cancelled_with_the_keyboard(kb_agent: AgentProcess, browse: Callable[..., Browse]) -> None:
    created = kb_agent.api.post("/api/tasks", {"name": "kb-ticker", "command": sys.executable, "args": ["-c", TICKER]}).body
    kb_agent.wait_status(created["id"], {"running"}, 30)
    b = browse(kb_agent)
    page = b.page
    signed_in(b)
    b.goto(f"/tasks/{created['id']}")
    stop = page.locator("#summary").get_by_role("button", name="Stop")
    tab_to(page, stop)
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name=re.compile(r"^Stop kb-ticker\?"))
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()  # the harmless answer first
    b.shot("stop-dialog")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(stop).to_be_focused()  # back where the question was asked
    assert kb_agent.api.get(f"/api/tasks/{created['id']}").body["status"] == "running"

    page.keyboard.press("Space")  # asks again
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Tab")
    expect(dialog.get_by_role("button", name="Stop")).to_be_focused()
    page.keyboard.press("Enter")
    expect(status_of(b)).to_have_text("stopped", timeout=LIVE)
    expect(page.locator("#status")).to_be_focused()  # the Stop button is gone: the focus is on the new status
    assert kb_agent.api.get(f"/api/tasks/{created['id']}").body["status"] == "stopped"
    b.assert_clean()


def test_focus_after_swaps_goes_to_the_answer_and_survives_polls(
    kb_agent: AgentProcess, browse: Callable[..., Browse]
) -> None:
    model = kb_agent.api.post("/api/ml/models", {"name": "kb-predict", "model_path": "models/kbp.joblib", "command": "true",
                                                 "script_path": "examples/ml_models/simple_linear_regression.py",
                                                 "args": ["x"]}).body
    kb_agent.wait_done(model["id"], 30)
    # Its "training" was `true`: give it a model file, so that a prediction runs (`true` again).
    (kb_agent.workdir / "models" / "kbp.joblib").write_bytes(b"a stand-in: the predict command ignores it")
    b = browse(kb_agent)
    page = b.page
    signed_in(b)
    # A poll that redraws the dashboard's counts keeps the focus on the link it was on.
    count = page.locator("a.count.s-completed")
    tab_to(page, count)
    before = count.locator(".n").inner_text()
    done = kb_agent.api.post("/api/tasks", {"name": "kb-poll", "command": "true"}).body
    kb_agent.wait_done(done["id"], 30)
    expect(count.locator(".n")).not_to_have_text(before, timeout=LIVE)
    expect(count).to_be_focused()
    page.keyboard.press("Tab")  # and Tab goes on from there, not from the top of the page
    expect(focused(page)).to_have_attribute("href", "/tasks?status=failed")

    # A filter changed from the keyboard redraws the list and leaves the focus on the filter.
    b.goto("/tasks")
    status_filter = page.get_by_label("Status")
    tab_to(page, status_filter)
    page.keyboard.press("ArrowDown")  # "any" -> "preparing" (the first state): applied on change
    expect(page).to_have_url(re.compile(r"status=preparing"))
    expect(status_filter).to_be_focused()

    # The predict form: an error puts the focus on the field, an answer on the answer.
    b.goto(f"/models/{model['id']}")
    field = page.get_by_label(re.compile("^Input"))
    tab_to(page, field)
    page.keyboard.press("Enter")
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#predict-input_data")).to_be_focused()
    page.keyboard.type("5.5")
    tab_to(page, page.get_by_role("button", name="Predict"))
    page.keyboard.press("Enter")
    expect(page.locator(".prediction")).to_be_focused(timeout=LIVE)
    b.assert_clean()
