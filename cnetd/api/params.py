"""Query-string parameters, checked with a 400 that names them."""

from __future__ import annotations

from aiohttp import web

from cnetd.errors import Invalid


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(name, f"must be a whole number in {low}..{high}, got {raw!r}") from None
    if not low <= value <= high:
        raise Invalid(name, f"must be in {low}..{high}, got {value}")
    return value


def bool_param(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "").lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise Invalid(name, f"must be true or false, got {raw!r}")


def choice_param(request: web.Request, name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise Invalid(name, f"must be one of {', '.join(choices)}, got {raw!r}")
    return raw
