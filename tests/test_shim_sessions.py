"""Finding a task's session by its exit shim, without a saved handle (cleanup of orphans)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cnetd.supervisor.process import shim_argv, shim_sessions


def start_shim(exit_dir: Path, task_id: str, *, new_session: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(shim_argv(exit_dir / f"{task_id}.exit", ["/bin/sleep", "60"]),
                            start_new_session=new_session, stdin=subprocess.DEVNULL)


def test_a_shim_is_found_by_its_exit_directory(tmp_path: Path) -> None:
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    ours = start_shim(tmp_path, "t-ours", new_session=True)
    theirs = start_shim(other_dir, "t-theirs", new_session=True)
    try:
        assert shim_sessions(tmp_path) == {"t-ours": ours.pid}
    finally:
        for proc in (ours, theirs):
            subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], check=False)
            proc.wait()


def test_a_process_showing_the_shim_argv_that_leads_no_session_is_not_taken_for_the_shim(tmp_path: Path) -> None:
    """The shim's child shows the shim's argv between its fork and its exec: taking it for the
    shim (a session leader) once made cleanup signal an empty session and leave the orphan
    running. Here a shim started outside its own session stands in for that child."""
    stray = start_shim(tmp_path, "t-stray", new_session=False)
    try:
        assert shim_sessions(tmp_path) == {}
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(stray.pid)], check=False)
        stray.kill()
        stray.wait()
