"""Work a form posts, created where its placement says.

Without "placement" (the form's "this node") it is created here through the services, as
before. With one, the body goes to this agent's own POST /api/tasks (or /api/ml/models)
through the cluster's peer client, so that the API's placement is the one way work enters
the cluster (the scheduler's admission, its fence, the 422 when no node fits) and the form
shows the answer an API caller would get. `submit` is the one seam: should placement get a
service method, it is the one call to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from cnetd.agent import Agent
from cnetd.errors import DomainError, Invalid
from cnetd.tasks.request import parse_new_task
from cnetd.ui.forms import Form

Kind = Literal["task", "model"]
PATHS: dict[Kind, str] = {"task": "/api/tasks", "model": "/api/ml/models"}
NOT_IN_A_CLUSTER = "this agent is not part of a cluster (its config has no cluster section): it runs work itself"


@dataclass(frozen=True)
class Created:
    id: str
    node_id: str


class NoNodeFits(DomainError):
    """The cluster has no node for the work: the API's 422, one reason per node."""

    status = 422

    def __init__(self, message: str, reasons: list[str], details: dict[str, Any]) -> None:
        super().__init__(message, details)
        self.reasons = reasons


async def submit(agent: Agent, kind: Kind, body: dict[str, Any]) -> Created:
    placement = body.get("placement")
    if placement is None:
        if kind == "task":
            task = await agent.tasks.create(parse_new_task(body))
            return Created(task.id, agent.node_id)
        model = await agent.models.deploy(body)
        return Created(model.record.id, agent.node_id)
    if agent.cluster is None:  # a form never offers it then: a post made by hand
        raise DomainError(f"placement: {NOT_IN_A_CLUSTER}")
    status, answer = await agent.cluster.peers.json_call(agent.node_id, "POST", PATHS[kind], body)
    if status in (200, 201) and isinstance(answer, dict) and isinstance(answer.get("id"), str):
        return Created(answer["id"], str(answer.get("node_id") or agent.node_id))
    raise refusal(status, answer)


def refusal(status: int, answer: object) -> DomainError:
    """The API's error envelope as the error the form shows: beside the field it names, the
    reasons of a 422 one per line beside the placement choice."""
    envelope = answer if isinstance(answer, dict) else {}
    message = str(envelope.get("error") or f"the agent answered {status}")
    details = envelope.get("details") if isinstance(envelope.get("details"), dict) else {}
    assert isinstance(details, dict)
    field = details.get("field")
    if status == 422:
        return NoNodeFits(message, reasons_of(message, details), details)
    if isinstance(field, str) and field:
        prefix = field + ": "
        return Invalid(field, message[len(prefix):] if message.startswith(prefix) else message)
    error = DomainError(message, details)
    error.status = status
    return error


def reasons_of(message: str, details: dict[str, Any]) -> list[str]:
    """One line per node: details.reasons when the answer has them, else the message's
    "no node fits: a: ...; b: ..." split at its semicolons."""
    listed = details.get("reasons")
    if isinstance(listed, list) and all(isinstance(r, str) for r in listed) and listed:
        return list(listed)
    head, sep, rest = message.partition(": ")
    if sep and head.lower().startswith("no node"):
        return [part.strip() for part in rest.split("; ") if part.strip()]
    return []


def show(form: Form, exc: DomainError, placed: bool) -> None:
    """An error where the form shows it: beside the field it names; beside the placement
    choice when the work had a placement and the cluster could not place it (422: no node
    fits, one line per node; 503: placements refused while etcd is away); else above the form."""
    if isinstance(exc, Invalid):
        form.fail(exc)
    elif isinstance(exc, NoNodeFits):
        form.errors["placement"] = exc.message
        form.reasons = exc.reasons
    elif placed and exc.status in (422, 503) and "placement" in form.values:
        form.errors["placement"] = exc.message
    else:
        form.errors[""] = exc.message
