"""/api/environments: the Python environments of this node's models (cnetd.ml.envs)."""

from __future__ import annotations

from aiohttp import web

from cnetd.agent import AGENT
from cnetd.api.serialize import json_response


async def list_environments(request: web.Request) -> web.Response:
    return json_response(await request.app[AGENT].environments.describe())


async def get_environment(request: web.Request) -> web.Response:
    return json_response(await request.app[AGENT].environments.describe_one(request.match_info["key"]))
