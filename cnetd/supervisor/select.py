"""Choosing the sandbox backend from `tasks.sandbox: auto | systemd | cgroup | none`.

auto takes the best that works here: systemd scopes, else cgroupfs, else none; the one-line
reason says what was chosen and whether cpu and memory limits are enforced. An explicit
choice that cannot work is an error: the agent stops with its message.
"""

from __future__ import annotations

import logging
from typing import Literal

from cnetd.supervisor import cgroup, systemd
from cnetd.supervisor.base import Sandbox
from cnetd.supervisor.none import NoneSandbox

log = logging.getLogger(__name__)

Mode = Literal["auto", "systemd", "cgroup", "none"]
MODES: tuple[Mode, ...] = ("auto", "systemd", "cgroup", "none")


class SandboxUnavailable(RuntimeError):
    """The configured backend cannot run here; the message says why."""


def choose_sandbox(mode: Mode, cgroup_group: str = "cnet", slice_name: str = "cnet.slice") -> tuple[Sandbox, str]:
    sandbox, reason = _choose(mode, cgroup_group, slice_name)
    log.info("sandbox %s", reason)
    return sandbox, reason


def _choose(mode: Mode, cgroup_group: str, slice_name: str) -> tuple[Sandbox, str]:
    if mode not in MODES:
        raise SandboxUnavailable(f"tasks.sandbox must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "none":
        return NoneSandbox(), "none (configured): cpu and memory limits NOT enforced"
    systemd_why = cgroup_why = ""
    if mode in ("auto", "systemd"):
        ok, systemd_why = systemd.probe()
        if ok:
            try:
                return (
                    systemd.SystemdSandbox(slice_name),
                    f"{mode}: {systemd_why} — cpu and memory limits enforced by transient scopes",
                )
            except systemd.SystemdUnavailable as exc:
                systemd_why = str(exc)
        if mode == "systemd":
            raise SandboxUnavailable(f"tasks.sandbox is systemd, but {systemd_why}")
        systemd_why = systemd_why.removeprefix("systemd is ")
    layout, cgroup_why = cgroup.probe(cgroup_group)
    prefix = f"auto: systemd not usable: {systemd_why}; " if mode == "auto" else "cgroup: "
    if layout is not None:
        return cgroup.CgroupSandbox(layout), f"{prefix}{cgroup_why} — cpu and memory limits enforced by cgroups"
    if mode == "cgroup":
        raise SandboxUnavailable(f"tasks.sandbox is cgroup, but {cgroup_why}")
    return NoneSandbox(), f"{prefix}cgroups not usable ({cgroup_why}) — cpu and memory limits NOT enforced"


def backend_by_name(name: str, cgroup_group: str = "cnet", slice_name: str = "cnet.slice") -> Sandbox:
    """The backend a saved handle names (after a restart it may differ from today's choice)."""
    try:
        if name == "none":
            return NoneSandbox()
        if name == "systemd":
            return systemd.SystemdSandbox(slice_name)
        if name == "cgroup":
            return cgroup.CgroupSandbox(group=cgroup_group)
    except (systemd.SystemdUnavailable, cgroup.CgroupUnavailable) as exc:
        raise SandboxUnavailable(f"backend {name} is not available here: {exc}") from exc
    raise SandboxUnavailable(f"unknown sandbox backend {name!r}")
