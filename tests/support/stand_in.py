"""A stand-in HTTP server on loopback, on its own thread and event loop: for a node (or an
API) a test needs to answer in ways a real agent cannot be made to, or does not yet. It
records every request it gets."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from tests.support.agent import free_port

Answer = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Seen:
    method: str
    raw_path: str  # as sent, still percent-encoded, with its query
    body: bytes
    headers: dict[str, str]


class StandIn:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: list[Seen] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> StandIn:
        self._thread.start()
        assert self._ready.wait(10), "the stand-in server did not start"
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.raw_path, body, dict(request.headers)))
        return await self.answer(request, body)
