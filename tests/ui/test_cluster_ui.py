"""The UI of a cluster in a real headless Chromium: real agents in a real etcd (TTL 3 s).

- The tasks and models lists get a Node column and a "Whole cluster" switch that keeps the
  other filters; a task another agent has is listed with its node, and its page on this
  agent shows what that node answers; after that agent is SIGKILLed, its task is listed lost
  with the reason, its node offline, and its page says what the cluster view last knew.
- The task and deploy forms get a placement choice: this node, auto, a node (the online
  ones), labels (refused with a message beside the field when a pair has no "=").
- What a placement posts: the UI sends its own API the JSON body with "placement" and shows
  the answer: a 422 "no node fits" beside the placement choice, one line per node; a 201
  for a task another node runs leads to that task's page here.
axe-core finds nothing serious in any of these states.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from playwright.sync_api import expect

from tests.support.agent import AgentProcess
from tests.support.cluster import TTL, cluster_agent, new_prefix, start_all, wait_status
from tests.support.etcd import EtcdCluster, etcd_shared  # noqa: F401  (fixture)
from tests.support.stand_in import StandIn
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
    mine = viewer.api.post("/api/tasks", {"name": "mine", "command": PY, "args": ["-c", "pass"]}).body
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


REASONS = ["other: labels gpu=h100 do not match (has gpu=a100)", "viewer: labels gpu=h100 do not match (has gpu=none)"]


class PlacementApi:
    """This agent's own API as the lead's placement will answer it, at the address the agent
    advertises (the UI sends placed work there): a 422 with one reason per node for labels
    gpu=h100, else a 201 naming what node `placed_on` has: the model `placed_model` (for a
    deploy) or the task `placed_task`. A stand-in because placement is not wired into
    POST /api/tasks on main yet; the bodies it got are the UI's side of that contract."""

    def __init__(self) -> None:
        self.server = StandIn(self.answer)
        self.placed_task = ""
        self.placed_model = ""
        self.placed_on = ""

    def bodies(self) -> list[tuple[str, Any]]:
        return [(seen.raw_path, json.loads(seen.body)) for seen in self.server.seen if seen.method == "POST"]

    async def answer(self, request: web.Request, raw: bytes) -> web.StreamResponse:
        if request.method != "POST" or request.path not in ("/api/tasks", "/api/ml/models"):
            return web.json_response({"error": "not here", "status": 404, "details": {}}, status=404)
        body = json.loads(raw)
        if body.get("placement") == {"labels": {"gpu": "h100"}}:
            return web.json_response({"error": "no node fits: " + "; ".join(REASONS), "status": 422,
                                      "timestamp": "", "details": {"reasons": REASONS}}, status=422)
        placed = self.placed_model if request.path == "/api/ml/models" else self.placed_task
        return web.json_response({"id": placed, "node_id": self.placed_on, "name": body["name"]}, status=201)


@pytest.fixture
def placement_api() -> Iterator[PlacementApi]:
    api = PlacementApi()
    api.server.start()
    yield api
    api.server.stop()


def test_placement_posts_its_body_and_shows_no_node_fits_beside_the_choice(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess], browse: Callable[..., Browse],  # noqa: F811
    placement_api: PlacementApi,
) -> None:
    viewer, other = pair(etcd_shared, agent_factory, {"agent": {"advertise_url": placement_api.server.url}})
    theirs = other.api.post("/api/tasks", {"name": "placed-elsewhere", "command": PY, "args": SLEEPER}).body
    their_model = other.api.post("/api/ml/models", {
        "name": "placed-model", "model_path": "models/placed.joblib", "command": "true",
        "script_path": "examples/ml_models/simple_linear_regression.py", "args": ["x"]}).body
    placement_api.placed_task, placement_api.placed_model, placement_api.placed_on = theirs["id"], their_model["id"], "other"

    b = browse(viewer)
    page = b.page
    b.goto("/tasks")
    page.locator("#task-name").fill("wants-h100")
    page.locator("#task-command").fill("true")
    page.get_by_label("Nodes with labels", exact=True).check()
    page.locator("#task-placement_labels").fill("gpu=h100")
    page.get_by_role("button", name="Start").click()
    reasons = page.locator("#task-placement-error li")
    expect(reasons).to_have_text(REASONS)
    expect(page.locator("#task-placement-error")).to_contain_text("no node fits:")
    chosen = page.locator("#task-placement-labels")
    expect(chosen).to_be_focused()  # the choice that got the answer, described by it
    expect(chosen).to_have_accessible_description(re.compile(r"no node fits:.*other: labels gpu=h100"))
    assert placement_api.bodies()[-1] == ("/api/tasks", {"name": "wants-h100", "type": "process", "command": "true",
                                                      "placement": {"labels": {"gpu": "h100"}}})
    b.shot("placement-no-node-fits")
    b.check_a11y("placement-no-node-fits")

    # auto, on the deploy form: the body is the API's, with "placement": "auto"; the 201
    # names a task another node runs, whose page here the browser is sent to.
    b.goto("/models")
    page.get_by_role("link", name="Linear regression").click()
    expect(page.locator("#deploy-name")).to_have_value("linear-regression-model")
    page.get_by_label("Auto").check()
    page.get_by_role("button", name="Deploy").click()
    expect(page).to_have_url(viewer.url + f"/models/{their_model['id']}?node=other")
    expect(page.locator("h1")).to_have_text("placed-model")
    path, body = placement_api.bodies()[-1]
    assert path == "/api/ml/models" and body["placement"] == "auto" and body["name"] == "linear-regression-model"

    b.goto("/tasks")
    page.locator("#task-name").fill("on-other")
    page.locator("#task-command").fill("true")
    page.get_by_label("A node", exact=True).check()
    page.locator("#task-placement_node").select_option("other")
    page.get_by_role("button", name="Start").click()
    expect(page).to_have_url(viewer.url + f"/tasks/{theirs['id']}?node=other")
    expect(page.locator("#h-remote")).to_have_text("On node other")
    assert placement_api.bodies()[-1][1]["placement"] == {"node_id": "other"}
    b.assert_clean()
