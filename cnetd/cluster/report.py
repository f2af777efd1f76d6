"""What a child tells its parent in each heartbeat: a typed declaration, checked field by
field."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from cnetd.bodies.decode import decode_body
from cnetd.config import ConfigError, parse_agent_url
from cnetd.errors import Invalid
from cnetd.node import NodeIdentity

NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}\Z")
MAX_INTERVAL = 86400.0
TEXT_FIELDS = {"node_name": 128, "region": 128, "datacenter": 128, "version": 64, "sandbox": 32}
MAX_ENTRIES = 32

NODE_ID_RULE = "is required: 1-128 letters, digits and _ . : @ -, starting with a letter or digit"
URL_RULE = "is required: the child's base URL, like http://host:8080"
INTERVAL_RULE = f"is required: seconds between heartbeats, in (0, {MAX_INTERVAL:.0f}]"


def _rule(limit: int) -> Meta:
    return Meta(max_length=limit, extra={"invalid": f"must be a string of at most {limit} characters"})


NodeName = Annotated[str, _rule(TEXT_FIELDS["node_name"])]
Region = Annotated[str, _rule(TEXT_FIELDS["region"])]
Datacenter = Annotated[str, _rule(TEXT_FIELDS["datacenter"])]
Version = Annotated[str, _rule(TEXT_FIELDS["version"])]
Sandbox = Annotated[str, _rule(TEXT_FIELDS["sandbox"])]
Key = Annotated[str, Meta(max_length=64, extra={"invalid": "keys are at most 64 characters"})]


class HeartbeatBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A child node reports to this node (every agent.heartbeat)."""

    node_id: Annotated[str, Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$", max_length=128,
        extra={"invalid": NODE_ID_RULE, "required": NODE_ID_RULE},
    )]
    url: Annotated[str, Meta(
        description="the child's base URL, http://host:port", extra={"invalid": URL_RULE, "required": URL_RULE},
    )]
    interval: Annotated[float, Meta(
        gt=0, le=MAX_INTERVAL, description="seconds until the next heartbeat",
        extra={"invalid": INTERVAL_RULE, "required": INTERVAL_RULE},
    )]
    node_name: NodeName = ""
    region: Region = ""
    datacenter: Datacenter = ""
    version: Version = ""
    sandbox: Sandbox = ""
    # int | float: an amount sent as a whole number is shown as one
    resources: Annotated[
        dict[Key, Annotated[int, Meta(ge=0)] | Annotated[float, Meta(ge=0)]], Meta(max_length=MAX_ENTRIES),
    ] = {}
    tasks: Annotated[dict[Key, Annotated[int, Meta(ge=0)]], Meta(max_length=MAX_ENTRIES)] = {}
    children: Annotated[int, Meta(ge=0)] = 0

    def to_report(self) -> NodeReport:
        if not NODE_ID_PATTERN.match(self.node_id):  # also refuses a trailing newline, which "$" lets by
            raise Invalid("node_id", NODE_ID_RULE)
        try:
            url = parse_agent_url(self.url)
        except ConfigError:
            raise Invalid("url", URL_RULE) from None
        for key, value in self.resources.items():
            if not math.isfinite(value):
                raise Invalid(f"resources.{key}", "must be a finite number >= 0")
        info: dict[str, Any] = {name: getattr(self, name) for name in TEXT_FIELDS}
        info["resources"] = dict(self.resources)
        info["tasks"] = dict(self.tasks)
        info["children"] = self.children
        return NodeReport(node_id=self.node_id, url=url, interval=float(self.interval), info=info)


@dataclass(frozen=True)
class NodeReport:
    node_id: str
    url: str
    interval: float  # seconds until the next heartbeat
    info: dict[str, Any]  # everything else the child said, already checked


def parse_report(body: Any) -> NodeReport:
    return decode_body(body, HeartbeatBody).to_report()


def describe_node(identity: NodeIdentity, sandbox: str, task_counts: dict[str, int], usage: dict[str, Any],
                  totals: dict[str, Any]) -> dict[str, Any]:
    """The descriptive part of this node's heartbeat (Federation adds id, url, interval)."""
    resources: dict[str, float | int] = {
        "cpu_cores": totals["cpu"]["cores"] or 0,
        "memory_total": totals["memory"]["total"],
        "memory_available": totals["memory"]["available"],
    }
    if "cpu" in usage:
        resources["cpu_percent"] = usage["cpu"]["percent"]
    if "memory" in usage:
        resources["memory_percent"] = usage["memory"]["percent"]
    return {
        "node_name": identity.node_name[:128],
        "region": identity.region[:128],
        "datacenter": identity.datacenter[:128],
        "version": identity.version,
        "sandbox": sandbox,
        "resources": resources,
        "tasks": task_counts,
    }
