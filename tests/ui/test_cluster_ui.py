"""The UI of a cluster in a real headless Chromium: real agents in a real etcd (TTL 3 s).

- The tasks and models lists get a Node column and a "Whole cluster" switch that keeps the
  other filters; a task another agent has is listed with its node, and its page on this
  agent shows what that node answers; after that agent is SIGKILLed, its task is listed lost
  with the reason, its node offline, and its page says what the cluster view last knew.
- The task and deploy forms get a placement choice: this node, auto, a node (the online
  ones), labels (refused with a message beside the field when a pair has no "=").
- Placed work goes through the cluster's placing, as the API's does: the scheduler's 422 "no
  node fits" shows beside the placement choice, one line per node; work placed on another
  node leads to its page here. The Nodes page marks the elected scheduler.
axe-core finds nothing serious in any of these states.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

from playwright.sync_api import expect

from tests.support.agent import AgentProcess
from tests.support.cluster import TTL, cluster_agent, new_prefix, start_all, wait_status
from tests.support.etcd import EtcdCluster, etcd_shared  # noqa: F401  (fixture)
from tests.support.waiting import wait_until
from tests.ui.conftest import Browse
from tests.ui.test_keyboard import assert_focus_visible, tab_through

PY = sys.executable
SLEEPER = ["-c", "print('hello from the other node', flush=True); import time; time.sleep(120)"]
LIVE = 20_000  # ms: what the pages poll and the cluster mirrors, on a loaded two-core box
NO_AUTH = {"auth": {"tokens": []}}


def pair(etcd: EtcdCluster, make: Callable[..., AgentProcess], viewer_extra: dict[str, Any] | None = None,
         ) -> tuple[AgentProcess, AgentProcess]:
    prefix = new_prefix("ui-cluster")
    viewer = cluster_agent(make, etcd.endpoints, "viewer", prefix=prefix, labels={"gpu": "none"},
                           extra={**NO_AUTH, **(viewer_extra or {})})
    other = cluster_agent(make, etcd.endpoints, "other", prefix=prefix, labels={"gpu": "a100"}, extra=NO_AUTH)
    start_all(viewer, other)
    wait_status(viewer, "other", "online")
    return viewer, other


def listed_on(agent: AgentProcess, task_id: str) -> dict[str, Any] | None:
    reply = agent.api.get("/api/tasks?node=all")
    assert reply.status == 200, reply.text
    return next((row for row in reply.body if row["id"] == task_id), None)


def test_whole_cluster_lists_another_agents_task_its_page_and_then_lost(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess], browse: Callable[..., Browse]  # noqa: F811
) -> None:
    viewer, other = pair(etcd_shared, agent_factory)
    viewer.api.post("/api/tasks", {"name": "mine", "command": PY, "args": ["-c", "pass"]})
    theirs = other.api.post("/api/tasks", {"name": "theirs", "command": PY, "args": SLEEPER}).body
    model = other.api.post("/api/ml/models", {
        "name": "their-model", "model_path": "models/theirs.joblib", "command": "true",
        "script_path": "examples/ml_models/simple_linear_regression.py", "args": ["x"]}).body
    wait_until(lambda: (row := listed_on(viewer, theirs["id"])) and row["status"] == "running", 20,
               "the viewer's cluster view to have the other agent's running task")
    wait_until(lambda: listed_on(viewer, model["id"]), 20, "the viewer's cluster view to have the other's model")

    b = browse(viewer)
    page = b.page
    b.goto("/tasks?status=running")
    switch = page.get_by_role("checkbox", name="Whole cluster")
    expect(switch).not_to_be_checked()
    expect(page.locator("#task-list")).not_to_contain_text("theirs")  # this node's own tasks only
    b.goto("/tasks")
    expect(page.locator("#task-list tr", has_text="mine").locator("td.node")).to_contain_text("this node")
    page.select_option("#filter-status", "running")
    expect(page).to_have_url(re.compile(r"status=running"))
    switch.focus()
    page.keyboard.press("Space")  # by keyboard: the switch keeps the status filter
    expect(page).to_have_url(re.compile(r"/tasks\?(.*&)?status=running&(.*&)?node=all"))
    row = page.locator("#task-list tr", has_text="theirs")
    expect(row.locator("td.node")).to_have_text("other")
    expect(page.locator("#task-list")).not_to_contain_text("mine")  # it completed: not running
    expect(page.locator("#h-tasks")).to_contain_text("whole cluster")
    b.shot("cluster-tasks")
    b.check_a11y("cluster-tasks")
    assert_focus_visible(tab_through(b), "/tasks?node=all")  # the switch and the placement choice included

    # Its page on this agent, from the node that has it: read-only, no live stream.
    row.get_by_role("link", name="theirs").click()
    expect(page).to_have_url(viewer.url + f"/tasks/{theirs['id']}?node=other")
    expect(page.locator("#h-remote")).to_have_text("On node other")
    expect(page.locator("#status .badge")).to_have_text("running")
    expect(page.locator("#log")).to_contain_text("hello from the other node")
    expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    expect(page.locator("[sse-connect]")).to_have_count(0)
    b.shot("remote-task")
    b.check_a11y("remote-task")
    assert_focus_visible(tab_through(b), "a task on another node")

    b.goto("/models?node=all")
    model_row = page.locator("#model-list tr", has_text="their-model")
    expect(model_row.locator("td.node")).to_have_text("other")
    expect(page.get_by_role("checkbox", name="Whole cluster")).to_be_checked()
    model_row.get_by_role("link", name="their-model").click()
    expect(page.locator("h1")).to_have_text("their-model")
    expect(page.locator("#h-remote")).to_have_text("On node other")
    b.check_a11y("remote-model")

    # The other agent dies: its unfinished task is lost, its node offline, without a reload.
    b.goto("/tasks?node=all")
    row = page.locator("#task-list tr", has_text="theirs")
    expect(row.locator(".badge")).to_have_text("running")
    other.kill()
    expect(row.locator(".badge")).to_have_text("lost", timeout=(TTL + 15) * 1000)
    expect(row.locator("td.node")).to_contain_text("offline")
    expect(row.locator("td.outcome")).to_contain_text("lost: node other offline since ")
    b.shot("cluster-tasks-lost")
    b.check_a11y("cluster-tasks-lost")
    phone = browse(viewer, "phone")
    phone.goto("/tasks?node=all")
    expect(phone.page.locator("#task-list tr", has_text="theirs")).to_contain_text("lost: node other offline since ")
    phone.shot("cluster-tasks-lost")
    phone.check_a11y("cluster-tasks-lost")
    phone.assert_clean()

    row.get_by_role("link", name="theirs").click()
    expect(page.locator("#h-remote")).to_have_text("Lost with node other")
    expect(page.locator("#status .badge")).to_have_text("lost")
    expect(page.locator(".remote-note")).to_contain_text("lost: node other offline since ")
    b.shot("remote-task-lost")
    b.check_a11y("remote-task-lost")

    # The placement choice offers online nodes only.
    b.goto("/tasks")
    page.get_by_label("A node", exact=True).check()
    expect(page.locator("#task-placement_node option")).to_have_text(["choose a node…", "viewer node (viewer) · this node"])
    b.assert_clean()


def test_placement_choice_offers_the_online_nodes_and_refuses_a_label_without_a_value(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess], browse: Callable[..., Browse]  # noqa: F811
) -> None:
    viewer, _other = pair(etcd_shared, agent_factory)
    b = browse(viewer)
    page = b.page
    b.goto("/tasks")
    choice = page.get_by_role("group", name="Where it runs placement")
    expect(choice.get_by_label("This node")).to_be_checked()
    expect(page.locator("#task-placement_node")).to_be_hidden()  # shown with its choice
    expect(page.locator("#task-placement_labels")).to_be_hidden()
    choice.get_by_label("This node").focus()
    page.keyboard.press("ArrowDown")  # radios by keyboard: auto
    page.keyboard.press("ArrowDown")  # a node
    expect(choice.get_by_label("A node", exact=True)).to_be_checked()
    select = page.locator("#task-placement_node")
    expect(select).to_be_visible()
    expect(select.locator("option")).to_have_text(
        ["choose a node…", "viewer node (viewer) · this node", "other node (other)"])
    b.check_a11y("placement-node-open")

    choice.get_by_label("Nodes with labels", exact=True).check()
    labels = page.locator("#task-placement_labels")
    expect(labels).to_be_visible()
    page.locator("#task-name").fill("placed")
    page.locator("#task-command").fill("true")
    labels.fill("nokey")
    page.get_by_role("button", name="Start").click()
    error = page.locator("#task-field-placement_labels .field-error")
    expect(error).to_have_text("placement.labels: expected key=value, got 'nokey' (e.g. region=eu-west)")
    expect(page.locator("#task-placement_labels")).to_be_focused()  # the answer's first field in error
    expect(page.locator("#task-placement_labels")).to_have_accessible_description(
        re.compile(r"expected key=value, got 'nokey'"))
    expect(page.locator("#task-placement_labels")).to_have_value("nokey")  # what was typed stays
    b.shot("placement-labels-error")
    b.check_a11y("placement-labels-error")

    b.goto("/models")
    page.get_by_role("group", name="Where it runs placement").get_by_label("A node", exact=True).check()
    expect(page.locator("#deploy-placement_node option")).to_have_count(3)
    b.check_a11y("deploy-placement-open")
    b.assert_clean()


def scheduler_elected(agent: AgentProcess) -> bool:
    reply = agent.api.get("/api/nodes")
    return reply.status == 200 and any(node.get("scheduler") for node in reply.body)


def test_placed_work_runs_where_the_choice_says_and_no_node_fits_shows_beside_it(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess], browse: Callable[..., Browse],  # noqa: F811
) -> None:
    """The forms' placement through the real API's placing: the scheduler's 422 beside the
    choice, one line per node; a node chosen by name or by labels runs the work, and the
    browser lands on its page here, as that node shows it."""
    viewer, other = pair(etcd_shared, agent_factory)
    wait_until(lambda: scheduler_elected(viewer), 20, "a scheduler to be elected")
    b = browse(viewer)
    page = b.page
    b.goto("/nodes")
    expect(page.locator("#cluster .pill.leader")).to_have_count(1)
    expect(page.locator("#cluster .pill.leader")).to_have_text("scheduler")

    b.goto("/tasks")
    page.locator("#task-name").fill("wants-h100")
    page.locator("#task-command").fill("true")
    page.get_by_label("Nodes with labels", exact=True).check()
    page.locator("#task-placement_labels").fill("gpu=h100")
    page.get_by_role("button", name="Start").click()
    error = page.locator("#task-placement-error")
    expect(error).to_contain_text("no node fits:", timeout=LIVE)
    reasons = error.locator("li")
    expect(reasons).to_have_count(2)
    expect(reasons.filter(has_text="other")).to_contain_text("gpu=a100")
    expect(reasons.filter(has_text="viewer")).to_contain_text("gpu=none")
    chosen = page.locator("#task-placement-labels")
    expect(chosen).to_be_focused()  # the choice that got the answer, described by it
    expect(chosen).to_have_accessible_description(re.compile(r"no node fits:.*gpu=a100"))
    expect(page.locator("#task-placement_labels")).to_have_value("gpu=h100")
    b.shot("placement-no-node-fits")
    b.check_a11y("placement-no-node-fits")
    assert not [t for t in viewer.api.get("/api/tasks?node=all").body if t["name"] == "wants-h100"]

    # A node by name: it runs there, and its page here says so.
    page.locator("#task-name").fill("on-other")
    page.get_by_label("A node", exact=True).check()
    page.locator("#task-placement_node").select_option("other")
    page.get_by_role("button", name="Start").click()
    expect(page).to_have_url(re.compile(r"/tasks/[0-9a-f-]{36}\?node=other$"), timeout=LIVE)
    expect(page.locator("#h-remote")).to_have_text("On node other")
    task_id = page.url.rsplit("/", 1)[1].split("?")[0]
    assert other.api.get(f"/api/tasks/{task_id}").body["name"] == "on-other"

    # The deploy form, by labels: the model is deployed on the node that carries them.
    b.goto("/models")
    page.get_by_role("link", name="Linear regression").click()
    expect(page.locator("#deploy-name")).to_have_value("linear-regression-model")
    page.get_by_label("Nodes with labels", exact=True).check()
    page.locator("#deploy-placement_labels").fill("gpu=a100")
    page.get_by_role("button", name="Deploy").click()
    expect(page).to_have_url(re.compile(r"/models/[0-9a-f-]{36}\?node=other$"), timeout=LIVE)
    expect(page.locator("h1")).to_have_text("linear-regression-model")
    expect(page.locator("#h-remote")).to_have_text("On node other")
    model_id = page.url.rsplit("/", 1)[1].split("?")[0]
    assert other.api.get(f"/api/ml/models/{model_id}").status == 200
    b.assert_clean()
