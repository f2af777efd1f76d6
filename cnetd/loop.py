"""The agent's event loop: uvloop (libuv, its transports and callbacks in C) when it is
installed, else asyncio's own; agent.event_loop (CNET_EVENT_LOOP) picks one by name.

Why uvloop (issue 14): a warm prediction crosses the loop four times (the HTTP request in,
the batch out to the worker, its answer back, the HTTP answer out), and on a small request
the loop's own Python (selector, handles, transports) is a good part of what the agent
spends. uvloop is pinned in constraints.txt and installed with the agent; the agent runs
the same without it (`auto`), so a build that lacks it still starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from cnetd.config.model import EventLoopKind

log = logging.getLogger(__name__)

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class LoopUnavailable(RuntimeError):
    """agent.event_loop names a loop that cannot be imported here."""


def loop_factory(kind: EventLoopKind) -> tuple[LoopFactory | None, str]:
    """(factory for asyncio.Runner, or None for asyncio's default; the loop's name)."""
    if kind == "asyncio":
        return None, "asyncio"
    try:
        import uvloop
    except ImportError as exc:
        if kind == "uvloop":
            raise LoopUnavailable(f"agent.event_loop: uvloop is not installed here ({exc})") from None
        log.info("uvloop is not installed: using asyncio's own event loop")
        return None, "asyncio"
    return uvloop.new_event_loop, f"uvloop {getattr(uvloop, '__version__', '?')}"
