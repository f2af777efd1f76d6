"""The OpenAPI components of body declarations, straight from msgspec's JSON Schema.

A declaration class is named <Name>Body; its component is <Name> (NewTaskBody -> NewTask),
so the document keeps its names while the code keeps the internal NewTask, Deployment and
ServingSpec for what a body turns into.
"""

from __future__ import annotations

from typing import Any

import msgspec

REF_PREFIX = "#/components/schemas/"


def public_name(class_name: str) -> str:
    return class_name.removesuffix("Body")


def body_components(*declarations: type[msgspec.Struct]) -> dict[str, dict[str, Any]]:
    """Component name -> schema, for the declarations and every Struct they hold."""
    _, components = msgspec.json.schema_components(declarations, ref_template=REF_PREFIX + "{name}")
    renamed: dict[str, dict[str, Any]] = {}
    for name, schema in components.items():
        schema = _renamed(schema)
        schema["title"] = public_name(name)
        if "description" in schema:  # a docstring: one paragraph, without its line breaks
            schema["description"] = " ".join(schema["description"].split())
        if public_name(name) in renamed:  # e.g. ResourcesBody and another Resources: one would hide the other
            raise ValueError(f"two declarations are both named {public_name(name)} in the OpenAPI document")
        renamed[public_name(name)] = schema
    return renamed


def _renamed(node: Any) -> Any:
    if isinstance(node, dict):
        out = {key: _renamed(value) for key, value in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            out["$ref"] = REF_PREFIX + public_name(ref.removeprefix(REF_PREFIX))
        return out
    if isinstance(node, list):
        return [_renamed(item) for item in node]
    return node
