"""Placing work in the cluster, both halves.

The posting agent (any agent a POST with "placement" reaches) checks the body, gives the work
its id and asks the elected scheduler where it goes: itself when it is the scheduler, else
the scheduler's agent over POST /api/cluster/place. The scheduler writes the assignment in
one fenced txn (cluster/scheduler.py). The posting agent then waits until the target node
has created the task and answers with it, as that node shows it.

The target node's AssignmentWatcher hands each assignment to create_assigned(), which
creates the task (or deploys the model) under the placed id. Work the node refuses (a
command it does not allow, a path outside its roots) is not retried: the refusal is written
to <prefix>/refused/<task_id>, and the posting agent answers with that node's own 4xx.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from cnetd.cluster.election import Election
from cnetd.cluster.etcd import EtcdClient, EtcdError, EtcdUnavailable
from cnetd.cluster.peers import PeerCaller
from cnetd.cluster.placement import NoFit, OnNode, Placement, WithLabels, parse_placement
from cnetd.cluster.records import (
    Assignment,
    Refusal,
    Resources,
    check_key_part,
    decode,
    encode,
    refused_key,
)
from cnetd.cluster.scheduler import Contended, Placed, Scheduler
from cnetd.cluster.scheduler import NotLeader as SchedulerNotLeader
from cnetd.errors import Conflict, DomainError, Invalid, TimedOut, Unavailable
from cnetd.limits import ResourceLimits
from cnetd.ml.service import ModelService
from cnetd.tasks.request import parse_new_task
from cnetd.tasks.service import TaskService

log = logging.getLogger(__name__)

Kind = Literal["task", "model"]
PLACE_PATH = "/api/cluster/place"
CREATED_WITHIN = 15.0  # seconds the posting agent waits for the target to create the task
REFUSAL_TTL = 600  # seconds a refusal is kept for the posting agent to read
LEADER_TRIES = 4  # a scheduler that changes while a request is on its way: ask the new one


class NoNodeFits(DomainError):
    """422: every node lacks something; one line per node says what."""

    status = 422

    def __init__(self, reasons: tuple[str, ...] | list[str]) -> None:
        super().__init__("no node fits: " + "; ".join(reasons), {"reasons": list(reasons)})


class NotScheduler(Conflict):
    """409 for a peer: this agent is not (or no longer) the scheduler; details name the one that is."""


@dataclass(frozen=True)
class Where:
    """Where a placed task was created: its node, and its JSON as that node shows it when
    that node is another (None when it is this node: render it from the local store)."""

    task_id: str
    node_id: str
    remote: dict[str, Any] | None


def demand_from(limits: ResourceLimits) -> Resources:
    return Resources(cpu=limits.cpu_limit or 0.0, memory=limits.memory_limit or 0, disk=limits.disk_limit or 0,
                     gpus=limits.gpu_limit or 0, gpu_memory=limits.gpu_memory or 0)


def placement_of(body: dict[str, Any]) -> Placement:
    if "node_id" in body and body.get("node_id") is not None:
        raise Invalid("placement", "give node_id or placement, not both (placement {\"node_id\": ...} goes "
                                   "through the scheduler's admission, node_id does not)")
    try:
        return parse_placement(body["placement"])
    except ValueError as exc:
        raise invalid_from(exc, "placement", field_prefix="placement") from None


def invalid_from(exc: Exception, fallback: str, field_prefix: str = "") -> Invalid:
    """A ValueError worded "<field>: <problem>" (placement, scheduler and msgspec checks word
    theirs so) as the 400 naming that field; fallback names the field when the text names
    none, or one that does not start with field_prefix."""
    text = str(exc)
    field, _, message = text.partition(": ")
    if message and field.startswith(field_prefix):
        return Invalid(field, message)
    return Invalid(fallback, message or text)


class Placing:
    def __init__(self, etcd: EtcdClient, prefix: str, node_id: str, election: Election, scheduler: Scheduler,
                 peers: PeerCaller, tasks: TaskService, models: ModelService, default_model_limits: ResourceLimits
                 ) -> None:
        self._etcd = etcd
        self._prefix = prefix
        self.node_id = node_id
        self._election = election
        self._scheduler = scheduler
        self._peers = peers
        self._tasks = tasks
        self._models = models
        self._model_limits = default_model_limits

    # --- the posting agent -----------------------------------------------------------------

    async def submit(self, kind: Kind, body: dict[str, Any]) -> Where:
        """Check the body as this node would, place it, wait until its node created it."""
        placement = placement_of(body)
        work = {name: value for name, value in body.items() if name not in ("placement", "node_id")}
        demand = demand_from(self._limits_of(kind, work))
        task_id = str(uuid.uuid4())
        placed = await self.decide(task_id, kind, work, demand, placement)
        return await self._created(kind, placed)

    def _limits_of(self, kind: Kind, body: dict[str, Any]) -> ResourceLimits:
        """The body's structure and limits checked here; paths and commands are the target's to check."""
        if kind == "task":
            return parse_new_task(body).resources
        return self._models.requested_limits(body)

    async def decide(self, task_id: str, kind: Kind, body: dict[str, Any], demand: Resources,
                     placement: Placement) -> Placed:
        """Where the scheduler puts the work (written by it, fenced): asked of this agent's
        scheduler when it leads, else of the scheduler's agent."""
        for _ in range(LEADER_TRIES):
            if self._election.is_leader:
                try:
                    return await self.place_here(task_id, kind, body, demand, placement, self.node_id)
                except NotScheduler:
                    pass  # deposed meanwhile: ask whoever leads now
            else:
                placed = await self._ask_leader(task_id, kind, body, demand, placement)
                if placed is not None:
                    return placed
            self._election.poke()
            await asyncio.sleep(0.2)
        raise Unavailable("no scheduler could take the placement: the scheduler changed while it was asked; "
                          "try again")

    async def place_here(self, task_id: str, kind: Kind, body: dict[str, Any], demand: Resources,
                         placement: Placement, posted_by: str) -> Placed:
        """This agent's scheduler places the work; domain errors for the API."""
        try:
            return await self._scheduler.place(task_id, kind, body, demand, placement, posted_by)
        except SchedulerNotLeader as exc:
            leader = exc.leader
            raise NotScheduler(str(exc), {"leader": None if leader is None else leader.node_id}) from None
        except NoFit as exc:
            raise NoNodeFits(exc.reasons) from None
        except Contended as exc:
            raise Unavailable(str(exc)) from None
        except EtcdUnavailable as exc:
            raise Unavailable(f"cannot place work while etcd does not answer: {exc}",
                              {"unreachable": [endpoint for endpoint, _ in exc.failures]}) from None
        except EtcdError as exc:
            raise Unavailable(f"cannot place work: etcd said {exc}") from None
        except ValueError as exc:
            raise invalid_from(exc, "body") from None

    async def _ask_leader(self, task_id: str, kind: Kind, body: dict[str, Any], demand: Resources,
                          placement: Placement) -> Placed | None:
        """The scheduler's agent's answer; None when it is no longer the scheduler."""
        leader = self._election.leader
        if leader is None:
            raise Unavailable("no scheduler is elected yet (is etcd reachable?); try again")
        request = PlaceRequest(task_id=task_id, kind=kind, body=body, demand=Demand(**msgspec.structs.asdict(demand)),
                               placement=placement_json(placement), posted_by=self.node_id)
        answer = await self._peers.call(leader.node_id, "POST", PLACE_PATH, msgspec.json.encode(request),
                                        {"Content-Type": "application/json"})
        async with answer:
            raw = await answer.read()
            status = answer.status
        reply = _json_or_none(raw)
        if status == 200 and isinstance(reply, dict):
            try:
                return msgspec.convert(reply, Placed)
            except msgspec.ValidationError as exc:
                raise Unavailable(f"the scheduler ({leader.node_id}) answered with an unusable placement: {exc}") from None
        if status == NotScheduler.status:
            return None
        message = reply.get("error") if isinstance(reply, dict) else None
        details = reply.get("details") if isinstance(reply, dict) else None
        if status == NoNodeFits.status and isinstance(details, dict) and isinstance(details.get("reasons"), list):
            raise NoNodeFits([str(r) for r in details["reasons"]])
        error = DomainError(f"the scheduler ({leader.node_id}) answered {status}: {message or raw[:200]!r}",
                            details if isinstance(details, dict) else None)
        error.status = status if 400 <= status < 600 else 502
        raise error

    async def _created(self, kind: Kind, placed: Placed) -> Where:
        """Wait until the target created the work (or refused it); its JSON when it is another node."""
        path = f"/api/tasks/{placed.task_id}" if kind == "task" else f"/api/ml/models/{placed.task_id}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CREATED_WITHIN
        pause = 0.02
        while True:
            await self._raise_if_refused(placed)
            if placed.node_id == self.node_id:
                if await self._tasks.exists(placed.task_id):
                    return Where(placed.task_id, self.node_id, None)
            else:
                remote = await self._remote(placed.node_id, path)
                if remote is not None:
                    return Where(placed.task_id, placed.node_id, remote)
            if loop.time() > deadline:
                raise TimedOut(f"{kind} {placed.task_id} was placed on {placed.node_id} but not created there within "
                               f"{CREATED_WITHIN:g}s; GET {path} later", {"id": placed.task_id, "node_id": placed.node_id})
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def _remote(self, node_id: str, path: str) -> dict[str, Any] | None:
        try:
            answer = await self._peers.call(node_id, "GET", path, None, {})
        except Unavailable:
            return None  # not reachable this moment: the deadline decides
        async with answer:
            if answer.status != 200:
                return None
            reply = _json_or_none(await answer.read())
        return reply if isinstance(reply, dict) else None

    async def _raise_if_refused(self, placed: Placed) -> None:
        try:
            kv = await self._etcd.get(refused_key(self._prefix, placed.task_id))
        except EtcdError:
            return
        if kv is None:
            return
        try:
            refusal = decode(kv.value, Refusal)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise DomainError(f"{placed.node_id} refused the work (its reason is unreadable)") from None
        error = DomainError(f"{refusal.node_id} refused it: {refusal.error}", dict(refusal.details))
        error.status = refusal.status if 400 <= refusal.status < 500 else 400
        raise error

    # --- the target node -------------------------------------------------------------------

    async def create_assigned(self, assignment: Assignment) -> None:
        """Create what the scheduler assigned to this node, once (idempotent by id). Work this
        node refuses is recorded as refused, not retried; other errors mean "try later"."""
        try:
            if assignment.kind == "task":
                await self._tasks.create(parse_new_task(assignment.body), task_id=assignment.task_id)
            else:
                await self._models.deploy(assignment.body, model_id=assignment.task_id)
        except Unavailable:
            raise  # e.g. no free uid now: the assignment stays and is tried again
        except DomainError as exc:
            log.warning("refusing %s %s placed here by %s: %s", assignment.kind, assignment.task_id,
                        assignment.posted_by, exc.message)
            await self._refuse(assignment, exc)

    async def _refuse(self, assignment: Assignment, exc: DomainError) -> None:
        lease = await self._etcd.grant(REFUSAL_TTL)
        refusal = Refusal(task_id=assignment.task_id, node_id=self.node_id, status=exc.status, error=exc.message,
                          details={k: str(v) for k, v in exc.details.items()})
        await self._etcd.put(refused_key(self._prefix, assignment.task_id), encode(refusal), lease=lease.id)


class Demand(Resources, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a piece of work asks of a node (the request body's name for Resources, whose
    schema name the task body's resources already take)."""


class PlaceRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /api/cluster/place: what a posting agent asks of the scheduler's agent."""

    task_id: str
    kind: Kind
    body: dict[str, Any]
    demand: Demand
    placement: Any
    posted_by: str

    def checked(self) -> tuple[Placement, Resources]:
        check_key_part("task_id", self.task_id)
        check_key_part("posted_by", self.posted_by)
        demand = self.demand
        if min(demand.cpu, demand.memory, demand.disk, demand.gpus, demand.gpu_memory) < 0:
            raise ValueError("demand: amounts must be >= 0")
        return parse_placement(self.placement), demand


def placement_json(placement: Placement) -> Any:
    if isinstance(placement, OnNode):
        return {"node_id": placement.node_id}
    if isinstance(placement, WithLabels):
        return {"labels": dict(placement.labels)}
    return "auto"


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
