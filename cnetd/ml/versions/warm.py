"""Warming a version before traffic moves to it: serve it (with the settings of the version
it takes over from, when it is not served yet), wait until every replica is loaded, then one
smoke inference. A version is warm when its worker answered the smoke input at all (a model
refusing the smoke input as invalid still answered)."""

from __future__ import annotations

import logging
from typing import Any

from cnetd.errors import DomainError
from cnetd.ml.serving.batcher import Rejected
from cnetd.ml.serving.manager import ServingManager
from cnetd.ml.serving.spec import FIELDS

log = logging.getLogger(__name__)

WARM_TIMEOUT = 300.0


def spec_body(serving: dict[str, Any] | None) -> dict[str, Any] | None:
    """The serving settings of a stored serving state, as a serve body."""
    if not serving:
        return None
    return {k: v for k, v in serving.items() if k in FIELDS}


async def serve_like(manager: ServingManager, model_id: str, like: str | None) -> None:
    """Serve model_id unless it is served, with the settings of `like` (a served deploy) or
    its own stored ones."""
    if manager.served(model_id) is not None:
        return
    source = manager.served(like) if like is not None else None
    if source is not None:
        body: dict[str, Any] | None = source.spec.to_json()
    else:
        body = spec_body((await manager.catalog.get(model_id)).record.serving)
    await manager.serve(model_id, body)


async def warm(manager: ServingManager, model_id: str, timeout: float = WARM_TIMEOUT, smoke: bool = True) -> str | None:
    """None once the served deploy is warm; else why not. smoke: False for a name's first
    version (no traffic moves to it from another version: nothing to protect)."""
    if not await manager.wait_ready(model_id, timeout):
        served = manager.served(model_id)
        if served is None:
            return "it is not served"
        errors = sorted({r.last_error for r in served.replicas if r.last_error})
        return f"not every replica was ready after {timeout:g}s" + (f" (last error: {errors[-1]})" if errors else "")
    served = manager.served(model_id)
    if served is None:
        return "serving stopped while it was warming"
    if not smoke:
        return None
    try:
        await served.predict([[0.0] * (served.n_features or 1)])
    except Rejected as exc:
        log.info("model %s: the smoke input was refused (%s); the worker answered, so it is warm", served.name, exc.message)
    except DomainError as exc:
        return f"the smoke inference failed: {exc.message}"
    return None
