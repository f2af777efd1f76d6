"""Server-sent events, one way for the API's log follow and the UI's live task page: the
same headers, the same reading of Last-Event-ID, the same message format.

Last-Event-ID is what an EventSource sends back when it reconnects: the last id it got,
which is always one of our decimal ids. Anything else is a client's mistake, so it is a 400
naming the header before the stream starts (replaying from 0 instead would hide the
mistake and send every line again). An empty or absent header means "from the start".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from cnetd.errors import Invalid

log = logging.getLogger(__name__)

HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-store",  # log lines and task pages may hold what a task printed
    "X-Accel-Buffering": "no",  # a proxy in front must pass each event on at once
}
LAST_EVENT_ID = "Last-Event-ID"
MAX_EVENT_ID = 2**63 - 1  # the ids are SQLite integers
_DECIMAL = re.compile(r"[0-9]{1,19}")


def _event_id(raw: str, name: str) -> int:
    if _DECIMAL.fullmatch(raw) is None or int(raw) > MAX_EVENT_ID:
        shown = raw if len(raw) <= 40 else raw[:37] + "..."
        raise Invalid(name, f"must be an event id this stream sent (a whole number in 0..{MAX_EVENT_ID}), got {shown!r}")
    return int(raw)


def last_event_id(request: web.Request, query_name: str | None = None) -> int | None:
    """The id of the last event the client has: the Last-Event-ID header, else the query
    parameter query_name when given; None when it names none (a new follower). Invalid
    (a 400) for anything but an id."""
    header = request.headers.get(LAST_EVENT_ID, "")
    if header:
        return _event_id(header, LAST_EVENT_ID)
    raw = request.query.get(query_name, "") if query_name else ""
    return _event_id(raw, query_name) if raw and query_name else None


def message(event: str, data: str, event_id: int | None = None) -> bytes:
    """One event; each line of data is a data: line (a CR would end one early: dropped)."""
    parts = [] if event_id is None else [f"id: {event_id}"]
    parts.append(f"event: {event}")
    parts += [f"data: {line}" for line in data.replace("\r", "").split("\n")]
    return ("\n".join(parts) + "\n\n").encode()


class EventWriter:
    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response

    async def send(self, event: str, data: str, event_id: int | None = None) -> None:
        await self._response.write(message(event, data, event_id))

    async def keepalive(self) -> None:
        """A comment line: keeps proxies and the browser from timing the stream out."""
        await self._response.write(b": keepalive\n\n")


async def stream(request: web.Request, produce: Callable[[EventWriter], Awaitable[None]], what: str) -> web.StreamResponse:
    """Answer 200 with an event stream and run produce until it returns or the client
    goes away. Check the request (last_event_id, a 404) before calling this: once the
    stream has started, an error can no longer be a status."""
    response = web.StreamResponse(headers=HEADERS)
    await response.prepare(request)
    try:
        await produce(EventWriter(response))
    except ConnectionError:
        log.debug("%s: the client went away", what)
    return response
