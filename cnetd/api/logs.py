"""Log endpoints shared by tasks and models: the last N lines as a JSON array of
strings, or ?follow=1 as a server-sent event stream."""

from __future__ import annotations

import json

from aiohttp import web

from cnetd.agent import AGENT
from cnetd.api.params import bool_param, int_param
from cnetd.api.serialize import json_response

DEFAULT_LINES = 100
MAX_LINES = 10_000
KEEPALIVE_SECONDS = 15.0


async def logs_response(request: web.Request, task_id: str) -> web.StreamResponse:
    lines = int_param(request, "lines", DEFAULT_LINES, 1, MAX_LINES)
    rows = await request.app[AGENT].logs.tail(task_id, lines)  # 404 for an unknown id
    if bool_param(request, "follow"):
        return await _follow(request, task_id, rows)
    return json_response([line for _, line in rows])  # where lines were dropped, the store keeps a marker line


async def _follow(request: web.Request, task_id: str, backlog: list[tuple[int, str]]) -> web.StreamResponse:
    agent = request.app[AGENT]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    last = int(request.headers.get("Last-Event-ID", "0") or 0)
    rows = [r for r in backlog if r[0] > last]
    try:
        while True:
            for seq, line in rows:
                await response.write(f"id: {seq}\nevent: line\ndata: {json.dumps(line, ensure_ascii=False)}\n\n".encode())
                last = seq
            task = await agent.tasks.get(task_id)
            rows = await agent.logs.after(task_id, last)
            if rows:
                continue
            if task.status.terminal:
                await response.write(f"event: end\ndata: {json.dumps(str(task.status))}\n\n".encode())
                break
            if not await agent.logs.wait_for_lines(task_id, last, KEEPALIVE_SECONDS):
                await response.write(b": keepalive\n\n")
    except ConnectionResetError:
        pass
    return response
