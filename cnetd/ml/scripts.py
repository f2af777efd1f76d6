"""Where a deploy's script is: its script_path under the working dir, as the guide writes
it, else (for a relative path that is not there) under ml.script_path, the operator's
search root for model scripts.

Either way the script must resolve inside the allowed roots (symlinks followed): the search
root widens where a name is looked up, never what a task may run. A script found under the
search root is named by its real, absolute path from then on (in the deploy's args, the
model's script_path and its prediction tasks), so what runs is what was checked and shown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cnetd.errors import Invalid
from cnetd.security.confine import Confinement


@dataclass(frozen=True)
class Script:
    path: str  # as the task will name it: as given, or the real path found under the search root
    found_in_search_root: bool


def locate_script(script_path: str, working_dir: str, cwd: Path, search_root: Path | None,
                  confinement: Confinement) -> Script:
    """script_path checked against the allowed roots, looked up under cwd, then under
    search_root when it is relative and not under cwd. Invalid names script_path."""
    if not cwd.is_dir():  # the launch says so: "working_dir ...: no such directory"
        confinement.check_path("script_path", script_path, cwd)
        return Script(script_path, False)
    relative = not Path(script_path).is_absolute()
    if relative and search_root is not None and not os.path.lexists(cwd / script_path):
        candidate = Path(os.path.normpath(search_root / script_path))
        if candidate.is_relative_to(search_root) and candidate.is_file():  # no "../" out of it
            real = confinement.check_path("script_path", str(candidate), cwd)
            return Script(str(real), True)
    confinement.check_path("script_path", script_path, cwd)
    if not (cwd / script_path).is_file():
        where = f"relative to working_dir {working_dir}" + (f", nor in ml.script_path {search_root}"
                                                            if relative and search_root is not None else "")
        raise Invalid("script_path", f"{script_path}: no such file ({where})")
    return Script(script_path, False)
