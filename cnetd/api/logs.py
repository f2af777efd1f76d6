"""Log endpoints shared by tasks and models: the last N lines as a JSON array of
strings, or ?follow=1 as a server-sent event stream."""

from __future__ import annotations

import json

from aiohttp import web

from cnetd import sse
from cnetd.agent import AGENT
from cnetd.api.params import bool_param, int_param
from cnetd.api.serialize import json_response

DEFAULT_LINES = 100
MAX_LINES = 10_000
KEEPALIVE_SECONDS = 15.0


async def logs_response(request: web.Request, task_id: str) -> web.StreamResponse:
    lines = int_param(request, "lines", DEFAULT_LINES, 1, MAX_LINES)
    logs = request.app[AGENT].logs
    rows = await logs.tail(task_id, lines)  # 404 for an unknown id
    if bool_param(request, "follow"):
        resume_after = sse.last_event_id(request)  # a 400 before the stream starts
        if resume_after is not None:  # a reconnect: everything after what it has, not the last N
            return await _follow(request, task_id, [], resume_after)
        return await _follow(request, task_id, rows, 0)
    return json_response([line for _, line in rows])  # where lines were dropped, the store keeps a marker line


async def _follow(request: web.Request, task_id: str, backlog: list[tuple[int, str]], last: int) -> web.StreamResponse:
    agent = request.app[AGENT]

    async def produce(events: sse.EventWriter) -> None:
        nonlocal last
        rows = backlog
        while True:
            for seq, line in rows:
                await events.send("line", json.dumps(line, ensure_ascii=False), seq)
                last = seq
            task = await agent.tasks.get(task_id)
            rows = await agent.logs.after(task_id, last)
            if rows:
                continue
            if task.status.terminal:
                await events.send("end", json.dumps(str(task.status)))
                return
            if not await agent.logs.wait_for_lines(task_id, last, KEEPALIVE_SECONDS):
                await events.keepalive()

    return await sse.stream(request, produce, f"log stream of task {task_id}")
