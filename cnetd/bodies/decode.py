"""decode_body: a decoded JSON value -> a typed body (a msgspec Struct), or an Invalid that
names the field with a dotted path (resources.memory_limit, env.FOO, args[3]) and says what
is wrong in the agent's own words.

msgspec does the checking, in C, in one pass. Its messages ("Expected `int` >= 1 - at
`$.serving.replicas`") are turned into ours: the path it gives is followed through the
declaration and through the value the caller sent, and the problem is worded from the
declared type, or from the declaration's own words: Meta(extra={"invalid": "must be ...",
"required": "is required: ..."}). The caller's text is never parsed out of the message.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from cnetd.bodies.describe import container_args, describe, present, struct_of, wording
from cnetd.bodies.jsonvalue import json_type, shown
from cnetd.errors import Invalid

S = TypeVar("S", bound=msgspec.Struct)

# The end of a msgspec message: " - at `$.a[3].b`", or " - at `key` in `$.env`" for a dict key.
# Field names in a path are declared names; a caller's dict keys appear only as [...].
_WHERE = re.compile(r" - at `(?P<key>key` in `)?(?P<path>\$(?:\.[A-Za-z_]\w*|\[\d+\]|\[\.\.\.\])*)`\Z")
_STEP = re.compile(r"\.([A-Za-z_]\w*)|\[(\d+)\]|\[(\.\.\.)\]")
_TYPE_MISMATCH = re.compile(r"Expected `[^`]*`, got `[^`]*`\Z")
_MISSING = re.compile(r"Object missing required field `([A-Za-z_]\w*)`\Z")
_UNKNOWN = "Object contains unknown field"
_ABSENT = object()


def decode_body(value: Any, cls: type[S], where: str = "") -> S:
    """value (from json.loads) checked against the declaration cls; where names the value
    in errors when it is part of a larger body ("serving"), else it is "body"."""
    try:
        return msgspec.convert(value, cls)
    except msgspec.ValidationError as exc:
        raise refusal(str(exc), value, cls, where) from None


@dataclass(frozen=True)
class _Spot:
    """A place in the body: its declared type, what the caller sent there, its name."""

    annotation: Any
    value: Any
    field: str
    required: bool = True


def refusal(message: str, value: Any, annotation: Any, field: str = "") -> Invalid:
    """The Invalid for msgspec's message about value (declared as annotation) at field."""
    if message.startswith(_UNKNOWN):  # before the path: the caller's text comes first here
        return _unknown(_Spot(annotation, value, field))
    where = _WHERE.search(message)
    what = message[: where.start()] if where else message
    spot = _Spot(annotation, value, field)
    for name, index, any_key in _STEP.findall(where.group("path")) if where else []:
        if any_key:  # a dict value: msgspec does not say which; find it and check it alone
            return _bad_dict_value(spot)
        moved = _step(spot, name, int(index) if index else None)
        if moved is None:
            break  # the path does not fit the value: report where we are
        spot = moved
    if where and where.group("key"):
        return _bad_dict_key(spot)
    missing = _MISSING.match(what)
    if missing:
        return _missing(spot, missing.group(1))
    return _wrong(spot, type_mismatch=bool(_TYPE_MISMATCH.match(what)))


@functools.cache
def _fields(struct: type[msgspec.Struct]) -> dict[str, msgspec.structs.FieldInfo]:
    """A Struct's fields by their JSON name (msgspec.structs.fields evaluates the annotations
    anew on every call)."""
    return {f.encode_name: f for f in msgspec.structs.fields(struct)}


def _fields_of(annotation: Any) -> dict[str, msgspec.structs.FieldInfo]:
    struct = struct_of(annotation)
    return _fields(struct) if struct is not None else {}


@functools.cache
def _holder(annotation: Any) -> type[msgspec.Struct]:
    """A one-field Struct around annotation, so that checking one value against it reuses
    msgspec's cached type information (convert with a bare Annotated type rebuilds it)."""
    return msgspec.defstruct("One", [("v", annotation)])


def _check(value: Any, annotation: Any) -> str | None:
    """msgspec's message for value against annotation, relative to the value ($...), or None."""
    try:
        msgspec.convert({"v": value}, _holder(annotation))
    except msgspec.ValidationError as exc:
        return str(exc).replace("`$.v", "`$", 1)
    return None


def _join(field: str, name: str) -> str:
    return f"{field}.{name}" if field else name


def _step(spot: _Spot, name: str, index: int | None) -> _Spot | None:
    if index is not None:
        args = container_args(spot.annotation, list)
        if args is None or not isinstance(spot.value, list) or index >= len(spot.value):
            return None
        return _Spot(args[0], spot.value[index], f"{spot.field}[{index}]")
    info = _fields_of(spot.annotation)
    if name not in info or not isinstance(spot.value, Mapping):
        return None
    return _Spot(info[name].type, spot.value.get(name, _ABSENT), _join(spot.field, name), info[name].required)


def _bad_dict_value(spot: _Spot) -> Invalid:
    args = container_args(spot.annotation, dict)
    if args is not None and isinstance(spot.value, Mapping):
        for key, item in spot.value.items():
            problem = _check(item, args[1])
            if problem is not None:
                return refusal(problem, item, args[1], _join(spot.field, str(key)))
    return _wrong(spot, type_mismatch=False)


def _bad_dict_key(spot: _Spot) -> Invalid:
    args = container_args(spot.annotation, dict)
    if args is not None and isinstance(spot.value, Mapping):
        for key in spot.value:
            if _check(key, args[0]) is not None:
                name = _join(spot.field, str(key))
                return Invalid(name, wording(args[0], "invalid") or f"is not a valid key: must be {describe(args[0])}")
    return _wrong(spot, type_mismatch=False)


def _missing(spot: _Spot, name: str) -> Invalid:
    fields = _fields_of(spot.annotation)
    declared = fields[name].type if name in fields else None
    return Invalid(_join(spot.field, name), wording(declared, "required") or "is required")


def _unknown(spot: _Spot) -> Invalid:
    """The first unknown field (sorted), found in the value itself: the name msgspec quotes
    is the caller's text, which could imitate a path."""
    for field, allowed, unknown in _unknown_fields(spot.annotation, spot.value, spot.field):
        return Invalid(_join(field, unknown), f"unknown field (allowed: {', '.join(allowed)})")
    return Invalid(spot.field or "body", "has an unknown field")


def _unknown_fields(annotation: Any, value: Any, field: str) -> Iterator[tuple[str, list[str], str]]:
    """(object's field, its allowed names, an unknown name) for each object in value, depth first."""
    fields = _fields_of(annotation)
    if not fields or not isinstance(value, Mapping):
        return
    unknown = sorted(str(k) for k in value if k not in fields)
    if unknown:
        yield field, sorted(fields), unknown[0]
    for name, info in fields.items():
        if name in value:
            yield from _unknown_fields(info.type, value[name], _join(field, name))


def _wrong(spot: _Spot, type_mismatch: bool) -> Invalid:
    name = spot.field or "body"
    required = wording(spot.annotation, "required")
    if spot.required and spot.field and spot.value in (None, _ABSENT):
        return Invalid(name, required or "is required")
    if spot.required and required and isinstance(spot.value, str) and not spot.value.strip():
        return Invalid(name, required)  # a blank name is a missing one, as a form sends it
    problem = wording(spot.annotation, "invalid") or f"must be {describe(present(spot.annotation))}"
    if type_mismatch or spot.value is None:
        return Invalid(name, f"{problem}, got {json_type(spot.value)}")
    value = shown(spot.value)
    return Invalid(name, problem if value is None else f"{problem}, got {value}")
