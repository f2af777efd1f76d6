"""Live parts of a task page: one server-sent event stream per page (log lines as they
are ingested, the summary and timeline whenever the TaskBus says the task changed),
plus the polled usage chart."""

from __future__ import annotations

import asyncio
from typing import Literal

from aiohttp import web
from markupsafe import Markup

from cnetd import sse
from cnetd.background import cancel_all
from cnetd.tasks.bus import TaskChange
from cnetd.ui import detail
from cnetd.ui.common import agent_of, renderer, ui_of
from cnetd.ui.render import fragment_response, polled

KEEPALIVE_SECONDS = 15.0
LINES_PER_EVENT = 500

News = Literal["lines", "status", "progress", "resubscribe", "idle", "closing"]


async def _next_change(queue: asyncio.Queue[TaskChange | None], task_id: str) -> TaskChange | None:
    while True:
        change = await queue.get()
        if change is None or change.task_id == task_id:
            return change


class _Stream:
    def __init__(self, request: web.Request, events: sse.EventWriter, task_id: str, last: int) -> None:
        self.request = request
        self.events = events
        self.agent = agent_of(request)
        self.ui = ui_of(request)
        self.task_id = task_id
        self.last = last
        self.queue = self.agent.tasks.bus.subscribe()

    async def send_state(self, timeline: bool = True) -> None:
        task = await self.agent.tasks.get(self.task_id)
        model = await detail.find_model(self.agent, task)
        r = renderer(self.request)
        ctx = detail.summary_context(self.agent, task, model)
        await self.events.send("summary", r.string(self.request, "_summary.html", ctx))
        if timeline:
            tl = await detail.timeline_context(self.agent, task)
            await self.events.send("timeline", r.string(self.request, "_timeline.html", tl))

    async def send_lines(self) -> bool:
        rows = await self.agent.logs.after(self.task_id, self.last, LINES_PER_EVENT)
        if not rows:
            return False
        html = renderer(self.request).string(self.request, "_log_lines.html", {"lines": rows})
        self.last = rows[-1][0]
        await self.events.send("log", html, self.last)
        return True

    async def wait_for_news(self) -> News:
        waiters: dict[asyncio.Task[object], str] = {
            asyncio.create_task(self.agent.logs.wait_for_lines(self.task_id, self.last, KEEPALIVE_SECONDS)): "lines",
            asyncio.create_task(_next_change(self.queue, self.task_id)): "change",
            asyncio.create_task(self.ui.closing.wait()): "closing",
        }
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_all(waiters)
        if self.ui.closing.is_set():
            return "closing"
        for waiter in done:
            if waiters[waiter] == "change":
                change = waiter.result()
                if not isinstance(change, TaskChange):  # None: the bus is closing
                    return "resubscribe"
                return "progress" if change.kind == "progress" else "status"
        return "lines" if any(w.result() for w in done) else "idle"

    async def run(self) -> None:
        await self.send_state()
        while not self.ui.closing.is_set():
            if await self.send_lines():
                continue
            task = await self.agent.tasks.get(self.task_id)
            if task.status.terminal:
                if await self.send_lines():  # lines ingested just before the status changed
                    continue
                await self.send_state()
                await self.events.send("end", str(task.status))
                return
            news = await self.wait_for_news()
            if news == "closing":
                return  # the browser reconnects to the restarted agent by itself
            if news == "resubscribe":  # the bus dropped us as too slow: catch up
                self.agent.tasks.bus.unsubscribe(self.queue)
                self.queue = self.agent.tasks.bus.subscribe()
                await self.send_state()
            elif news in ("status", "progress"):
                await self.send_state(timeline=news == "status")
            elif news == "idle":
                await self.events.keepalive()

    def close(self) -> None:
        self.agent.tasks.bus.unsubscribe(self.queue)


async def task_live(request: web.Request) -> web.StreamResponse:
    task_id = request.match_info["id"]
    await agent_of(request).tasks.get(task_id)  # 404 before the stream starts
    after = sse.last_event_id(request, "after") or 0  # and a 400 for an id it never sent

    async def produce(events: sse.EventWriter) -> None:
        stream = _Stream(request, events, task_id, after)
        try:
            await stream.run()
        finally:
            stream.close()

    return await sse.stream(request, produce, f"live stream of task {task_id}")


def usage_fragment(request: web.Request, ctx: dict[str, object]) -> tuple[Markup, bool]:
    task = ctx["task"]
    inner = renderer(request).string(request, "_usage.html", ctx)
    url = str(request.app.router["ui-task-usage"].url_for(id=task.id))  # type: ignore[attr-defined]
    markup, unchanged = polled(request, inner, url, "usage", "2s" if ctx["running"] else None)
    return markup, unchanged


async def task_usage(request: web.Request) -> web.Response:
    agent = agent_of(request)
    task = await agent.tasks.get(request.match_info["id"])
    return fragment_response(*usage_fragment(request, detail.usage_context(agent, task)))
