"""sd_notify(3) over $NOTIFY_SOCKET, without libsystemd: READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

systemd (Type=notify) passes NOTIFY_SOCKET, and with WatchdogSec= also WATCHDOG_USEC and
WATCHDOG_PID. The Notifier reads them once and removes them (and the other variables that
describe the agent's own service: INVOCATION_ID, JOURNAL_STREAM, ...) from the environment,
as sd_notify's unset_environment does, so that the task processes the agent starts neither
inherit them nor can speak for the agent.

The PyInstaller one-file binary runs the agent as the child of its bootloader, and the
bootloader is the service's main PID: the watchdog therefore also accepts WATCHDOG_PID
naming our parent when we run frozen, and the unit sets NotifyAccess=all so that systemd
takes messages from the child (the task processes live in their own scopes, outside the
service's cgroup, and never see the socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

# What the service manager passes to the agent's own process only: task processes started by
# the agent must not inherit them (they are not part of the service, nor its journal stream).
ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM",
            "SYSTEMD_EXEC_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def _address(raw: str) -> str | bytes | None:
    """A path, or an abstract socket written as @name; anything else is not for us."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None


def _watchdog_interval(environ: MutableMapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings (half the timeout), or None when not asked for."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    try:
        timeout = int(usec) / 1_000_000
    except ValueError:
        return None
    if timeout <= 0:
        return None
    if pid:
        mine = {os.getpid()}
        if getattr(sys, "frozen", False):
            mine.add(os.getppid())  # the one-file bootloader is the unit's main process
        try:
            if int(pid) not in mine:
                return None
        except ValueError:
            return None
    return timeout / 2


class Notifier:
    """Talks to the service manager; every method is a no-op outside systemd."""

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.address = _address(raw) if raw else None
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a path or an abstract socket; not notifying", raw)
        self.watchdog_interval = _watchdog_interval(env) if self.address is not None else None
        for key in ENV_KEYS:
            env.pop(key, None)
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send one datagram of KEY=VALUE lines; False when not under systemd or it failed."""
        if self.address is None:
            return False
        message = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self.address)
        except OSError as exc:
            if not self._warned:  # a watchdog ping every few seconds must not flood the log
                log.warning("sd_notify to %r failed: %s", self.address, exc)
                self._warned = True
            return False
        return True

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def stopping(self, status: str) -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    async def run_watchdog(self) -> None:
        """Ping at half of WATCHDOG_USEC for as long as the event loop turns: a blocked
        loop misses its pings and systemd restarts the agent. Own and cancel this task."""
        interval = self.watchdog_interval
        if interval is None:
            return
        log.info("systemd watchdog: pinging every %.1fs", interval)
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
