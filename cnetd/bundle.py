"""Running from the PyInstaller one-file binary: where the bundled files are, and an
environment for child processes that does not point into the bundle.

The one-file bootloader unpacks the bundle into a temporary directory (sys._MEIPASS),
puts it first on LD_LIBRARY_PATH (keeping the old value in LD_LIBRARY_PATH_ORIG) and sets
_PYI_* variables for processes it considers its own. Task processes, systemctl and
systemd-run must not load the agent's bundled libraries, so restore_environment() undoes
that once at start-up, before anything is spawned.

Files a child process must read (the serving worker script) should not be run from the
unpack directory, which disappears when the agent exits while the child may live on:
stable_copy() copies such a file under the state directory and returns that path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections.abc import MutableMapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def is_frozen() -> bool:
    return bool(getattr(sys, "frozen", False)) and hasattr(sys, "_MEIPASS")


def bundle_dir() -> Path | None:
    """The unpacked bundle of the one-file binary, or None when not frozen."""
    meipass = getattr(sys, "_MEIPASS", None)
    return Path(meipass) if meipass else None


def bundled(relative: str) -> Path:
    """A data file shipped with the agent, given relative to the repository root
    ("templates/base.html", "cnetd/ml/serving/worker.py"): in the bundle when frozen,
    else in the checkout / installed package."""
    base = bundle_dir()
    if base is not None:
        return base / relative
    return REPO_ROOT / relative


def restore_environment(environ: MutableMapping[str, str] | None = None) -> None:
    """Give child processes the environment the binary was started with."""
    if not is_frozen():
        return
    env = os.environ if environ is None else environ
    for key in ("LD_LIBRARY_PATH",):
        orig = env.pop(f"{key}_ORIG", None)
        if orig is not None:
            env[key] = orig
        else:
            env.pop(key, None)
    for key in [k for k in env if k.startswith("_PYI_") or k == "_MEIPASS2"]:
        env.pop(key, None)


def stable_copy(relative: str, state_dir: Path, always: bool = False) -> Path:
    """A copy of a bundled file under <state_dir>/lib/ that outlives this process: named
    by its content hash, so a new version never overwrites a file a running child uses.
    Outside the binary the file is used in place, unless always (tasks that run as another
    user may not be able to read the checkout)."""
    source = bundled(relative)
    if not is_frozen() and not always:
        return source
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:12]
    target_dir = state_dir / "lib"
    target = target_dir / f"{source.stem}-{digest}{source.suffix}"
    target_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(target_dir, 0o755)  # whatever the agent's umask: tasks read it as another user
    if not target.is_file():
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    return target
