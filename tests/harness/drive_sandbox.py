"""Runs one sandbox scenario against one backend and prints its result as JSON.

    python tests/harness/drive_sandbox.py <none|cgroup|systemd> <scenario> '<json params>'

The contract and limit tests run every backend through this same script: on the host for
`none` and `cgroup`, and under `nsenter` inside the systemd harness for `systemd` (a scope
is made from the caller's pid as systemd's PID namespace sees it). Each run is a fresh
process, so "a restarted agent recovers from the saved handle" is real: one run starts a
task and prints its Handle JSON, a later run is given only that JSON.

Params: "workdir" (task logs, exit files, scratch) and, for cgroup, "group"; the rest
depends on the scenario. Every scenario leaves nothing running unless it says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cnetd.supervisor.base import Handle, LaunchSpec, Limits, Sandbox
from cnetd.supervisor.process import proc_start_time

Params = dict[str, Any]
PY = sys.executable

# A process tree: children, a grandchild, one that ignores SIGTERM and one that leaves
# the session with setsid(). Forked children keep the parent's argv, marker included.
TREE = r"""
import os, signal, sys, time
pids_file = sys.argv[1]
def record(role):
    with open(pids_file, "a") as f:
        f.write(f"{role} {os.getpid()}\n")
def forever(role):
    record(role)
    while True:
        time.sleep(1)
def spawn(role, body):
    if os.fork() == 0:
        try:
            body(role)
        finally:
            os._exit(0)
def child(role):
    spawn(role + ".grandchild", forever)
    forever(role)
def stubborn(role):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    forever(role)
def escapee(role):
    os.setsid()
    forever(role)
spawn("child", child)
spawn("stubborn", stubborn)
spawn("setsid", escapee)
forever("root")
"""
TREE_ROLES = {"root", "child", "child.grandchild", "stubborn", "setsid"}

# A fork loop with an end (so that even a sandbox that held no limit could not take the
# machine down): it forks up to argv[1] children that sleep, counting the forks that failed.
FORK_LOOP = r"""
import errno, os, sys, time
made = failed = 0
for _ in range(int(sys.argv[1])):
    try:
        pid = os.fork()
    except OSError as exc:
        if exc.errno != errno.EAGAIN:
            raise
        failed += 1
        continue
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    made += 1
print(f"made {made} failed {failed}", flush=True)
time.sleep(600)
"""

BURN = "import time\nend = time.monotonic() + float(__import__('sys').argv[1])\nwhile time.monotonic() < end: pass\n"


def make_sandbox(backend: str, params: Params) -> Sandbox:
    if backend == "none":
        from cnetd.supervisor.none import NoneSandbox

        return NoneSandbox()
    if backend == "cgroup":
        from cnetd.supervisor.cgroup import CgroupSandbox

        return CgroupSandbox(group=params["group"])
    if backend == "systemd":
        from cnetd.supervisor.systemd import SystemdSandbox

        return SystemdSandbox()
    raise SystemExit(f"unknown backend {backend}")


def spec(params: Params, argv: list[str], limits: Limits | None = None, task_id: str | None = None) -> LaunchSpec:
    workdir = Path(params["workdir"])
    task_id = task_id or str(uuid.uuid4())
    return LaunchSpec(
        task_id=task_id,
        argv=argv,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        working_dir=workdir,
        log_path=workdir / f"{task_id}.log",
        exit_path=workdir / f"{task_id}.exit",
        limits=limits or Limits(),
    )


async def poll(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def status_dict(status: Any) -> dict[str, Any]:
    return asdict(status)


def alive(pid: int, start: int | None) -> bool:
    return start is not None and proc_start_time(pid) == start


async def finish(sb: Sandbox, handle: Handle, grace: float = 5) -> dict[str, Any]:
    await sb.stop(handle, grace)
    status = await sb.wait(handle)
    await sb.release(handle)
    return status_dict(status)


# --- scenarios ------------------------------------------------------------------------


async def exit_codes(sb: Sandbox, params: Params) -> dict[str, Any]:
    cases = {"zero": "exit 0", "three": "exit 3", "term": "kill -TERM $$", "kill": "kill -KILL $$"}
    out = {}
    for name, script in cases.items():
        handle = await sb.start(spec(params, ["/bin/sh", "-c", script]))
        out[name] = status_dict(await sb.wait(handle))
        await sb.release(handle)
    return out


async def log_output(sb: Sandbox, params: Params) -> dict[str, Any]:
    s = spec(params, ["/bin/sh", "-c", "echo out-line; echo err-line >&2; exit 0"])
    handle = await sb.start(s)
    status = await sb.wait(handle)
    await sb.release(handle)
    return {"status": status_dict(status), "log": s.log_path.read_text()}


async def stop_tree(sb: Sandbox, params: Params) -> dict[str, Any]:
    """Start TREE, stop it with a grace; report which of its processes survived."""
    marker = params.get("marker", f"cnet-tree-{uuid.uuid4()}")
    pids_file = Path(params["workdir"]) / f"{marker}.pids"
    handle = await sb.start(spec(params, [PY, "-c", TREE, str(pids_file), marker]))

    def recorded() -> dict[str, int] | None:
        lines = pids_file.read_text().split("\n") if pids_file.exists() else []
        roles = dict(line.split() for line in lines if line.strip())
        return {r: int(p) for r, p in roles.items()} if set(roles) == TREE_ROLES else None

    try:
        pids = await poll(recorded, 30, "the tree to start")
    except BaseException:
        await finish(sb, handle, 0)
        raise
    starts = {role: proc_start_time(pid) for role, pid in pids.items()}
    grace = float(params.get("grace", 1.0))
    t0 = time.monotonic()
    await sb.stop(handle, grace)
    status = await sb.wait(handle)
    elapsed = time.monotonic() - t0
    await sb.release(handle)

    def survivors_now() -> list[str]:
        return sorted(role for role, pid in pids.items() if alive(pid, starts[role]))

    # A SIGKILLed process takes a moment to vanish; only "setsid" may outlive a backend
    # that cannot reach the whole tree.
    reachable = TREE_ROLES if sb.capabilities.kills_whole_tree else TREE_ROLES - {"setsid"}
    with contextlib.suppress(TimeoutError):
        await poll(lambda: not reachable & set(survivors_now()), 5, "the stopped tree to vanish")
    survivors = survivors_now()
    for role in survivors:  # leave nothing behind, whatever the backend could not reach
        os.kill(pids[role], signal.SIGKILL)
    return {"status": status_dict(status), "survivors": survivors, "elapsed": elapsed, "pids": pids}


async def recover_running(sb: Sandbox, params: Params) -> dict[str, Any]:
    handle = await sb.start(spec(params, ["/bin/sleep", "300"]))
    running = await sb.recover(handle)
    status = await finish(sb, handle, 2)
    return {"while_running": running, "after_exit": await sb.recover(handle), "status": status}


async def start_detached(sb: Sandbox, params: Params) -> dict[str, Any]:
    """Start argv and return its handle without waiting: the task outlives this process."""
    s = spec(params, params["argv"], Limits(**params.get("limits", {})), params.get("task_id"))
    handle = await sb.start(s)
    return {"handle": handle.to_json(), "task_id": s.task_id, "log": str(s.log_path), "exit": str(s.exit_path)}


async def resume(sb: Sandbox, params: Params) -> dict[str, Any]:
    """What a restarted agent does: recover from the saved handle, then wait for the exit."""
    handle = Handle.from_json(params["handle"])
    recovered = await sb.recover(handle)
    if params.get("touch"):
        Path(params["touch"]).touch()
    status = await asyncio.wait_for(sb.wait(handle), float(params.get("timeout", 60)))
    await sb.release(handle)
    return {"recovered": recovered, "status": status_dict(status)}


async def stats(sb: Sandbox, params: Params) -> dict[str, Any]:
    argv = [PY, "-c", "x = b'1' * (64 << 20)\n" + BURN, "60"]
    handle = await sb.start(spec(params, argv))
    samples: list[dict[str, Any]] = []

    async def sample() -> bool:
        usage = asdict(await sb.stats(handle))
        samples.append(usage)
        return (usage["memory_bytes"] or 0) >= 50 << 20 and (usage["cpu_percent"] or 0) > 10

    try:
        deadline = time.monotonic() + 30
        while not await sample():
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        await finish(sb, handle, 1)
    return {"usage": samples[-1], "samples": len(samples)}


async def orphans(sb: Sandbox, params: Params) -> dict[str, Any]:
    known = await sb.start(spec(params, ["/bin/sleep", "300"]))
    unknown_spec = spec(params, ["/bin/sleep", "300"])
    unknown = await sb.start(unknown_spec)
    known_id = Path(known.exit_path).stem
    removed = await sb.cleanup_orphans({known_id}, Path(params["workdir"]))
    try:
        gone = await poll(lambda: not alive(unknown.pid, unknown.pid_start), 15, "the orphan to end")
    except TimeoutError:
        gone = False
    known_running = await sb.recover(known)
    await finish(sb, known, 1)
    if not gone:  # a backend that cannot find orphans: clean up as the test's own business
        await finish(sb, unknown, 1)
    else:
        await sb.wait(unknown)
        await sb.release(unknown)
    return {"removed": removed, "unknown_id": unknown_spec.task_id, "unknown_gone": gone,
            "known_running": known_running}


async def oom(sb: Sandbox, params: Params) -> dict[str, Any]:
    argv = [PY, "-c", f"x = b'1' * ({int(params.get('alloc_mb', 300))} << 20)\nprint('allocated')"]
    limits = Limits(memory_limit=int(params.get("limit_mb", 100)) << 20)
    s = spec(params, argv, limits)
    handle = await sb.start(s)
    status = await asyncio.wait_for(sb.wait(handle), 60)
    await sb.release(handle)
    return {"status": status_dict(status), "log": s.log_path.read_text()}


async def cpu(sb: Sandbox, params: Params) -> dict[str, Any]:
    """Two busy processes under cpu_limit; CPU share measured from the cgroup over a window."""
    window = float(params.get("window", 3.0))
    burn = f"{PY} -c \"$1\" 120 & {PY} -c \"$1\" 120 & wait"
    argv = ["/bin/sh", "-c", burn, "cnet-burn", BURN]
    handle = await sb.start(spec(params, argv, Limits(cpu_limit=float(params["cpu_limit"]))))
    try:
        deadline = time.monotonic() + 15
        while ((await sb.stats(handle)).pids or 0) < 3:  # sh and both burners are up
            if time.monotonic() > deadline:
                raise TimeoutError("burners did not start")
            await asyncio.sleep(0.05)
        await sb.stats(handle)  # the baseline sample
        idle0, t0 = idle_seconds(), time.monotonic()
        await asyncio.sleep(window)  # the measuring window, not synchronisation
        usage = asdict(await sb.stats(handle))
        idle_cores = (idle_seconds() - idle0) / (time.monotonic() - t0)
    finally:
        status = await finish(sb, handle, 1)
    return {"cpu_percent": usage["cpu_percent"], "usage": usage, "status": status, "idle_cores": idle_cores}


def idle_seconds() -> float:
    """CPU seconds the whole machine spent idle since boot (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


async def fork_loop(sb: Sandbox, params: Params) -> dict[str, Any]:
    """FORK_LOOP under tasks_max; while it sits at its limit a neighbour starts and ends;
    then the capped task is stopped. Reports the forks, the neighbour, the stop."""
    s = spec(params, [PY, "-c", FORK_LOOP, str(params.get("attempts", 200))], Limits(tasks_max=int(params["tasks_max"])))
    handle = await sb.start(s)
    try:
        line = await poll(lambda: next((ln for ln in s.log_path.read_text().splitlines() if ln.startswith("made ")), None),
                          60, "the fork loop to report")
        pids = (await sb.stats(handle)).pids
        neighbour = spec(params, ["/bin/sh", "-c", "/bin/echo neighbour ran"])
        t0 = time.monotonic()
        other = await sb.start(neighbour)
        other_status = await asyncio.wait_for(sb.wait(other), 30)
        await sb.release(other)
        neighbour_seconds = time.monotonic() - t0
    finally:
        t1 = time.monotonic()
        status = await finish(sb, handle, 1)
        stop_seconds = time.monotonic() - t1
    _, made, _, failed = line.split()
    return {
        "made": int(made), "failed": int(failed), "pids": pids, "status": status, "stop_seconds": stop_seconds,
        "neighbour": status_dict(other_status), "neighbour_log": neighbour.log_path.read_text(),
        "neighbour_seconds": neighbour_seconds,
    }


OPEN_EACH = """
import errno, json, os, sys
out = {}
for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_RDWR)); out[os.path.basename(path)] = 'OK'
    except OSError as exc:
        out[os.path.basename(path)] = errno.errorcode[exc.errno]
print(json.dumps(out))
"""


async def devices(sb: Sandbox, params: Params) -> dict[str, Any]:
    """Open each of params["paths"] (and /dev/null) under Limits.devices = params["allow"]
    (a list of [major, minor]); report the errno name of each open."""
    allow = tuple((int(major), int(minor)) for major, minor in params["allow"])
    s = spec(params, [PY, "-c", OPEN_EACH, "/dev/null", *params["paths"]], Limits(devices=allow))
    handle = await sb.start(s)
    status = await asyncio.wait_for(sb.wait(handle), 60)
    await sb.release(handle)
    log = s.log_path.read_text()
    return {"status": status_dict(status), "opened": json.loads(log.splitlines()[-1]) if log else None, "log": log}


async def start_latency(sb: Sandbox, params: Params) -> dict[str, Any]:
    """Seconds each of n sequential start() calls took, `gap` seconds apart (for bench/)."""
    times = []
    gap = float(params.get("gap", 0))
    for _ in range(int(params.get("n", 100))):
        await asyncio.sleep(gap)  # spacing like real submissions: back-to-back starts run warm
        t0 = time.perf_counter()
        handle = await sb.start(spec(params, ["/bin/true"]))
        times.append(time.perf_counter() - t0)
        await sb.wait(handle)
        await sb.release(handle)
    return {"seconds": times}


async def bare_latency(sb: Sandbox, params: Params) -> dict[str, Any]:
    """Baselines measured where the sandbox runs: fork/exec, and `systemd-run --scope`."""
    import shutil
    import subprocess

    n = int(params.get("n", 100))
    gap = float(params.get("gap", 0))
    out: dict[str, Any] = {"fork_exec": [], "systemd_run_scope": []}
    for _ in range(n):
        time.sleep(gap)
        t0 = time.perf_counter()
        proc = subprocess.Popen(["/bin/true"])
        out["fork_exec"].append(time.perf_counter() - t0)
        proc.wait(timeout=10)
    if shutil.which("systemd-run") and Path("/run/systemd/private").exists():
        for i in range(n):
            time.sleep(gap)
            t0 = time.perf_counter()
            subprocess.run(["systemd-run", "--scope", "--quiet", "--collect", f"--unit=cnet-bench-{i}-{uuid.uuid4().hex[:8]}",
                            "--slice=cnet.slice", "/bin/true"], check=True, timeout=30)
            out["systemd_run_scope"].append(time.perf_counter() - t0)
    return out


SCENARIOS: dict[str, Callable[[Sandbox, Params], Coroutine[Any, Any, dict[str, Any]]]] = {
    "exit_codes": exit_codes,
    "log_output": log_output,
    "stop_tree": stop_tree,
    "recover_running": recover_running,
    "start_detached": start_detached,
    "resume": resume,
    "stats": stats,
    "orphans": orphans,
    "oom": oom,
    "cpu": cpu,
    "fork_loop": fork_loop,
    "devices": devices,
    "start_latency": start_latency,
    "bare_latency": bare_latency,
}


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    backend, scenario = argv[1], argv[2]
    params: Params = json.loads(argv[3]) if len(argv) > 3 else {}
    sandbox = make_sandbox(backend, params)
    result = asyncio.run(SCENARIOS[scenario](sandbox, params))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
