"""HTML forms <-> the API's JSON bodies.

Form fields carry the API's JSON key names. A form becomes exactly the body the API
would get, and is validated by the same code (cnetd.tasks.request, ModelService), so
the messages match the API's; `form_field` puts each message beside its field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cnetd.bodies.jsonvalue import lone_surrogate
from cnetd.config.conversions import LABEL_KEY_RULE, MAX_LABEL_VALUE, MAX_LABELS, is_label_key
from cnetd.errors import Invalid

DEPLOY_FIELDS = (
    "name", "model_type", "model_path", "script_path", "command", "args", "working_dir", "env",
    "cpu_limit", "memory_limit", "disk_limit",
)
TASK_FIELDS = ("name", "command", "args", "working_dir", "env", "cpu_limit", "memory_limit", "disk_limit", "timeout")
# Where the work runs (only offered in a cluster): the radio choice and the value of each choice.
PLACEMENT_FIELDS = ("placement", "placement_node", "placement_labels")
PLACEMENT_CHOICES = ("here", "auto", "node", "labels")
# An API error's field (placement.node_id, placement.labels) -> the form field that shows it.
# The more specific first: placement.labels.gpu is the labels field's, not the choice's.
PLACEMENT_ERROR_FIELDS = {"placement.node_id": "placement_node", "placement.labels": "placement_labels",
                          "placement": "placement"}
LIMITS = ("cpu_limit", "memory_limit", "disk_limit")
_INDEXED = re.compile(r"^(\w+)\[\d+\]$")


@dataclass
class Form:
    """What the user typed, and an error message per field ("" = the form as a whole)."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)  # why no node fits, one line per node (a 422)

    @classmethod
    def from_post(cls, data: Mapping[str, Any], names: tuple[str, ...]) -> Form:
        return cls(values={n: str(data.get(n, "")) for n in names})

    def get(self, name: str) -> str:
        return self.values.get(name, "")

    def fail(self, exc: Invalid) -> Form:
        name = form_field(exc.field, tuple(self.values))
        message = exc.message.split(": ", 1)[1] if exc.message.startswith(exc.field + ": ") else exc.message
        if name and name != exc.field:
            message = f"{exc.field}: {message}"  # e.g. "args[2]: ..." or "env.PATH: ..."
        self.errors[name] = message
        return self


def form_field(api_field: str, names: tuple[str, ...]) -> str:
    """The form field an API error names: resources.cpu_limit -> cpu_limit,
    args[2] -> args, env.HOME -> env; "" when it belongs to no field."""
    candidate = api_field
    placed = next((f for a, f in PLACEMENT_ERROR_FIELDS.items() if candidate == a or candidate.startswith(a + ".")), None)
    if placed is not None and placed in names:
        return placed
    if candidate.startswith("resources."):
        candidate = candidate.split(".", 1)[1]
    elif candidate.startswith("env."):
        candidate = "env"
    else:
        match = _INDEXED.match(candidate)
        if match:
            candidate = match.group(1)
    return candidate if candidate in names else ""


def lines(text: str) -> list[str]:
    """One item per non-empty line (surrounding whitespace of a line is kept but the line end is not)."""
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def env_lines(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for number, line in enumerate(lines(text), 1):
        key, sep, value = line.strip().partition("=")
        if not sep or not key.strip():
            raise Invalid("env", f"line {number}: expected KEY=value, got {line.strip()!r}")
        env[key.strip()] = value
    return env


def _cpu(text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise Invalid("resources.cpu_limit", f"must be a number of cores > 0, got {text!r}") from None
    if not math.isfinite(value):
        raise Invalid("resources.cpu_limit", f"must be a number of cores > 0, got {text!r}")
    return int(value) if text.lstrip("+-").isdigit() else value


def _size(text: str) -> int | str:
    """A plain number is bytes; anything else ("512MB") goes to the API's size parser."""
    return int(text) if text.lstrip("-").isdigit() else text


def resources(form: Form) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    cpu = form.get("cpu_limit").strip()
    if cpu:
        out["cpu_limit"] = _cpu(cpu)
    for name in ("memory_limit", "disk_limit"):
        raw = form.get(name).strip()
        if raw:
            out[name] = _size(raw)
    return out or None


def _common(form: Form, body: dict[str, Any]) -> dict[str, Any]:
    args = lines(form.get("args"))
    if args:
        body["args"] = args
    working_dir = form.get("working_dir").strip()
    if working_dir:
        body["working_dir"] = working_dir
    env = env_lines(form.get("env"))
    if env:
        body["env"] = env
    limits = resources(form)
    if limits:
        body["resources"] = limits
    return body


def label_pairs(text: str) -> dict[str, str]:
    """"region=eu-west, gpu=a100" (commas or line ends between pairs) -> the labels a node must carry."""
    pairs = [p.strip() for p in text.replace("\n", ",").split(",") if p.strip()]
    if not pairs:
        raise Invalid("placement.labels", "enter at least one key=value pair, e.g. region=eu-west")
    if len(pairs) > MAX_LABELS:
        raise Invalid("placement.labels", f"at most {MAX_LABELS} pairs, got {len(pairs)}")
    wanted: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = (part.strip() for part in pair.partition("="))
        if not sep or not key:
            raise Invalid("placement.labels", f"expected key=value, got {pair!r} (e.g. region=eu-west)")
        if not is_label_key(key):
            raise Invalid("placement.labels", f"label name {key!r}: must be {LABEL_KEY_RULE}")
        if not value or len(value) > MAX_LABEL_VALUE or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise Invalid("placement.labels", f"{key}: expected a value of 1-{MAX_LABEL_VALUE} printable characters")
        if wanted.get(key, value) != value:
            raise Invalid("placement.labels", f"{key} is asked for twice ({wanted[key]!r} and {value!r})")
        wanted[key] = value
    return wanted


def placement(form: Form) -> Any | None:
    """The request's "placement", from the form's choice: None for this node (the key is
    left out, as an API caller would), "auto", {"node_id": ...} or {"labels": {...}}."""
    chosen = form.get("placement").strip() or "here"
    if chosen == "here":
        return None
    if chosen == "auto":
        return "auto"
    if chosen == "node":
        node_id = form.get("placement_node").strip()
        if not node_id:
            raise Invalid("placement.node_id", "choose the node it should run on")
        return {"node_id": node_id}
    if chosen == "labels":
        return {"labels": label_pairs(form.get("placement_labels"))}
    raise Invalid("placement", f"must be one of {', '.join(PLACEMENT_CHOICES)}, got {chosen[:40]!r}")


def _placed(form: Form, body: dict[str, Any]) -> dict[str, Any]:
    where = placement(form)
    if where is not None:
        body["placement"] = where
    return body


def deploy_body(form: Form) -> dict[str, Any]:
    """The POST /api/ml/models body the form stands for; empty optional fields are left out."""
    body: dict[str, Any] = {"name": form.get("name").strip()}
    for name in ("model_type", "model_path", "script_path", "command"):
        value = form.get(name).strip()
        if value:
            body[name] = value
    return _placed(form, _common(form, body))


def task_body(form: Form) -> dict[str, Any]:
    """The POST /api/tasks body the form stands for."""
    body: dict[str, Any] = {"name": form.get("name").strip(), "type": "process", "command": form.get("command").strip()}
    timeout = form.get("timeout").strip()
    if timeout:
        body["timeout"] = float(timeout) if _is_number(timeout) else timeout
    return _placed(form, _common(form, body))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def body_to_form(body: Mapping[str, Any], names: tuple[str, ...]) -> Form:
    """A preset (an API body) shown in the form."""
    values = {n: "" for n in names}
    for key, value in body.items():
        if key == "args":
            values["args"] = "\n".join(value)
        elif key == "env":
            values["env"] = "\n".join(f"{k}={v}" for k, v in value.items())
        elif key == "resources":
            for limit, amount in value.items():
                if limit in values:
                    values[limit] = f"{amount:g}" if isinstance(amount, float) else str(amount)
        elif key in values:
            values[key] = str(value)
    return Form(values=values)


def input_data(text: str) -> Any:
    """The predict form's text: JSON when it parses (5.5, [1.0, 2.0]), else the string itself."""
    stripped = text.strip()
    if not stripped:
        raise Invalid("input_data", "is required: a number, a list like [1.0, 2.0], or text")
    try:
        value = json.loads(stripped)
    except ValueError:
        return stripped
    bad = lone_surrogate(value)  # "\ud800" typed into the form: not text, as in a JSON body
    if bad is not None:
        raise Invalid("input_data", bad[1])
    return value
