"""The web UI in a real headless Chromium against a real agent: deploy from the form,
watch it finish without reloading, predict, follow logs, stop with a confirm, see
validation errors beside their fields; every page with 0 and ~300 tasks; nothing
logged to the console, nothing requested from anywhere but the agent; and axe-core finds
nothing serious or critical on any page in any of these states (check_a11y)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from playwright.sync_api import expect

from tests.support.agent import AgentProcess
from tests.support.cluster import cluster_agent, new_prefix, start_all
from tests.support.etcd import EtcdCluster
from tests.support.waiting import wait_until
from tests.ui.conftest import Browse

PAGES = {
    "dashboard": ("/", "Dashboard"), "models": ("/models", "Models"), "tasks": ("/tasks", "Tasks"), "nodes": ("/nodes", "Nodes"),
}
TICKER = "import time; [print('tick', i, flush=True) or time.sleep(0.2) for i in range(100000)]"
# How long to wait for what the agent pushes to an open page (SSE, polling) or for a
# task's process to get going: generous, since a loaded 2-core CI box can stall for seconds.
LIVE = 20_000


def check_page(b: Browse, path: str, heading: str, shot: str) -> None:
    b.goto(path)
    expect(b.page).to_have_title(re.compile(rf"^{heading} · .+ · CNET Agent$"))
    expect(b.page.locator("h1")).to_have_text(heading)
    expect(b.page.locator("nav[aria-label=Main] a[aria-current=page]")).to_have_text(heading)
    b.shot(shot)
    b.check_a11y(shot)


def status_of(b: Browse) -> object:
    return b.page.locator("#status .badge")


def confirm(b: Browse, question: str = "") -> None:
    """Answer OK in the page's confirm dialog (hx-confirm asks there, not in window.confirm)."""
    dialog = b.page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(question)
    dialog.locator("button[value=ok]").click()


def test_every_page_with_no_tasks_and_live_updates(agent: AgentProcess, browse: Callable[..., Browse]) -> None:
    for viewport in ("laptop", "phone"):
        b = browse(agent, viewport)
        for name, (path, heading) in PAGES.items():
            check_page(b, path, heading, f"empty-{name}")
        expect(b.page.get_by_text("No cluster configured.")).to_be_visible()
        b.assert_clean()

    b = browse(agent)
    b.goto("/models")
    expect(b.page.get_by_text("No models deployed yet.")).to_be_visible()
    # Keyboard: the first Tab reaches the skip link, which moves focus to the content.
    b.page.keyboard.press("Tab")
    expect(b.page.locator(":focus")).to_have_text("Skip to content")
    b.page.keyboard.press("Enter")
    b.page.keyboard.press("Tab")
    expect(b.page.locator(":focus")).to_have_text("Deploy a model")
    # Every form control has a label.
    unlabelled = b.page.locator("input:not([type=hidden]), textarea, select").evaluate_all(
        "els => els.filter(e => !(e.labels && e.labels.length)).map(e => e.name || e.id)"
    )
    assert unlabelled == []
    b.goto("/tasks")
    expect(b.page.get_by_text("No tasks yet.")).to_be_visible()
    # A task created elsewhere shows up in the open list without a reload (polling).
    created = agent.api.post("/api/tasks", {"name": "from-the-api", "command": "true"}).body
    row = b.page.locator(f"#t-{created['id']}")
    expect(row).to_have_text("from-the-api", timeout=10_000)
    expect(b.page.locator("#task-list tr", has=row).locator(".badge")).to_have_text("completed", timeout=10_000)
    b.goto("/")
    expect(b.page.locator("a.count.s-completed .n")).to_have_text("1")
    b.assert_clean()


def test_deploy_preset_train_and_predict(ui_agent: AgentProcess, browse: Callable[..., Browse]) -> None:
    b = browse(ui_agent)
    page = b.page
    b.goto("/models")
    page.get_by_role("link", name="Linear regression").click()
    expect(page.locator("#deploy-name")).to_have_value("linear-regression-model")
    expect(page.locator("#deploy-args")).to_have_value(
        "examples/ml_models/simple_linear_regression.py\ntrain\nmodels/linear_regression_model.joblib\n1000"
    )
    expect(page.locator("#deploy-env")).to_have_value("PYTHONPATH=examples/ml_models")
    page.get_by_role("button", name="Deploy").click()
    page.wait_for_url(re.compile(r"/models/[0-9a-f-]{36}$"))
    model_id = page.url.rsplit("/", 1)[1]
    # The status reaches completed on the open page: no reload.
    expect(status_of(b)).to_have_text("completed", timeout=90_000)
    expect(page.locator("#log-lines .ln").first).to_be_visible()
    expect(page.locator("#result")).to_contain_text('"status": "success"')
    expect(page.locator("#timeline")).to_contain_text("completed (exit code 0)")
    assert page.url.endswith(model_id)

    page.locator("#predict-input_data").fill("5.5")
    page.get_by_role("button", name="Predict").click()
    value = page.locator("#prediction-value")
    expect(value).to_be_visible(timeout=60_000)
    assert abs(float(value.inner_text()) - 14.0) < 0.5, value.inner_text()
    expect(page.locator("#predictions li").first).to_contain_text("5.5")
    b.shot("model")
    b.check_a11y("model-trained")
    b.goto("/models")
    expect(page.locator(f"#m-{model_id}")).to_have_text("linear-regression-model")
    b.shot("models")
    b.check_a11y("models-one")
    b.assert_clean()

    phone = browse(ui_agent, "phone")
    phone.goto(f"/models/{model_id}")
    expect(status_of(phone)).to_have_text("completed")
    phone.shot("model")
    phone.check_a11y("model-trained")
    phone.assert_clean()


def test_task_form_follows_logs_and_stops_after_confirm(ui_agent: AgentProcess, browse: Callable[..., Browse]) -> None:
    b = browse(ui_agent)
    page = b.page
    b.goto("/tasks")
    page.locator("#task-name").fill("ticker")
    page.locator("#task-command").fill(sys.executable)
    page.locator("#task-args").fill("-c\n" + TICKER)
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(re.compile(r"/tasks/[0-9a-f-]{36}$"))
    task_id = page.url.rsplit("/", 1)[1]
    expect(status_of(b)).to_have_text("running", timeout=LIVE)
    # Lines stream in over SSE: more keep arriving on the open page.
    lines = page.locator("#log-lines .ln")
    expect(lines.first).to_be_visible(timeout=LIVE)
    seen = lines.count()
    expect(lines.nth(seen + 3)).to_be_visible(timeout=LIVE)
    expect(page.locator("#log-lines")).to_contain_text("tick 5", timeout=LIVE)
    expect(page.locator("#usage .mem polyline")).to_have_count(1, timeout=LIVE)  # the chart draws itself
    b.shot("task-running")
    b.check_a11y("task-running")
    phone = browse(ui_agent, "phone")
    phone.goto(f"/tasks/{task_id}")
    expect(phone.page.locator("#log-lines .ln").first).to_be_visible()
    phone.shot("task-running")
    phone.check_a11y("task-running")
    phone.assert_clean()

    page.get_by_role("button", name="Stop").click()
    b.check_a11y("task-stop-dialog")
    confirm(b, "Stop ticker?")
    expect(status_of(b)).to_have_text("stopped", timeout=LIVE)
    expect(page.locator("#timeline")).to_contain_text("stopped by user")
    expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    assert ui_agent.api.get(f"/api/tasks/{task_id}").body["status"] == "stopped"
    # The stream sent every line before "stopped": the page shows each stored line once, in order.
    stored = ui_agent.api.get(f"/api/tasks/{task_id}/logs?lines=10000").body
    expect(lines).to_have_count(len(stored))
    shown = lines.evaluate_all("els => els.map(e => [Number(e.dataset.n), e.textContent])")
    assert shown == [[n, line] for n, line in enumerate(stored, 1)]
    b.shot("task-stopped")
    b.check_a11y("task-stopped")
    b.assert_clean()


def test_a_late_answer_to_stop_does_not_undo_the_stopped_status(ui_agent: AgentProcess, browse: Callable[..., Browse]) -> None:
    """The Stop button's answer and the live stream both write the summary, over two
    connections, so they can arrive in either order: under load the answer (rendered
    while the task was still "running") came after the stream's "stopped" and left a
    stopped task showing as running, with a Stop button, for good (the stream had ended).
    Here the answer is held back until the stream has said "stopped", then given the
    summary of a moment before: the page must keep the newer state."""
    created = ui_agent.api.post("/api/tasks", {"name": "late-answer", "command": sys.executable,
                                               "args": ["-c", TICKER]}).body
    ui_agent.wait_status(created["id"], {"running"}, 30)
    b = browse(ui_agent)
    page = b.page
    b.goto(f"/tasks/{created['id']}")
    expect(status_of(b)).to_have_text("running")
    older = page.locator("#summary").inner_html()  # what an answer rendered before the end says
    held: list[tuple[Any, Any]] = []

    def hold(route: Any) -> None:
        held.append((route, route.fetch()))  # the stop reaches the agent; its answer waits here
        page.evaluate("window.answerHeld = true")

    page.route(f"**/tasks/{created['id']}/stop", hold)
    page.evaluate("""() => { window.answerHandled = new Promise(resolve => document.getElementById('summary')
        .addEventListener('htmx:beforeSwap', () => resolve(true), {once: true})); }""")
    page.get_by_role("button", name="Stop").click()
    confirm(b, "Stop late-answer?")
    # polled from here: wait_for_function compiles its predicate with eval, which the page's CSP forbids
    wait_until(lambda: page.evaluate("() => window.answerHeld === true"), LIVE / 1000, "the stop answer to be held")
    expect(status_of(b)).to_have_text("stopped", timeout=LIVE)  # from the stream, the answer still held
    expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    assert len(held) == 1
    route, answer = held[0]
    assert answer.status == 200
    route.fulfill(response=answer, body=older)
    assert page.evaluate("window.answerHandled") is True  # htmx has handled it (its swaps are synchronous)
    expect(status_of(b)).to_have_text("stopped")
    expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    assert ui_agent.api.get(f"/api/tasks/{created['id']}").body["status"] == "stopped"
    b.assert_clean()


def test_bad_entries_show_the_error_beside_the_field(ui_agent: AgentProcess, browse: Callable[..., Browse]) -> None:
    b = browse(ui_agent)
    page = b.page
    before = len(ui_agent.api.get("/api/ml/models").body)
    b.goto("/models")
    page.get_by_role("link", name="Linear regression").click()
    expect(page.locator("#deploy-name")).to_have_value("linear-regression-model")
    page.locator("#deploy-cpu_limit").fill("-1")
    page.get_by_role("button", name="Deploy").click()
    error = page.locator("#deploy-field-cpu_limit .field-error")
    expect(error).to_contain_text("must be a number of cores > 0")
    expect(page.locator("#deploy-cpu_limit")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#deploy-cpu_limit")).to_have_value("-1")  # what was typed stays
    expect(page.locator(".field-error")).to_have_count(1)
    b.shot("deploy-error")
    b.check_a11y("deploy-error")

    page.locator("#deploy-cpu_limit").fill("1")
    page.locator("#deploy-name").fill("")
    page.get_by_role("button", name="Deploy").click()
    expect(page.locator("#deploy-field-name .field-error")).to_contain_text("is required")
    expect(page.locator(".field-error")).to_have_count(1)

    page.locator("#deploy-name").fill("ok-name")
    page.locator("#deploy-env").fill("NOT A PAIR")
    page.get_by_role("button", name="Deploy").click()
    expect(page.locator("#deploy-field-env .field-error")).to_contain_text("expected KEY=value")

    b.goto("/tasks")
    page.locator("#task-name").fill("no-such-command")
    page.locator("#task-command").fill("definitely-not-a-command-here")
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#task-field-command .field-error")).to_be_visible()
    b.check_a11y("task-form-error")
    assert len(ui_agent.api.get("/api/ml/models").body) == before
    b.assert_clean()


def test_every_page_with_hundreds_of_tasks(agent_factory: Callable[..., AgentProcess], browse: Callable[..., Browse]) -> None:
    agent = agent_factory({"tasks": {"max_concurrent": 20}}).start()

    def create(i: int) -> str:
        if i % 5 == 0:
            body = {"name": f"model-{i}", "model_path": f"models/m{i}.joblib",
                    "script_path": "examples/ml_models/simple_linear_regression.py", "command": "true", "args": ["x"]}
            reply = agent.api.post("/api/ml/models", body)
        else:
            reply = agent.api.post("/api/tasks", {"name": f"task-{i}", "command": "true"})
        assert reply.status == 201, reply.text
        return str(reply.body["id"])

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(create, range(300)))

    for viewport in ("laptop", "phone"):
        b = browse(agent, viewport)
        for name, (path, heading) in PAGES.items():
            check_page(b, path, heading, f"many-{name}")
        b.assert_clean()

    b = browse(agent)
    page = b.page
    b.goto("/tasks")
    expect(page.locator("#task-list tbody tr")).to_have_count(50)
    page.get_by_role("link", name="Older →").click()
    expect(page.locator("h2#h-tasks + span")).to_have_text(re.compile(r"^51–100"))
    b.check_a11y("tasks-page-2")
    b.goto("/tasks?type=ml_model&page=2")
    expect(page.locator("#task-list tbody tr")).to_have_count(10)
    b.check_a11y("tasks-filtered-page-2")
    page.locator("#filter-status").select_option("pending")  # filters apply on change, no reload
    expect(page).to_have_url(re.compile(r"status=pending"))
    b.check_a11y("tasks-filtered-none")
    b.goto("/models?page=2")
    expect(page.locator("#model-list tbody tr")).to_have_count(10)
    b.check_a11y("models-page-2")
    b.goto(f"/models/{ids[0]}")
    expect(page.locator("h1")).to_have_text("model-0")
    b.check_a11y("many-model")
    b.goto(f"/tasks/{ids[1]}")
    expect(status_of(b)).to_have_text(re.compile("pending|starting|running|completed"))
    b.shot("many-task")
    b.check_a11y("many-task")
    b.assert_clean()


def test_serve_predict_warm_and_stop_serving(ui_agent: AgentProcess, browse: Callable[..., Browse]) -> None:
    from tests.test_ml_api import LINEAR_BODY

    body = {**LINEAR_BODY, "name": "served-linear", "model_path": "models/served.joblib",
            "args": [LINEAR_BODY["script_path"], "train", "models/served.joblib", "200"]}
    model = ui_agent.api.post("/api/ml/models", body).body
    ui_agent.wait_status(model["id"], {"completed"}, 90, path="/api/ml/models/")
    b = browse(ui_agent)
    page = b.page
    b.goto(f"/models/{model['id']}")
    card = page.locator("#serving")
    expect(card, "a trained model's page has its serving card").to_be_visible()
    expect(card).to_contain_text("not served")
    card.get_by_role("button", name="Serve").click()
    expect(card).to_contain_text("serving · 1 of 1 ready", timeout=60_000)
    page.locator("#predict-input_data").fill("[1.0, 2.0]")
    page.get_by_role("button", name="Predict").click()
    expect(page.locator(".prediction")).to_contain_text("answered by a warm worker")
    values = [float(v) for v in page.locator("#prediction-value").inner_text().strip("[]").split(",")]
    assert abs(values[0] - 5.0) < 0.5 and abs(values[1] - 7.0) < 0.5, values
    b.shot("model-served")
    b.check_a11y("model-served")
    card.get_by_role("button", name="Stop serving").click()
    confirm(b, "Stop serving served-linear?")
    expect(card).to_contain_text("stopped", timeout=LIVE)  # the answer, or the next poll after a stale one
    b.assert_clean()


def test_output_is_escaped_and_static_files_are_cacheable(ui_agent: AgentProcess, browse: Callable[..., Browse]) -> None:
    html = "<img src=/static/nope.png onerror=alert(1)><b>bold</b>"
    created = ui_agent.api.post("/api/tasks", {"name": "escape-me", "command": "echo", "args": [html],
                                               "env": {"SHOW": html}}).body
    b = browse(ui_agent)
    page = b.page
    b.goto(f"/tasks/{created['id']}")
    expect(status_of(b)).to_have_text("completed", timeout=LIVE)
    expect(page.locator("#log-lines .ln").first).to_have_text(html)  # shown as text, from the page or the stream
    assert page.locator("main img, main b").count() == 0
    b.assert_clean()

    css = next(u for u in b.requests if "/static/app.css?v=" in u)
    versioned = ui_agent.api.get(css[len(ui_agent.url):])
    assert versioned.status == 200 and "immutable" in versioned.headers["Cache-Control"]
    assert versioned.headers["Content-Type"].startswith("text/css")
    assert "immutable" not in ui_agent.api.get("/static/app.css").headers["Cache-Control"]
    assert ui_agent.api.get("/static/..%2Fbase.html").status == 404


def test_the_page_policy_holds_and_a_violation_is_caught(ui_agent: AgentProcess, browse: Callable[..., Browse]) -> None:
    """The agent's pages run under their CSP without a violation (every test checks that);
    here, that a violation would be seen: an inline script, an inline style and a foreign
    image are blocked and reported, and the image is never fetched."""
    b = browse(ui_agent)
    b.goto("/")
    b.page.evaluate("""() => {
        document.body.insertAdjacentHTML('beforeend',
            '<img alt="" src="http://evil.example/x.png">' + '<div id="inl" style="color: red"></div>');
        const s = document.createElement('script'); s.textContent = 'window.__ran = 1'; document.body.appendChild(s);
    }""")

    def reported() -> bool:
        b.page.evaluate("() => 0")  # a round trip, so that Playwright delivers the page's reports
        return {"img-src", "style-src-attr", "script-src-elem"} <= {v.split(" ")[0] for v in b.csp_violations}

    wait_until(reported, 10, "the three CSP violations to be reported")
    assert b.page.evaluate("() => window.__ran") is None
    failed = [line for line in b.network if "evil.example" in line and " FAILED " in line]
    assert failed, b.network  # the browser refused to fetch it
    b.requests[:] = [u for u in b.requests if "evil.example" not in u]
    b.csp_violations.clear()
    b.console_errors.clear()  # Chromium logs each refusal as a console error too


STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ignoring SIGTERM', flush=True); "
            "time.sleep(600)")


def test_stop_shows_stop_requested_at_once_and_stopped_after_the_grace(
    ui_agent: AgentProcess, browse: Callable[..., Browse]
) -> None:
    """A task that ignores SIGTERM ends only with the SIGKILL after tasks.stop_grace (10 s
    here): the page says "stop requested" as soon as Stop is confirmed, not after that."""
    created = ui_agent.api.post("/api/tasks", {"name": "stubborn", "command": sys.executable, "args": ["-c", STUBBORN]})
    task_id = created.body["id"]
    b = browse(ui_agent)
    b.goto(f"/tasks/{task_id}")
    expect(b.page.locator("#log-lines")).to_contain_text("ignoring SIGTERM", timeout=LIVE)
    b.page.get_by_role("button", name="Stop").click()
    confirm(b, "Stop stubborn?")
    expect(b.page.locator("#status")).to_contain_text("stop requested", timeout=9_000)  # before the 10 s grace ends
    assert ui_agent.api.get(f"/api/tasks/{task_id}").body["status"] == "running"
    expect(b.page.locator("#timeline")).to_contain_text("stop requested by user", timeout=LIVE)
    expect(status_of(b)).to_have_text("stopped", timeout=10_000 + LIVE)
    assert ui_agent.api.get(f"/api/tasks/{task_id}").body["exit_code"] == 137  # SIGKILL
    b.assert_clean()


def test_nodes_page_lists_the_cluster_live(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess], browse: Callable[..., Browse]
) -> None:
    """Two agents of one cluster (a real etcd): the Nodes page lists both from etcd, with
    labels and free resources, and shows the other one offline, without a reload, once it
    was killed; the dashboard says the cluster is ok."""
    prefix = new_prefix("ui")
    viewer, other = (cluster_agent(agent_factory, etcd_shared.endpoints, name, prefix=prefix, labels={"gpu": "a100"},
                                   extra={"auth": {"tokens": []}}) for name in ("ui-viewer", "ui-other"))
    start_all(viewer, other)
    b = browse(viewer)
    b.goto("/nodes")
    row = b.page.locator("#cluster tr", has_text="ui-other node")
    expect(row).to_contain_text("online", timeout=LIVE)  # the page polls: no reload
    expect(row).to_contain_text("gpu=a100")
    expect(row.get_by_role("link", name="ui-other node")).to_have_attribute("href", f"{other.url}/")
    expect(b.page.locator("#cluster")).to_contain_text("ok")
    b.shot("nodes-cluster-online")
    b.check_a11y("nodes-cluster-online")
    phone = browse(viewer, "phone")
    phone.goto("/nodes")
    expect(phone.page.locator("#cluster tr", has_text="ui-other node")).to_be_visible()
    phone.shot("nodes-cluster-online")
    phone.check_a11y("nodes-cluster-online")
    phone.assert_clean()
    other.kill()
    expect(row).to_contain_text("offline", timeout=LIVE)
    b.goto("/")
    expect(b.page.locator("dt:text-is('Cluster') + dd")).to_have_text("ok")
    b.assert_clean()


def test_a_model_page_shows_its_python_environment_and_links_its_build_log(
    agent_factory: Callable[..., AgentProcess], browse: Callable[..., Browse]
) -> None:
    agent = agent_factory()
    (agent.workdir / "six_model.py").write_text(
        "import json, sys, six\nopen(sys.argv[2], 'w').write(six.__version__)\nprint(json.dumps({'six': six.__version__}))\n")
    agent.start()
    body = {"name": "six-model", "model_path": "models/six/model.txt", "script_path": "six_model.py",
            "command": "python3", "args": ["six_model.py", "train", "models/six/model.txt"],
            "environment": {"requirements": ["six==1.16.0"], "inherit": False}}
    model = agent.api.post("/api/ml/models", body)
    assert model.status == 201, model.text
    b = browse(agent)
    page = b.page
    b.goto(f"/models/{model.body['id']}")
    expect(status_of(b)).to_have_text("completed", timeout=120_000)
    facts = page.locator(".python-env")
    expect(facts).to_contain_text("six==1.16.0")
    expect(facts).to_contain_text("ready")
    b.check_a11y("model-with-environment")
    page.locator(".python-env").get_by_role("link", name="build log").click()
    page.wait_for_url(re.compile(r"/tasks/[0-9a-f-]{36}$"))
    expect(page.locator("#log-lines")).to_contain_text("six")
    expect(page.locator("#result")).to_contain_text('"step": "done"')
    b.check_a11y("environment-build")
    b.assert_clean()
