"""GET /api/cluster/artifacts/{model_id}: this node's file of a trained model, for another
agent of the cluster that is to serve the model too (peers only: the cluster token
middleware answers anyone else 401). The file is the one the model's own record names,
reached without following a symlink (cnetd.cluster.artifacts); its sha256 and size go in
the headers before the bytes."""

from __future__ import annotations

import asyncio
import logging
import os

from aiohttp import web

from cnetd.agent import AGENT
from cnetd.cluster.artifacts import CONTENT_TYPE, SHA256_HEADER, SIZE_HEADER, read_chunk
from cnetd.cluster.records import NODE_ID_PATTERN
from cnetd.errors import Conflict, Invalid, NotFound
from cnetd.security.modeldirs import ModelDirError

log = logging.getLogger(__name__)


async def model_artifact(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    cluster = agent.cluster
    if cluster is None or cluster.failover is None:  # the cluster token middleware answers 404 first
        raise NotFound("this agent is not part of a cluster")
    model_id = request.match_info["model_id"]
    if not NODE_ID_PATTERN.match(model_id):
        raise Invalid("model_id", "is not a model id")
    model = await agent.models.get(model_id)
    path = agent.models.catalog.artifact_file(model)  # a version's own copy when it has one
    try:
        fd, artifact = await cluster.failover.artifacts.open(path)
    except FileNotFoundError:
        raise Conflict(f"model {model.record.name} has no model file ({model.record.model_path}) on this node; "
                       f"its deploy task is {model.task.status}", {"id": model_id}) from None
    except (ModelDirError, OSError) as exc:
        log.warning("artifact of model %s (%s) not sent to node %s: %s", model.record.name, model_id,
                    request.headers.get("X-CNET-Forwarded-By", "?"), exc)
        raise Conflict(f"model {model.record.name}: its file is not sent: {exc}", {"id": model_id}) from None
    try:
        response = web.StreamResponse(headers={
            "Content-Type": CONTENT_TYPE, SHA256_HEADER: artifact.sha256, SIZE_HEADER: str(artifact.size),
        })
        response.content_length = artifact.size
        await response.prepare(request)
        offset = 0
        while offset < artifact.size:
            chunk = await asyncio.to_thread(read_chunk, fd, offset, artifact.size)
            if not chunk:  # the file shrank since it was hashed: cut, so no half file passes for whole
                log.warning("model %s: its file shrank while it was sent; connection cut", model_id)
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write(chunk)
            offset += len(chunk)
        await response.write_eof()
        return response
    finally:
        os.close(fd)
