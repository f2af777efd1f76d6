"""What a child tells its parent in each heartbeat, checked field by field."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from cnetd.config import ConfigError, parse_agent_url
from cnetd.errors import Invalid
from cnetd.node import NodeIdentity
from cnetd.tasks.request import json_type, reject_unknown, require_object

NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}\Z")
MAX_INTERVAL = 86400.0
TEXT_FIELDS = {"node_name": 128, "region": 128, "datacenter": 128, "version": 64, "sandbox": 32}
REPORT_FIELDS = {"node_id", "url", "interval", "resources", "tasks", "children", *TEXT_FIELDS}


@dataclass(frozen=True)
class NodeReport:
    node_id: str
    url: str
    interval: float  # seconds until the next heartbeat
    info: dict[str, Any]  # everything else the child said, already checked


def _number_map(value: Any, field: str, whole: bool) -> dict[str, float | int]:
    value = require_object(value, field)
    if len(value) > 32:
        raise Invalid(field, "has more than 32 entries")
    out: dict[str, float | int] = {}
    for key, item in value.items():
        ok = isinstance(item, int) if whole else isinstance(item, (int, float))
        if isinstance(item, bool) or not ok or (isinstance(item, float) and not math.isfinite(item)) or item < 0:
            kind = "an integer" if whole else "a number"
            raise Invalid(f"{field}.{key}", f"must be {kind} >= 0, got {json_type(item)}")
        if len(key) > 64:
            raise Invalid(field, "keys are at most 64 characters")
        out[key] = item
    return out


def parse_report(body: Any) -> NodeReport:
    body = require_object(body)
    reject_unknown(body, REPORT_FIELDS)
    node_id = body.get("node_id")
    if not isinstance(node_id, str) or not NODE_ID_PATTERN.match(node_id):
        raise Invalid("node_id", "is required: 1-128 letters, digits and _ . : @ -, starting with a letter or digit")
    url = body.get("url")
    try:
        url = parse_agent_url(url) if isinstance(url, str) else None
    except ConfigError:
        url = None
    if url is None:
        raise Invalid("url", "is required: the child's base URL, like http://host:8080")
    interval = body.get("interval")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval <= MAX_INTERVAL:
        raise Invalid("interval", f"is required: seconds between heartbeats, in (0, {MAX_INTERVAL:.0f}]")
    info: dict[str, Any] = {}
    for field, limit in TEXT_FIELDS.items():
        value = body.get(field, "")
        if not isinstance(value, str) or len(value) > limit:
            raise Invalid(field, f"must be a string of at most {limit} characters")
        info[field] = value
    info["resources"] = _number_map(body.get("resources", {}), "resources", whole=False)
    info["tasks"] = _number_map(body.get("tasks", {}), "tasks", whole=True)
    children = body.get("children", 0)
    if isinstance(children, bool) or not isinstance(children, int) or children < 0:
        raise Invalid("children", "must be an integer >= 0")
    info["children"] = children
    return NodeReport(node_id=node_id, url=url, interval=float(interval), info=info)


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
