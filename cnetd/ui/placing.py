"""Work a form posts, created where its placement says.

Without "placement" (the form's "this node") it is created here through the services, as
before. With one, it goes through the cluster's placing service, as POST /api/tasks and
/api/ml/models with "placement" do: the scheduler's admission and fence, and the answer as an
API caller would get it (422 when no node fits, one reason per node; 503 while etcd is away;
a node's own refusal as its 4xx).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from cnetd.agent import Agent
from cnetd.cluster.placing import NoNodeFits
from cnetd.errors import DomainError, Invalid
from cnetd.tasks.request import parse_new_task
from cnetd.ui.forms import Form

Kind = Literal["task", "model"]
NOT_IN_A_CLUSTER = "this agent is not part of a cluster (its config has no cluster section): it runs work itself"


@dataclass(frozen=True)
class Created:
    id: str
    node_id: str


async def submit(agent: Agent, kind: Kind, body: dict[str, Any]) -> Created:
    if body.get("placement") is None:
        if kind == "task":
            task = await agent.tasks.create(parse_new_task(body))
            return Created(task.id, agent.node_id)
        model = await agent.models.deploy(body)
        return Created(model.record.id, agent.node_id)
    if agent.cluster is None:  # a form never offers it then: a post made by hand
        raise DomainError(f"placement: {NOT_IN_A_CLUSTER}")
    where = await agent.cluster.placing.submit(kind, body)
    return Created(where.task_id, where.node_id)


def reasons_of(exc: DomainError) -> list[str]:
    listed = exc.details.get("reasons")
    return [str(r) for r in listed] if isinstance(listed, list) else []


def show(form: Form, exc: DomainError, placed: bool) -> None:
    """An error where the form shows it: beside the field it names (also when the node the
    work was placed on refused it); beside the placement choice when the cluster could not
    place it (422: no node fits, one line per node; 503: etcd away, no scheduler yet); else
    above the form."""
    field = exc.details.get("field")
    if isinstance(exc, Invalid):
        form.fail(exc)
    elif isinstance(field, str) and field:
        prefix = field + ": "
        form.fail(Invalid(field, exc.message[len(prefix):] if exc.message.startswith(prefix) else exc.message))
    elif isinstance(exc, NoNodeFits):
        form.errors["placement"] = exc.message
        form.reasons = reasons_of(exc)
    elif placed and exc.status in (422, 503) and "placement" in form.values:
        form.errors["placement"] = exc.message
    else:
        form.errors[""] = exc.message
