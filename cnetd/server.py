"""Serving the app: listen, tell systemd when ready, stop cleanly on SIGTERM/SIGINT.

web.run_app has no hook after the socket listens, and READY=1 must mean "it serves": so
the app is run through AppRunner/SockSite here, with what run_app did (no access log, a
short shutdown timeout). Order on start: bind the API's port (one in use stops the agent
before anything has started), then store, recovery and background parts (the app's
cleanup_ctx, in runner.setup()), then listen, then READY=1. On SIGTERM/SIGINT (the handlers
only set an event): STOPPING=1, stop listening, give open requests shutdown_timeout to
finish, then the app's cleanup (tasks left running or stopped as configured, every log
line written so far ingested into SQLite, the store closed). Every wait of the cleanup has
a bound that is logged when it is reached (README, "Stopping"), so the agent exits well
within the unit's TimeoutStopSec.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import time
import weakref

from aiohttp import web

from cnetd.agent import AGENT
from cnetd.background import cancel_all
from cnetd.sdnotify import Notifier

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 3.0  # seconds open requests (SSE follows too) get after SIGTERM
STATUS_EVERY = 30.0  # seconds between STATUS= refreshes (task counts)


class ListenError(OSError):
    """The socket could not be bound; the message names the address."""


async def serve(app: web.Application, host: str, port: int, notifier: Notifier,
                shutdown_timeout: float = SHUTDOWN_TIMEOUT, ssl_context: ssl.SSLContext | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    _end_streams_on_shutdown(app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout)
    background: list[asyncio.Task[None]] = []
    stopping_since: float | None = None
    listeners = bind_listeners(host, port)  # a port in use stops the start before anything runs
    try:
        notifier.status("starting: opening the store, recovering tasks")
        await runner.setup()
        for sock in listeners:
            await web.SockSite(runner, sock, ssl_context=ssl_context).start()
        url = f"{'https' if ssl_context else 'http'}://{host}:{port}"
        agent = app.get(AGENT)
        sandbox = agent.sandbox_name if agent is not None else "?"
        summary = f"serving {url}, sandbox {sandbox}"
        notifier.ready(summary)
        log.info("ready: %s", summary)
        if notifier.enabled:
            background.append(asyncio.create_task(notifier.run_watchdog(), name="sd-watchdog"))
            background.append(asyncio.create_task(_refresh_status(app, notifier, summary), name="sd-status"))
        await stop.wait()
        stopping_since = time.monotonic()
        log.info("shutting down: no new requests; open ones get %.0fs", shutdown_timeout)
        stop_on_exit = agent is not None and agent.config.tasks.stop_on_exit
        notifier.stopping("stopping: " + ("stopping running tasks (tasks.stop_on_exit)" if stop_on_exit
                                          else "running tasks keep running"))
    finally:
        await cancel_all(background)
        try:
            await runner.cleanup()
            for sock in listeners:  # the sites closed theirs; these are the ones never served
                sock.close()
        finally:
            for sig in signals:  # only now: a second SIGTERM must not cut the cleanup short
                loop.remove_signal_handler(sig)
            notifier.close()
    if stopping_since is None:
        log.info("stopped")
    else:
        log.info("stopped %.1fs after the signal", time.monotonic() - stopping_since)


def bind_listeners(host: str, port: int) -> list[socket.socket]:
    """The API's sockets for host (every address it names), bound but not yet listening,
    as loop.create_server would bind them; ListenError names the address when one cannot be."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio does: an IPv6 socket does not take IPv4 too
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sockets


def _end_streams_on_shutdown(app: web.Application) -> None:
    """Streams (SSE log follows, live UI fragments) never finish on their own: on shutdown
    cancel their handlers, so that they do not hold the exit for the whole timeout.
    Ordinary requests in flight still get shutdown_timeout to complete."""
    streams: weakref.WeakSet[asyncio.Task[None]] = weakref.WeakSet()

    async def remember(request: web.Request, response: web.StreamResponse) -> None:
        if not isinstance(response, web.Response) and request.task is not None:
            streams.add(request.task)

    async def cancel(_app: web.Application) -> None:
        for task in list(streams):
            task.cancel()

    app.on_response_prepare.append(remember)
    app.on_shutdown.append(cancel)


async def _refresh_status(app: web.Application, notifier: Notifier, summary: str) -> None:
    """STATUS= with the task counts, for `systemctl status cnet-agent`."""
    agent = app.get(AGENT)
    if agent is None:
        return
    while True:
        await asyncio.sleep(STATUS_EVERY)
        try:
            counts = await asyncio.wait_for(agent.tasks.counts(), STATUS_EVERY)
        except Exception as exc:  # the status line is a courtesy: never fatal
            log.debug("status refresh failed: %s", exc)
            continue
        running = counts.get("running", 0) + counts.get("starting", 0)
        notifier.status(f"{summary}; {running} running, {counts.get('pending', 0)} pending")
