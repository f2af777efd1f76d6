"""The child's side: a heartbeat to its parent every agent.heartbeat, to the first of
discovery.servers that answers, with discovery.retry extra attempts each."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from cnetd.background import cancel_and_wait
from cnetd.clock import utc_now
from cnetd.config import DiscoverySection

log = logging.getLogger(__name__)

RETRY_PAUSE = 0.5
HEARTBEAT_PATH = "/api/cluster/heartbeat"


class HeartbeatRefused(Exception):
    """The parent answered, but with a 4xx: retrying the same report cannot help."""


class Uplink:
    def __init__(
        self, settings: DiscoverySection, interval: float, session: aiohttp.ClientSession,
        report: Callable[[], Awaitable[dict[str, Any]]],
    ) -> None:
        self.settings = settings
        self.interval = interval
        self.session = session
        self.report = report
        self.state = "connecting"  # connecting | connected | unreachable | refused
        self.parent: dict[str, Any] | None = None  # what the parent said of itself
        self.parent_url: str | None = None
        self.last_ok: str | None = None
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "servers": list(self.settings.servers),
            "state": self.state,
            "url": self.parent_url,
            "node_id": (self.parent or {}).get("node_id"),
            "node_name": (self.parent or {}).get("node_name"),
            "last_ok": self.last_ok,
            "last_error": self.last_error,
            "heartbeat_interval": self.interval,
        }

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster-uplink")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception:  # never let one bad beat end the loop
                log.exception("heartbeat to the parent failed")
            await asyncio.sleep(self.interval)

    async def beat(self) -> None:
        report = await self.report()
        errors = []
        for server in self.settings.servers:
            try:
                answer = await self._send(server, report)
            except HeartbeatRefused as exc:
                self._set("refused", f"{server}: {exc}")
                return
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                errors.append(f"{server}: {describe(exc)}")
                continue
            self.parent, self.parent_url, self.last_ok = answer.get("parent"), server, utc_now()
            self._set("connected", None)
            return
        self._set("unreachable", "; ".join(errors) or "discovery.servers is empty")

    async def _send(self, server: str, report: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.settings.token}"} if self.settings.token else {}
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        for attempt in range(self.settings.retry + 1):
            try:
                async with self.session.post(server + HEARTBEAT_PATH, json=report, headers=headers,
                                             timeout=timeout) as response:
                    body = await response.json(content_type=None)
                    if 400 <= response.status < 500:
                        message = body.get("error") if isinstance(body, dict) else None
                        raise HeartbeatRefused(f"{response.status}: {message or response.reason}")
                    if response.status != 200 or not isinstance(body, dict):
                        raise aiohttp.ClientResponseError(response.request_info, (), status=response.status,
                                                          message=str(body)[:200])
                    return body
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
                if attempt == self.settings.retry:
                    raise
                await asyncio.sleep(RETRY_PAUSE)
        raise AssertionError("unreachable")

    def _set(self, state: str, error: str | None) -> None:
        """Log transitions only: a parent that is down for an hour is one warning, not 120."""
        if state != self.state or error != self.last_error:
            if state == "connected":
                log.info("reporting to parent %s (%s) every %gs", self.parent_url,
                         (self.parent or {}).get("node_id", "?"), self.interval)
            else:
                log.warning("parent %s: %s", state, error)
        self.state, self.last_error = state, error


def describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__
