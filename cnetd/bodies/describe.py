"""A declared type in words ("a string of at most 4096 characters with no NUL", "a whole
number between 1 and 64"), for the errors of bodies whose declarations carry no wording of
their own. Reads the typing annotations of msgspec Structs: Annotated + msgspec.Meta,
unions, list, dict, Literal, Struct."""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Union

import msgspec

NO_NUL = r"^[^\x00]*$"  # the pattern of a string that must not hold NUL (argv, env, paths)
WHOLE = "a whole number"


@dataclass(frozen=True)
class Constraints:
    """The msgspec.Meta constraints and wording stacked on one type."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    multiple_of: float | None = None
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    extra: dict[str, Any] | None = None


@functools.cache  # annotations are hashable, and few
def unwrap(annotation: Any) -> tuple[Any, Constraints]:
    """The type under any Annotated layers, and their metadata merged."""
    merged: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    while typing.get_origin(annotation) is typing.Annotated:
        annotation, *metas = typing.get_args(annotation)
        for meta in metas:
            if not isinstance(meta, msgspec.Meta):
                continue
            for name in ("gt", "ge", "lt", "le", "multiple_of", "pattern", "min_length", "max_length"):
                if getattr(meta, name) is not None:
                    merged.setdefault(name, getattr(meta, name))
            extra = {**(meta.extra or {}), **extra}
    return annotation, Constraints(**merged, extra=extra or None)


def is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType)


def present(annotation: Any) -> Any:
    """The annotation without its None / UNSET alternatives (what a given value must be)."""
    base, _ = unwrap(annotation)
    if not is_union(base):
        return annotation
    members = [m for m in typing.get_args(base) if m not in (type(None), msgspec.UnsetType)]
    return members[0] if len(members) == 1 else annotation


def struct_of(annotation: Any) -> type[msgspec.Struct] | None:
    """The Struct a field holds (through Optional and Annotated), or None."""
    for candidate in _alternatives(annotation):
        if isinstance(candidate, type) and issubclass(candidate, msgspec.Struct):
            return candidate
    return None


def container_args(annotation: Any, origin: type) -> tuple[Any, ...] | None:
    """The type arguments of list[...] / dict[...] under the annotation, or None."""
    for candidate in _alternatives(annotation):
        if typing.get_origin(candidate) is origin:
            return typing.get_args(candidate)
    return None


def wording(annotation: Any, key: str) -> str | None:
    """A declaration's own words for a problem ("invalid", "required"), if it has them."""
    _, constraints = unwrap(present(annotation))
    value = (constraints.extra or {}).get(key)
    return value if isinstance(value, str) else None


def _alternatives(annotation: Any) -> Iterator[Any]:
    base, _ = unwrap(annotation)
    if is_union(base):
        for member in typing.get_args(base):
            yield from _alternatives(member)
    else:
        yield base


@functools.cache
def describe(annotation: Any) -> str:
    """What a value of this type must be, as the end of "must be ..."."""
    base, c = unwrap(annotation)
    if is_union(base):
        words = list(dict.fromkeys(
            describe(m) for m in typing.get_args(base) if m not in (type(None), msgspec.UnsetType)
        ))
        # int | float with the same range: "a number" says it all
        words = [w for w in words if not (w.startswith(WHOLE) and "a number" + w.removeprefix(WHOLE) in words)]
        return " or ".join(words)
    if isinstance(base, type) and issubclass(base, msgspec.Struct):
        return "a JSON object"
    if typing.get_origin(base) is Literal:
        values = typing.get_args(base)
        return f'"{values[0]}"' if len(values) == 1 else "one of " + ", ".join(str(v) for v in values)
    if base is str:
        return _string(c)
    if base is bool:
        return "true or false"
    if base in (int, float):
        whole = base is int or c.multiple_of == 1
        return (WHOLE if whole else "a number") + _range(c)
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        limit = f" (at most {c.max_length} items)" if c.max_length is not None else ""
        return f"an array of {_kind(item)}s{limit}"
    if typing.get_origin(base) is dict:
        _, value = typing.get_args(base)
        limit = f" (at most {c.max_length} entries)" if c.max_length is not None else ""
        return f"an object of {_kind(value)} values{limit}"
    return "any JSON value"


def _kind(annotation: Any) -> str:
    base, c = unwrap(annotation)
    if base is str:
        return "string"
    if base is int or (base is float and c.multiple_of == 1):
        return "whole number"
    if base is float:
        return "number"
    return "JSON value"


def _string(c: Constraints) -> str:
    text = "a non-empty string" if (c.min_length or 0) >= 1 else "a string"
    if c.max_length is not None:
        text += f" of at most {c.max_length} characters"
    if c.pattern == NO_NUL:
        text += " with no NUL"
    elif c.pattern is not None:
        text += f" matching {c.pattern}"
    return text


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _range(c: Constraints) -> str:
    if c.ge is not None and c.le is not None:
        return f" between {number(c.ge)} and {number(c.le)}"
    parts = []
    if c.ge is not None:
        parts.append(f">= {number(c.ge)}")
    if c.gt is not None:
        parts.append(f"> {number(c.gt)}")
    if c.le is not None:
        parts.append(f"at most {number(c.le)}")
    if c.lt is not None:
        parts.append(f"below {number(c.lt)}")
    return " " + " and ".join(parts) if parts else ""
