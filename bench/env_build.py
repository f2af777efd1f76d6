"""How long a model's Python environment takes to build, with uv and with pip, and what
it costs on disk; and how long a task with an environment that is already built waits.

    .venv/bin/python bench/env_build.py [--runs 3] [--requirement tf-keras~=2.21] [--standalone]

A fresh real agent per run (tasks as their own uids, `none` sandbox), so every build is
cold: no environment, and no download cache (each build's cache lives in its TMPDIR and
goes with it). Rows:
  - pip: a task asking for {"requirements": [R], "inherit": true} (or false with
    --standalone), from its POST to its environment being ready: the baseline of the ratios;
  - uv: the same with ml.environments.installer: uv;
  - cached: a second task with the same spec on the same agent, from its POST to its end
    (no build: it starts at once), next to
  - no environment: the same task without one (what a task costs anyway).
The build's own figure (build.py's "seconds": venv + install) and the environment's size
on disk (sealed, each inode once) are printed too.

Then build.py alone (no agent, as this user), twice per installer with one download cache:
cold (empty cache) and cached (the same packages already in it). The agent does not share a
cache between builds (each build's code runs as its own uid, and a shared cache would let one
build plant what another installs), so its builds are the cold ones; the cached rows say what
a trusted, shared cache would buy. The agents and all directories are removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.agent import AgentProcess  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

TASK = {"name": "probe", "command": "python3", "args": ["-c", "print(1)"], "timeout": "30m"}


def wait_ready(agent: AgentProcess, key: str, limit: float) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        env = agent.api.get(f"/api/environments/{key}").body
        if env["status"] == "failed":
            raise AssertionError(f"the build failed: {env['reason']}")
        return env if env["status"] == "ready" else None

    return wait_until(ready, limit, f"environment {key} to be ready", interval=0.05)


def one_run(root: Path, installer: str, environment: dict[str, Any]) -> dict[str, float]:
    agent = AgentProcess(root / f"agent-{installer}", {"ml": {"environments": {"installer": installer}}})
    try:
        agent.start()
        t0 = time.monotonic()
        task = agent.api.post("/api/tasks", {**TASK, "environment": environment})
        assert task.status == 201, task.text
        env = wait_ready(agent, task.body["environment"], 1800)
        built = time.monotonic() - t0
        agent.wait_done(task.body["id"], 300)
        t1 = time.monotonic()
        again = agent.api.post("/api/tasks", {**TASK, "environment": environment})
        assert again.body["status"] == "pending", again.body
        agent.wait_done(again.body["id"], 300)
        cached = time.monotonic() - t1
        t2 = time.monotonic()
        plain = agent.api.post("/api/tasks", TASK)
        agent.wait_done(plain.body["id"], 300)
        bare = time.monotonic() - t2
        return {"build": built, "build_py": float(env["build_seconds"] or 0), "size": float(env["size_bytes"]),
                "cached": cached, "bare": bare}
    finally:
        agent.stop()
        agent.kill_task_processes()


def direct_build(root: Path, installer: str, environment: dict[str, Any], cache: Path) -> float:
    """build.py as the agent runs it, with the pip settings the agent would pass, and cache
    as its download cache; seconds it took."""
    import os
    import subprocess

    from cnetd.ml.envs.index import build_variables, pip_settings
    from cnetd.ml.envs.spec import agent_python

    target = root / f"env-{installer}-{time.monotonic_ns()}"
    target.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cache), "TMPDIR": str(cache),
           "PIP_CACHE_DIR": str(cache / "pip"), **build_variables(pip_settings(os.environ), os.environ)}
    argv = [sys.executable, str(REPO / "cnetd/ml/envs/build.py"), "--target", str(target), "--python", agent_python()[1],
            "--installer", installer]
    if installer == "uv":
        argv += ["--uv", str(Path(sys.prefix) / "bin" / "uv")]
    if environment["inherit"]:
        argv.append("--inherit")
    t0 = time.monotonic()
    subprocess.run([*argv, "--", *environment["requirements"]], env=env, check=True, capture_output=True)
    took = time.monotonic() - t0
    shutil.rmtree(target)
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requirement", action="append", default=None)
    parser.add_argument("--standalone", action="store_true", help="inherit: false (default: over the agent's)")
    args = parser.parse_args()
    environment = {"requirements": args.requirement or ["tf-keras~=2.21"], "inherit": not args.standalone}
    root = Path(tempfile.mkdtemp(prefix="cnet-bench-env-", dir=REPO))
    results: dict[str, list[dict[str, float]]] = {"pip": [], "uv": []}
    direct: dict[tuple[str, str], list[float]] = {}
    try:
        for run in range(args.runs):
            for installer in ("pip", "uv"):  # alternated, so drift on a shared machine hits both
                results[installer].append(one_run(root, installer, environment))
                shutil.rmtree(root / f"agent-{installer}", ignore_errors=True)
                cache = root / f"cache-{installer}-{run}"
                cache.mkdir()
                direct.setdefault((installer, "empty"), []).append(direct_build(root, installer, environment, cache))
                direct.setdefault((installer, "warm"), []).append(direct_build(root, installer, environment, cache))
                shutil.rmtree(cache)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def med(installer: str, key: str) -> float:
        return statistics.median(r[key] for r in results[installer])

    base = med("pip", "build")
    print(f"environment {environment}, {args.runs} runs each, medians")
    print(f"{'row':<40}{'seconds':>10}{'ratio':>8}{'build.py s':>12}{'disk MB':>10}")
    for installer in ("pip", "uv"):
        build = med(installer, "build")
        print(f"{installer + ' cold build (POST to ready)':<40}{build:>10.2f}{build / base:>8.2f}"
              f"{med(installer, 'build_py'):>12.2f}{med(installer, 'size') / 1e6:>10.1f}")
    for installer in ("pip", "uv"):
        cached = med(installer, "cached")
        print(f"{'cached, built with ' + installer + ' (POST to end)':<40}{cached:>10.2f}{cached / base:>8.2f}")
    bare = statistics.median(r["bare"] for rs in results.values() for r in rs)
    print(f"{'no environment (POST to end)':<40}{bare:>10.2f}{bare / base:>8.2f}")
    for (installer, cache), times in sorted(direct.items()):
        took = statistics.median(times)
        print(f"{'build.py alone, ' + installer + ', ' + cache + ' cache':<40}{took:>10.2f}{took / base:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
