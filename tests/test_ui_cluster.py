"""The UI's cluster parts without a browser: the placement choice -> the API body (and the
placing service's errors -> the message beside the right field), a single node unchanged (no switch,
no placement, no Node column, a placement posted by hand refused), and the page of a task
another node has, with that node treated as hostile: its answer is escaped, an answer that
is not a task (HTML, a bad status, too big) shows what the cluster view knows instead, and
an id or node hint that could be read as another path never leaves this agent.

The hostile node is a stand-in server whose record and task summary are written into a
real etcd, where a real agent of the cluster finds them as it finds any node's."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web

from cnetd.cluster.placing import NoNodeFits
from cnetd.cluster.records import node_key, task_key
from cnetd.errors import DomainError, Invalid, Unavailable
from cnetd.ui.forms import DEPLOY_FIELDS, PLACEMENT_FIELDS, TASK_FIELDS, Form, form_field, label_pairs, task_body
from cnetd.ui.placing import show
from cnetd.ui.remote import task_of
from cnetd.ui.render import environment, templates_dir
from tests.support.agent import AgentProcess
from tests.support.cluster import cluster_agent, new_prefix, put_key, running_member, wait_status
from tests.support.etcd import EtcdCluster, etcd_shared  # noqa: F401  (fixtures)
from tests.support.stand_in import StandIn

TASK_ID = "7f1c2a9e-0000-4000-8000-00000000beef"


def form(**values: str) -> Form:
    return Form(values={n: "" for n in (*TASK_FIELDS, *PLACEMENT_FIELDS)} | {"name": "t", "command": "true", **values})


def invalid(call: Callable[[], object]) -> Invalid:
    with pytest.raises(Invalid) as caught:
        call()
    return caught.value


# --- the placement choice -> the body the API gets ------------------------------------------


def test_each_placement_choice_is_the_apis_placement() -> None:
    assert "placement" not in task_body(form())  # this node: left out, as an API caller would
    assert "placement" not in task_body(form(placement="here", placement_node="other"))
    assert task_body(form(placement="auto"))["placement"] == "auto"
    assert task_body(form(placement="node", placement_node="other"))["placement"] == {"node_id": "other"}
    assert task_body(form(placement="labels", placement_labels=" region=eu-west ,gpu=a100\nrack=r1 "))["placement"] == {
        "labels": {"region": "eu-west", "gpu": "a100", "rack": "r1"}}
    assert invalid(lambda: task_body(form(placement="node"))).field == "placement.node_id"
    assert invalid(lambda: task_body(form(placement="elsewhere"))).field == "placement"


@pytest.mark.parametrize(("text", "message"), [
    ("nokey", "expected key=value, got 'nokey' (e.g. region=eu-west)"),
    ("", "enter at least one key=value pair, e.g. region=eu-west"),
    (" , ", "enter at least one key=value pair, e.g. region=eu-west"),
    ("=a100", "expected key=value, got '=a100' (e.g. region=eu-west)"),
    ("gpu=", "gpu: expected a value of 1-128 printable characters"),
    ("a b=c", "label name 'a b': must be 1-63 letters, digits and _ . / -, starting and ending with a letter or digit"),
    ("gpu=a\x01", "gpu: expected a value of 1-128 printable characters"),
    ("gpu=a, gpu=b", "gpu is asked for twice ('a' and 'b')"),
    (",".join(f"k{i}=v" for i in range(65)), "at most 64 pairs, got 65"),
])
def test_the_labels_field_says_what_is_wrong(text: str, message: str) -> None:
    error = invalid(lambda: label_pairs(text))
    assert (error.field, error.message) == ("placement.labels", f"placement.labels: {message}")
    shown = form(placement="labels", placement_labels=text).fail(error)
    assert shown.errors == {"placement_labels": f"placement.labels: {message}"}


def test_the_apis_errors_land_beside_their_fields() -> None:
    names = (*DEPLOY_FIELDS, *PLACEMENT_FIELDS)
    assert form_field("placement", names) == "placement"
    assert form_field("placement.node_id", names) == "placement_node"
    assert form_field("placement.labels", names) == "placement_labels"
    assert form_field("placement.labels.gpu", names) == "placement_labels"
    assert form_field("resources.cpu_limit", names) == "cpu_limit"
    assert form_field("placement", DEPLOY_FIELDS) == ""  # a form without the choice: the form's own error


def test_each_error_shows_where_it_belongs() -> None:
    reasons = ["a: needs 4 cpu, has 1.5 free", "b: labels gpu=h100 do not match (has gpu=a100)"]
    fits = form(placement="auto")
    show(fits, NoNodeFits(reasons), placed=True)
    assert fits.errors == {"placement": "no node fits: " + "; ".join(reasons)} and fits.reasons == reasons
    away = form(placement="auto")
    show(away, Unavailable("cannot place work while etcd does not answer"), placed=True)
    assert away.errors == {"placement": "cannot place work while etcd does not answer"}
    named = form(placement="labels", placement_labels="gpu")
    show(named, Invalid("placement.labels", "expected a non-empty object"), placed=True)
    assert named.errors == {"placement_labels": "placement.labels: expected a non-empty object"}
    refused = form(placement="node", placement_node="b")  # the node it went to refused it, naming a field
    show(refused, DomainError("working_dir: /srv is outside the allowed roots", {"field": "working_dir"}), placed=True)
    assert refused.errors == {"working_dir": "/srv is outside the allowed roots"}
    other = form(placement="auto")
    show(other, DomainError("request body too large"), placed=True)
    assert other.errors == {"": "request body too large"}
    here = form()
    show(here, Unavailable("too busy"), placed=False)
    assert here.errors == {"": "too busy"}
    limits = form(placement="auto")
    show(limits, Invalid("resources.cpu_limit", "must be > 0"), placed=True)
    assert limits.errors == {"cpu_limit": "resources.cpu_limit: must be > 0"}


# --- a single node: nothing changes ---------------------------------------------------------


def test_a_single_node_shows_no_switch_no_placement_and_refuses_one_posted_by_hand(agent: AgentProcess) -> None:
    for path in ("/tasks", "/tasks?node=all", "/models", "/models?node=all"):
        page = agent.api.get(path).text
        assert "Whole cluster" not in page and 'name="placement"' not in page, path
        assert ">Node</th>" not in page and "whole cluster" not in page, path
    answer = agent.api.post("/tasks", raw=urlencode({"name": "t", "command": "true", "placement": "auto"}).encode(),
                            headers={"Content-Type": "application/x-www-form-urlencoded", "HX-Request": "true"})
    assert answer.status == 200 and "HX-Redirect" not in answer.headers
    assert "placement: this agent is not part of a cluster" in answer.text
    assert agent.api.get("/api/tasks").body == []  # nothing was created


# --- a task another node has: that node is hostile ------------------------------------------


def hostile_task(**fields: Any) -> dict[str, Any]:
    return {"id": TASK_ID, "name": "ok", "type": "process", "kind": "run", "status": "running", "command": "true",
            "args": [], "env": {}, "working_dir": ".", "resources": {}, "created_at": "2026-01-01T00:00:00Z",
            "node_id": "hostile", **fields}


class HostileNode:
    """Answers GET /api/tasks/<TASK_ID> (and its events and logs) with whatever `task` is."""

    def __init__(self) -> None:
        self.task: Any = hostile_task()
        self.server = StandIn(self.answer)

    async def answer(self, request: web.Request, _body: bytes) -> web.StreamResponse:
        if request.path == f"/api/tasks/{TASK_ID}":
            if isinstance(self.task, web.StreamResponse):
                return self.task
            return web.json_response(self.task)
        if request.path == f"/api/tasks/{TASK_ID}/events":
            return web.json_response([{"id": 1, "time": "2026-01-01T00:00:00Z", "type": "created",
                                       "message": "<img src=x onerror=alert(1)>"}])
        if request.path == f"/api/tasks/{TASK_ID}/logs":
            return web.json_response(["<b>bold</b> line"])
        return web.json_response({"error": "no such thing", "status": 404, "details": {}}, status=404)


@pytest.fixture
def hostile() -> Iterator[HostileNode]:
    node = HostileNode()
    node.server.start()
    yield node
    node.server.stop()


@pytest.fixture
def viewer(etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess],  # noqa: F811
           hostile: HostileNode) -> AgentProcess:
    """A real agent whose cluster has the hostile node, online, mirroring TASK_ID."""
    agent = cluster_agent(agent_factory, etcd_shared.endpoints, "viewer", prefix=new_prefix("ui-hostile"),
                          extra={"auth": {"tokens": []}}).start()
    prefix = agent.config["cluster"]["prefix"]
    member = running_member(etcd_shared)
    put_key(member, node_key(prefix, "hostile"), {"node_id": "hostile", "name": "stand-in",
                                                  "advertise_url": hostile.server.url})
    put_key(member, task_key(prefix, "hostile", TASK_ID), {
        "id": TASK_ID, "name": "mirrored <i>name</i>", "type": "process", "kind": "run", "status": "running",
        "node_id": "hostile", "created_at": "2026-01-01T00:00:00Z"})
    wait_status(agent, "hostile", "online")
    return agent


def get(agent: AgentProcess, raw_path: str) -> tuple[int, str]:
    """GET with the path exactly as given (http.client neither normalises nor re-encodes it)."""
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
    try:
        conn.request("GET", raw_path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_what_another_node_answers_is_shown_escaped_and_its_secrets_hidden(
    viewer: AgentProcess, hostile: HostileNode
) -> None:
    hostile.task = hostile_task(name="<script>alert(1)</script>", env={"API_TOKEN": "hunter2-secret"},
                                reason="<svg onload=alert(2)>", result={"x": "</pre><script>alert(3)</script>"})
    status, page = get(viewer, f"/tasks/{TASK_ID}")  # no hint: found through the cluster view
    assert status == 200, page
    assert "On node hostile" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<img src=x" not in page
    assert "&lt;b&gt;bold&lt;/b&gt; line" in page and "<svg onload" not in page
    assert "hunter2-secret" not in page and "API_TOKEN=&lt;redacted&gt;" in page


@pytest.mark.parametrize("answer", [
    web.Response(text="<script>alert(document.cookie)</script>", content_type="text/html"),
    {"id": TASK_ID, "name": "x", "status": "owned"},  # not a status
    {"id": TASK_ID, "name": "x", "status": "running", "args": 5},  # not a list
    {"name": "no id"},
    ["not", "a", "task"],
    web.Response(body=b"[" + b"0," * (3 * 1024 * 1024) + b"0]", content_type="application/json"),  # 6 MB
])
def test_an_answer_that_is_not_a_task_shows_what_the_cluster_view_knows(
    viewer: AgentProcess, hostile: HostileNode, answer: Any
) -> None:
    hostile.task = answer
    status, page = get(viewer, f"/tasks/{TASK_ID}?node=hostile")
    assert status == 200, page
    assert "Node hostile does not answer" in page and "what the cluster view last knew" in page
    assert "mirrored &lt;i&gt;name&lt;/i&gt;" in page  # the summary, escaped
    assert "alert(document.cookie)" not in page


@pytest.mark.parametrize("raw_path", [
    "/tasks/%2E%2E?node=hostile",  # the id "..": one segment up on the node
    "/tasks/x%3Fy?node=hostile",  # "x?y": a query of its own on the node
    "/tasks/a%252Fb?node=hostile",  # "a%2Fb": a separator once decoded there
    "/models/%2E%2E?node=hostile",
    f"/tasks/{TASK_ID}x?node=..%2Fapi",  # a hint that is not a node id: ignored
    f"/tasks/{TASK_ID}x?node=viewer",  # this node: nowhere else to ask
])
def test_an_id_or_hint_that_could_be_read_as_another_path_never_leaves_this_agent(
    viewer: AgentProcess, hostile: HostileNode, raw_path: str
) -> None:
    status, page = get(viewer, raw_path)
    assert status == 404, page
    assert hostile.server.seen == []


def test_the_page_of_a_task_no_node_has_is_not_found(viewer: AgentProcess, hostile: HostileNode) -> None:
    status, _ = get(viewer, "/tasks/00000000-0000-4000-8000-000000000000?node=hostile")  # the node says 404
    assert status == 404
    assert [seen.raw_path for seen in hostile.server.seen if "/events" not in seen.raw_path
            and "/logs" not in seen.raw_path] == ["/api/tasks/00000000-0000-4000-8000-000000000000"]


def test_task_of_reads_a_task_field_by_field() -> None:
    task = task_of(hostile_task(args=["a", 1], env={"A": 2}, resources={"cpu_limit": True, "memory_limit": 5},
                                progress="half", exit_code=1.5, result=[1]), "hostile")
    assert task.args == ["a", "1"] and task.env == {"A": "2"}
    assert task.resources.cpu_limit is None and task.resources.memory_limit == 5  # a bool is not a number
    assert task.progress is None and task.exit_code is None and task.result is None
    for bad in ({"status": "owned"}, {"args": 5}, {"env": ["A=1"]}, {"resources": "big"}):
        with pytest.raises(ValueError):
            task_of(hostile_task(**bad), "hostile")
    assert json.dumps(task.extra) == "{}"


def test_the_nodes_table_marks_the_scheduler_when_the_api_says_which_it_is() -> None:
    """GET /api/nodes entries carry "scheduler": true for the elected one (the placement
    work); an entry without the key, as main's are until then, shows no badge."""
    node = {"name": "", "status": "online", "labels": {"gpu": "a100"}, "sandbox": "none", "version": "0",
            "capacity": {"cpu": 4.0, "memory": 8 * 2**30, "disk": 2**40, "gpus": 0},
            "free": {"cpu": 2.5, "memory": 2**30, "disk": 2**39, "gpus": 0},
            "last_seen": "2026-01-01T00:00:00Z", "advertise_url": "http://10.0.0.1:8080"}
    nodes = [{**node, "node_id": "a", "scheduler": True}, {**node, "node_id": "b", "scheduler": False},
             {**node, "node_id": "c"}]
    html = environment(templates_dir()).get_template("_cluster.html").render(
        cluster={"health": "ok", "endpoints": ["http://127.0.0.1:2379"], "prefix": "/cnet", "lease_ttl": 15,
                 "problem": None},
        nodes=nodes, problem=None, this_node="b")
    rows = html.split("<tr>")[2:]
    assert ['title="the elected scheduler' in row for row in rows] == [True, False, False]
    assert ["this node" in row for row in rows] == [False, True, False]
    assert "2.5 cores of 4 cores" in rows[0] and "gpu=a100" in rows[0]
    assert "Free GPUs" not in html  # no node has any
