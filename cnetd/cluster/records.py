"""What agents write into etcd, and where: the key layout under ``cluster.prefix`` and the
JSON records stored there. Every part of the cluster reads and writes through these, so
one module holds the whole layout.

    <prefix>/nodes/<node_id>                  NodeRecord, on the node's lease (present = online)
    <prefix>/seen/<node_id>                   NodeRecord + last_seen, no lease (offline nodes stay listed)
    <prefix>/scheduler                        SchedulerRecord, on the scheduler's lease;
                                              its create_revision is the scheduler's epoch
    <prefix>/assignments/<node_id>/<task_id>  Assignment, written by the scheduler in a fenced txn
    <prefix>/placed/<task_id>                 PlacedTask, written in the same txn, on a lease of
                                              the scheduler's that lapses after a while: each
                                              task id is placed once, a retry finds where
    <prefix>/tasks/<node_id>/<task_id>        TaskSummary, mirrored by the owning node
    <prefix>/refused/<task_id>                Refusal: the target would not run what was placed on it
    <prefix>/served/<model_name>              ServedModel, no lease: a served model's desired state
                                              (its version, artifact, replicas per node, holders)
    <prefix>/serving/<model_name>/<node_id>   ServingEndpoint, on the node's lease: this node has
                                              ready replicas of the model (gone when the node dies)
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec

T = TypeVar("T")

# What a node id may be: it is one segment of a key and of the pass-through's path.
NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}\Z")
NODE_ID_RULE = "1-128 letters, digits and _ . : @ -, starting with a letter or digit"


class Resources(msgspec.Struct, frozen=True, kw_only=True):
    cpu: float = 0.0  # cores
    memory: int = 0  # bytes
    disk: int = 0  # bytes
    gpus: int = 0
    # bytes of one GPU's memory: in a capacity its largest GPU's; free, the most a
    # gpu_memory request could get on one GPU; in a demand, what gpu_memory asks for
    gpu_memory: int = 0

    def minus(self, other: Resources) -> Resources:
        return Resources(cpu=self.cpu - other.cpu, memory=self.memory - other.memory,
                         disk=self.disk - other.disk, gpus=self.gpus - other.gpus,
                         gpu_memory=self.gpu_memory - other.gpu_memory)


class NodeRecord(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    name: str
    advertise_url: str
    labels: dict[str, str] = {}  # region, datacenter and agent.labels
    capacity: Resources = Resources()
    free: Resources = Resources()  # capacity less what admitted, non-terminal tasks asked for
    sandbox: str = ""
    version: str = ""
    started_at: str = ""
    updated_at: str = ""
    # The highest assignment mod_revision this node has taken into `free`: the scheduler
    # subtracts its own later placements until the node's record catches up.
    applied_revision: int = 0
    last_seen: str = ""  # only in <prefix>/seen/


class SchedulerRecord(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    advertise_url: str
    since: str


class Assignment(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    kind: Literal["task", "model"]
    body: dict[str, Any]  # the create request's body, placement removed
    demand: Resources
    epoch: int  # the scheduler key's create_revision when this was placed
    node_revision: int  # the target node key's create_revision it was placed against
    posted_by: str  # node id of the agent the request was posted to
    placed_at: str


class PlacedTask(msgspec.Struct, frozen=True, kw_only=True):
    """Where a task id was placed; kept for the scheduler's retry window only."""

    task_id: str
    node_id: str
    epoch: int
    node_revision: int
    placed_at: str


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    """A node's answer to work placed on it that it will not run (its own 4xx), kept for the
    posting agent at <prefix>/refused/<task_id> on a short lease."""

    task_id: str
    node_id: str
    status: int
    error: str
    details: dict[str, str] = {}


class TaskSummary(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    type: str  # "process" or "ml"
    kind: str  # what it does: train, predict, serve, ...
    status: str
    node_id: str
    created_at: str = ""
    started_at: str | None = None
    stopped_at: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    progress: float | None = None
    model_id: str | None = None
    serving: str | None = None  # a model's serving state on its node
    updated_at: str = ""



# What a model name may be in a key: the deploy body's name rule (no "/", cannot start with ".").
MODEL_NAME_PATTERN = re.compile(r"[\w][\w .:@+-]{0,127}\Z")
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]
NodeIdText = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}\Z")]
ModelNameText = Annotated[str, msgspec.Meta(pattern=r"^[\w][\w .:@+-]{0,127}\Z")]
ReplicaCount = Annotated[int, msgspec.Meta(ge=0, le=64)]
ByteCount = Annotated[int, msgspec.Meta(ge=0, le=2**40)]
ShortText = Annotated[str, msgspec.Meta(max_length=4096)]


class ModelSource(msgspec.Struct, frozen=True, kw_only=True):
    """How the model is deployed where it was trained: what another node needs to run its
    serving workers (checked there again, like a deploy body)."""

    model_type: Annotated[str, msgspec.Meta(max_length=64)] = "custom"
    model_path: ShortText
    script_path: ShortText = ""
    command: ShortText = "python3"
    env: Annotated[dict[ShortText, ShortText], msgspec.Meta(max_length=256)] = {}
    working_dir: ShortText = "."
    cpu_limit: Annotated[float, msgspec.Meta(gt=0, le=4096)] | None = None
    memory_limit: Annotated[int, msgspec.Meta(gt=0, le=2**50)] | None = None
    disk_limit: Annotated[int, msgspec.Meta(gt=0, le=2**50)] | None = None
    gpu_limit: Annotated[int, msgspec.Meta(ge=0, le=64)] | None = None
    gpu_memory: Annotated[int, msgspec.Meta(gt=0, le=2**50)] | None = None


class ServedModel(msgspec.Struct, frozen=True, kw_only=True):
    """A served model's desired state, for the whole cluster: which version (model id and
    artifact) is served under the name, how many replicas in all, which node runs how many
    (placements) and which nodes have the artifact (holders). Written by the node that
    serves it first (its origin) and by the node that places replicas; never on a lease."""

    name: ModelNameText
    model_id: NodeIdText
    sha256: Sha256
    size: ByteCount
    state: Literal["serving", "stopped"] = "serving"
    replicas: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1  # wanted in all, over every node
    settings: dict[str, Any] = {}  # the serving settings (ServingSpec), replicas aside
    placements: Annotated[dict[NodeIdText, ReplicaCount], msgspec.Meta(max_length=64)] = {}
    holders: Annotated[list[NodeIdText], msgspec.Meta(max_length=64)] = []
    refused: Annotated[dict[NodeIdText, ShortText], msgspec.Meta(max_length=64)] = {}  # node -> why it cannot hold it
    origin: NodeIdText
    source: ModelSource
    created_at: str = ""  # the model's, to tell the newer of two versions of a name
    updated_at: str = ""
    updated_by: str = ""


class ServingEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    """One node's ready replicas of a served model."""

    name: ModelNameText
    model_id: NodeIdText
    node_id: NodeIdText
    sha256: str = ""
    ready_replicas: ReplicaCount = 0
    replicas: ReplicaCount = 0  # wanted on this node
    advertise_url: ShortText = ""
    updated_at: str = ""

def nodes_prefix(prefix: str) -> str:
    return f"{prefix}/nodes/"


def node_key(prefix: str, node_id: str) -> str:
    return f"{prefix}/nodes/{node_id}"


def seen_prefix(prefix: str) -> str:
    return f"{prefix}/seen/"


def seen_key(prefix: str, node_id: str) -> str:
    return f"{prefix}/seen/{node_id}"


def scheduler_key(prefix: str) -> str:
    return f"{prefix}/scheduler"


def assignments_prefix(prefix: str, node_id: str) -> str:
    return f"{prefix}/assignments/{node_id}/"


def assignment_key(prefix: str, node_id: str, task_id: str) -> str:
    return f"{prefix}/assignments/{node_id}/{task_id}"


def placed_key(prefix: str, task_id: str) -> str:
    return f"{prefix}/placed/{task_id}"


def refused_key(prefix: str, task_id: str) -> str:
    return f"{prefix}/refused/{task_id}"


def tasks_prefix(prefix: str) -> str:
    return f"{prefix}/tasks/"


def node_tasks_prefix(prefix: str, node_id: str) -> str:
    return f"{prefix}/tasks/{node_id}/"


def task_key(prefix: str, node_id: str, task_id: str) -> str:
    return f"{prefix}/tasks/{node_id}/{task_id}"



def served_prefix(prefix: str) -> str:
    return f"{prefix}/served/"


def served_key(prefix: str, name: str) -> str:
    return f"{prefix}/served/{name}"


def serving_prefix(prefix: str, name: str | None = None) -> str:
    """Every node's endpoints, or those of one model name."""
    return f"{prefix}/serving/" if name is None else f"{prefix}/serving/{name}/"


def serving_key(prefix: str, name: str, node_id: str) -> str:
    return f"{prefix}/serving/{name}/{node_id}"

def encode(record: msgspec.Struct) -> bytes:
    return msgspec.json.encode(record)


def decode(data: bytes, kind: type[T]) -> T:
    return msgspec.json.decode(data, type=kind)


def check_key_part(what: str, value: str) -> str:
    """A node or task id that becomes one segment of a key, by the node id rule: anything
    else (a '/', '..', a NUL) could reach another node's keys. Raises ValueError naming `what`."""
    if not NODE_ID_PATTERN.match(value):
        raise ValueError(f"{what}: {value!r:.60} is not a valid id ({NODE_ID_RULE})")
    return value
