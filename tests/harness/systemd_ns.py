"""A real systemd for tests: PID 1 of private PID + mount + cgroup namespaces.

The recipe (../shared/notes/systemd-in-namespace.md): in a new PID + mount namespace, mount
a fresh /proc and a tmpfs /run, move into a sub-cgroup of every hierarchy and bind-mount it
over the hierarchy's mount point (so systemd takes it for the root), hide the machine's
units behind a directory holding one minimal target, and
`exec unshare --cgroup /lib/systemd/systemd --system --unit=minimal.target`.
Commands run inside with `nsenter -t <pid> -m -p`; `systemd-run --scope` must be called
from inside the PID namespace, because the scope is made from the caller's PID as
systemd sees it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SYSTEMD = Path("/lib/systemd/systemd")
TOOLS = ("unshare", "nsenter", "mount", "systemctl", "systemd-run")
PREFIX = "cnet-sdns-"  # sub-cgroup names: cnet-sdns-<owner pid>-<owner start>-<n>
MINIMAL_TARGET = "[Unit]\nDescription=cnet test minimal target\n"
# The namespace shares the host's filesystem: a unit that pulls in the boot targets would
# run the host's boot services for real (systemd-tmpfiles-setup once emptied /tmp). Masked,
# a unit that needs them fails to start instead; a test's unit sets DefaultDependencies=no.
MASKED_UNITS = (
    "sysinit.target", "basic.target", "local-fs.target", "sockets.target", "timers.target",
    "paths.target", "network.target", "network-online.target", "multi-user.target",
    "systemd-tmpfiles-setup.service", "systemd-tmpfiles-setup-dev.service", "systemd-tmpfiles-clean.timer",
    "systemd-sysctl.service", "systemd-sysusers.service", "systemd-udevd.service", "systemd-udev-trigger.service",
    "systemd-journald.service", "systemd-journald.socket", "systemd-journald-dev-log.socket",
    "systemd-journald-audit.socket", "systemd-random-seed.service", "systemd-remount-fs.service",
    "systemd-modules-load.service", "systemd-update-utmp.service", "systemd-journal-flush.service",
)
USABLE_STATES = ("running", "degraded")
V1_CONTROLLERS = {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "blkio",
                  "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc"}
_seq = itertools.count(1)

# $1 = name of the target, then pairs "<sub-cgroup dir> <mount point>".
BOOT_SCRIPT = r"""
set -e
etc=$1; shift
mount -t proc proc /proc
mount -t tmpfs -o mode=755 tmpfs /run
while [ $# -gt 0 ]; do
  echo $$ > "$1/cgroup.procs"
  mount --bind "$1" "$2"
  shift 2
done
mount --bind "$etc" /etc/systemd/system
export container=cnet-test
exec unshare --cgroup "$SYSTEMD" --system --unit=minimal.target
"""


def _cgroup_hierarchies() -> dict[Path, Path]:
    """Mount point -> this process's cgroup directory in that hierarchy (v1 and v2)."""
    mounts: dict[str, tuple[str, str]] = {}  # key -> (mount point, mount root)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
                continue
            if tail[0] == "cgroup2":
                keys = [""]
            else:
                keys = [",".join(sorted(o for o in tail[2].split(",") if o in V1_CONTROLLERS or o.startswith("name=")))]
            for key in keys:
                mounts[key] = (fields[4], fields[3])
    out: dict[Path, Path] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, names, path = line.rstrip("\n").split(":", 2)
            key = "" if names == "" else ",".join(sorted(names.split(",")))
            if key not in mounts:
                continue
            point, root = mounts[key]
            root = root.rstrip("/")
            if path != root and not path.startswith(root + "/"):
                continue
            out[Path(point)] = Path(point) / path[len(root):].lstrip("/")
    return out


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def available() -> tuple[bool, str]:
    """Whether a real systemd can be booted here, and if not, why."""
    if os.geteuid() != 0:
        return False, "needs root"
    if not SYSTEMD.exists():
        return False, f"{SYSTEMD} not installed"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return False, f"missing tools: {', '.join(missing)}"
    hierarchies = _cgroup_hierarchies()
    if not any(point.name == "systemd" for point in hierarchies):
        return False, "no cgroup v1 name=systemd hierarchy (the recipe is for v1/hybrid machines)"
    for own in hierarchies.values():
        probe = own / f"{PREFIX}probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError as exc:
            return False, f"cgroupfs not writable at {own}: {exc.strerror}"
    return True, "root, writable cgroupfs, systemd installed"


def _cgroup_pids(top: Path) -> list[int]:
    pids = []
    for current, _dirs, _files in os.walk(top):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (Path(current) / "cgroup.procs").read_text().split()]
    return pids


def _remove_tree(top: Path, timeout: float) -> list[Path]:
    """rmdir a cgroup tree deepest first, retrying while dying processes let go."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        if top.exists():
            for current, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(current)
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(Path(current))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def owned_name(prefix: str) -> str:
    """<prefix><pid>-<start ticks>-<n>: a cgroup name clean_stale can tell is abandoned."""
    return f"{prefix}{os.getpid()}-{_start_ticks(os.getpid())}-{next(_seq)}"


def clean_stale(prefix: str = PREFIX) -> list[Path]:
    """Remove sub-cgroups named by owned_name(prefix) whose owning process is gone (a
    crashed run), killing what is left in them; return those that could not be removed."""
    removed = []
    for own in _cgroup_hierarchies().values():
        if not own.is_dir():
            continue
        for entry in os.scandir(own):
            if not entry.name.startswith(prefix) or not entry.is_dir():
                continue
            parts = entry.name[len(prefix):].split("-")
            try:
                owner, start = int(parts[0]), int(parts[1])
            except (IndexError, ValueError):
                continue
            if _start_ticks(owner) == start:
                continue  # its harness still runs
            top = Path(entry.path)
            for pid in _cgroup_pids(top):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if not _remove_tree(top, 10):
                removed.append(top)
    return removed


class SystemdNamespace:
    """One booted systemd; use as a context manager or call start()/stop()."""

    def __init__(self, boot_timeout: float = 30.0) -> None:
        self.name = owned_name(PREFIX)
        self.boot_timeout = boot_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix="cnet-sdns-"))
        self.console_log = self.workdir / "console.log"
        self.cgroups: dict[Path, Path] = {}  # mount point -> our sub-cgroup (host path)
        self.pid: int | None = None  # systemd, as the host sees it
        self._unshare: subprocess.Popen[bytes] | None = None

    # --- lifetime -----------------------------------------------------------------

    def start(self) -> SystemdNamespace:
        stale = clean_stale()
        if stale:
            log.warning("could not remove stale harness cgroups: %s", stale)
        etc = self.workdir / "etc"
        etc.mkdir()
        (etc / "minimal.target").write_text(MINIMAL_TARGET)
        for unit in MASKED_UNITS:
            (etc / unit).symlink_to("/dev/null")
        pairs: list[str] = []
        for point, own in _cgroup_hierarchies().items():
            sub = own / self.name
            sub.mkdir()
            self.cgroups[point] = sub
            for name in ("cpuset.cpus", "cpuset.mems"):  # an empty cpuset takes no tasks
                if (own / name).exists():
                    (sub / name).write_text((own / name).read_text())
            pairs += [str(sub), str(point)]
        try:
            with open(self.console_log, "ab") as console:
                self._unshare = subprocess.Popen(
                    ["unshare", "--pid", "--fork", "--mount", "--propagation", "private", "--",
                     "/bin/sh", "-c", BOOT_SCRIPT, "cnet-sdns-boot", str(etc), *pairs],
                    stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                    env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "SYSTEMD": str(SYSTEMD)},
                    start_new_session=True,
                )
            self.pid = self._find_systemd()
            self._wait_running()
        except BaseException:
            self.stop()
            raise
        return self

    def _deadline_error(self, what: str) -> RuntimeError:
        console = self.console_log.read_text(errors="replace")[-3000:] if self.console_log.exists() else ""
        return RuntimeError(f"systemd harness: {what} within {self.boot_timeout:.0f}s\n{console}")

    def _find_systemd(self) -> int:
        """The pid of the child unshare forked, once it has exec'd systemd."""
        assert self._unshare is not None
        deadline = time.monotonic() + self.boot_timeout
        children = Path(f"/proc/{self._unshare.pid}/task/{self._unshare.pid}/children")
        while time.monotonic() < deadline:
            if self._unshare.poll() is not None:
                raise self._deadline_error(f"boot script exited with {self._unshare.returncode}")
            try:
                kids = children.read_text().split()
            except OSError:
                kids = []
            for kid in kids:
                try:
                    if os.readlink(f"/proc/{kid}/exe") == os.path.realpath(SYSTEMD):
                        return int(kid)
                except OSError:
                    pass
            time.sleep(0.01)
        raise self._deadline_error("systemd did not start")

    def _wait_running(self) -> None:
        deadline = time.monotonic() + self.boot_timeout
        state = ""
        while time.monotonic() < deadline:
            try:
                state = self.run(["systemctl", "is-system-running"], timeout=10).stdout.strip()
            except subprocess.TimeoutExpired:
                state = "timeout"
            if state in USABLE_STATES:
                return
            time.sleep(0.02)
        raise self._deadline_error(f"systemd did not reach running (last state {state!r})")

    def stop(self) -> None:
        """Kill systemd (and so the whole namespace) and remove the sub-cgroups."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self._unshare is not None:
            if self._unshare.poll() is None and self.pid is None:
                os.killpg(self._unshare.pid, signal.SIGKILL)
            try:
                self._unshare.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._unshare.pid, signal.SIGKILL)
                self._unshare.wait(timeout=30)
        left = [p for sub in self.cgroups.values() for p in _remove_tree(sub, 10)]
        if left:
            log.warning("systemd harness: cgroups left behind: %s", left)
        self.cgroups.clear()
        self.pid = None
        self._unshare = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SystemdNamespace:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- running things inside ----------------------------------------------------

    def prefix(self, cwd: str | os.PathLike[str] | None = None) -> list[str]:
        """argv prefix that runs a command inside (nsenter resets the cwd, so pass it)."""
        if self.pid is None:
            raise RuntimeError("systemd harness is not running")
        return ["nsenter", "-t", str(self.pid), "-m", "-p", f"--wd={cwd or os.getcwd()}"]

    def run(self, cmd: Sequence[str], timeout: float = 60, cwd: str | os.PathLike[str] | None = None,
            check: bool = False, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("capture_output", True)
        return subprocess.run(
            [*self.prefix(cwd), *cmd], timeout=timeout, check=check, text=True,
            stdin=kwargs.pop("stdin", subprocess.DEVNULL), **kwargs,
        )

    def popen(self, cmd: Sequence[str], cwd: str | os.PathLike[str] | None = None,
              **kwargs: Any) -> subprocess.Popen[Any]:
        """Start cmd inside. The Popen is nsenter, which does not forward signals: signal
        the real process through inner_pid()."""
        return subprocess.Popen([*self.prefix(cwd), *cmd], **kwargs)

    @staticmethod
    def inner_pid(proc: subprocess.Popen[Any], timeout: float = 10) -> int:
        """Host pid of the process nsenter forked into the namespace."""
        deadline = time.monotonic() + timeout
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        while time.monotonic() < deadline:
            try:
                kids = children.read_text().split()
            except OSError:
                kids = []
            if kids:
                return int(kids[0])
            if proc.poll() is not None:
                break
            time.sleep(0.01)
        raise RuntimeError(f"nsenter {proc.pid} has no child")

    def host_cgroup(self, path_inside: str | os.PathLike[str]) -> Path:
        """The host path of a cgroup directory as seen inside (/sys/fs/cgroup/<h>/...)."""
        inside = Path(path_inside)
        for point, sub in self.cgroups.items():
            if inside == point or point in inside.parents:
                return sub / inside.relative_to(point)
        raise ValueError(f"{inside} is not under a cgroup mount")
