"""The Open Inference Protocol (KServe V2) calls, apart from their transport: what the HTTP
routes (cnetd/api/v2.py) and the gRPC service (cnetd/grpcapi/) both answer, so that model
lookup, readiness and dispatch to the serving manager live in one place. Errors are
DomainErrors with the HTTP status the HTTP routes answer; the gRPC service maps them to
status codes. Calling another node of a cluster is the HTTP routes' business (they relay
the HTTP request); here a call is answered from this node."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnetd import __version__
from cnetd.errors import Conflict, NotFound, Unavailable
from cnetd.ml.serving.protocol import OUTPUT_NAME, InferRequest, output_tensor
from cnetd.ml.serving.served import Served
from cnetd.store.models import ModelRecord

if TYPE_CHECKING:
    from cnetd.agent import Agent

SERVER_NAME = "cnetd"
EXTENSIONS = ("binary_tensor_data",)


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def unloaded(served: Served) -> bool:
    """Unloaded while idle (min_replicas 0): ready all the same, a request starts a replica."""
    return served.spec.autoscaled and served.spec.min_replicas == 0 and served.target == 0


def not_ready_reason(agent: Agent) -> str | None:
    """Why the server is not ready to infer (None: it is)."""
    if not agent.config.ml.enabled:
        return "ML support is disabled on this node"
    waiting = [s.name for s in agent.serving.all_served() if s.ready_replicas == 0 and not unloaded(s)]
    if waiting:
        return f"no ready worker for: {', '.join(sorted(waiting))}"
    return None


async def known(agent: Agent, name: str, version: str | None) -> ModelRecord:
    """The model a name (and version: its number, or a deploy id) addresses; NotFound
    saying what is unknown."""
    if version is not None and version.isdigit():
        model_id = agent.versions.id_for_version(name, version)
        if model_id is None:
            numbers = [str(v) for r in await agent.models.named(name) if (v := agent.versions.version_of(r.id))]
            if not numbers:
                raise NotFound(f"unknown model: {name}", {"name": name})
            raise NotFound(f"model {name} has no version {version} (versions: {', '.join(sorted(numbers, key=int))})",
                           {"name": name, "version": version})
        version = model_id
    if version is None and (default := agent.versions.default_id(name)) is not None:
        return await agent.models.addressed(name, default)
    return await agent.models.addressed(name, version)


def not_served(record: ModelRecord) -> Conflict | Unavailable:
    """The error for a known model that is not served here."""
    if (record.serving or {}).get("state") == "awaiting_training":
        return Unavailable(f"model {record.name} is not served yet: it is served once its training completes")
    return Conflict(f"model {record.name} is not being served; POST /api/ml/models/{record.id}/serve to start it")


async def model_metadata(agent: Agent, record: ModelRecord) -> dict[str, Any]:
    served = agent.serving.find(record.id)
    n_features = served.n_features if served is not None else None
    records = await agent.models.named(record.name)
    numbers = sorted((v for r in records if (v := agent.versions.version_of(r.id)) is not None), reverse=True)
    versions = [str(v) for v in numbers] if len(numbers) == len(records) else [r.id for r in records]
    return {
        "name": record.name,
        "versions": versions,
        "platform": f"cnetd/{record.model_type}",
        "inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, n_features if n_features is not None else -1]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP64", "shape": [-1]}],
    }


@dataclass(frozen=True)
class Readiness:
    name: str
    ready: bool
    why: str | None = None


async def model_readiness(agent: Agent, name: str, version: str | None) -> Readiness:
    """Whether the model is ready here; NotFound for an unknown one."""
    served = agent.versions.resolve(name, version, None)
    if served is not None and (served.ready_replicas > 0 or unloaded(served)):
        return Readiness(served.name, True)
    record = await known(agent, name, version)
    why = "no worker is ready yet" if served is not None else "it is not being served"
    return Readiness(record.name, False, f"model {record.name} is not ready: {why}")


async def served_here(agent: Agent, name: str, version: str | None, key: str | None = None) -> Served:
    """The served model that answers an inference here (by the name's default and canary,
    key: the sticky key of the split): NotFound for an unknown model, Conflict (409) for one
    that is not served, Unavailable for one awaiting its training."""
    served = agent.versions.resolve(name, version, key)
    if served is None:
        raise not_served(await known(agent, name, version))
    return served


async def infer(agent: Agent, served: Served, parsed: InferRequest) -> dict[str, Any]:
    """The V2 answer to a parsed request: {model_name, model_version, [id], outputs} with
    the output tensor's values in "data" as a flat list or an array of the tensor's shape
    (each transport encodes it its way: protocol.json_data, binary.encode_tensor).
    model_version: the version number that answered."""
    answer = await agent.versions.predict(served, parsed.instances)
    output = output_tensor(parsed.output_name, answer.values)
    reply: dict[str, Any] = {"model_name": served.name, "model_version": agent.versions.label(served), "outputs": [output]}
    if parsed.id is not None:
        reply["id"] = parsed.id
    return reply

