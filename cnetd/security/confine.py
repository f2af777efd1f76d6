"""Confinement: paths a request names must resolve inside the allowed roots, model files
inside the model roots, and commands must be on the allow-list when there is one.

The allow-list is checked against the program that will really run: the command resolved
once, at submit, with the agent's own PATH (never the request's), and stored with the task.
Allowing an interpreter (python3, sh) allows any code it is given: the list bounds which
programs start, not what they do.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from cnetd.errors import Invalid

# With an allow-list, a request may not change how the allowed program loads its code.
LOADER_VARIABLES = re.compile(r"^(PATH|LD_.*|PYTHON.*)$")


class Confinement:
    def __init__(self, roots: Iterable[Path], allowed_commands: Iterable[str], model_roots: Iterable[Path] = (),
                 search_path: str | None = None, state_dir: Path | None = None) -> None:
        self.roots = [Path(os.path.realpath(r)) for r in roots]
        self.state_dir = Path(os.path.realpath(state_dir)) if state_dir is not None else None
        self.model_roots = [Path(os.path.realpath(r)) for r in model_roots]
        self.allowed_commands = tuple(allowed_commands)
        self._allowed_programs: set[str] = set()
        for command in self.allowed_commands:
            found = command if "/" in command else shutil.which(command, path=search_path)
            if found is not None:
                self._allowed_programs.add(os.path.realpath(found))

    def check_path(self, field: str, path: str, relative_to: Path) -> Path:
        """The real path (symlinks resolved) of path, if it lies inside a root."""
        real = Path(os.path.realpath(relative_to / path))
        if self.state_dir is not None and real.is_relative_to(self.state_dir):
            raise Invalid(field, f"{path} resolves to {real}, inside the agent's state dir, which is private to the agent")
        if not any(real == root or real.is_relative_to(root) for root in self.roots):
            roots = ", ".join(str(r) for r in self.roots)
            raise Invalid(field, f"{path} resolves to {real}, outside the allowed roots ({roots}); see ml.allowed_roots")
        return real

    def check_model_dir(self, model_path: str, directory: Path) -> Path:
        """directory (absolute, normalised: the directory of model_path) must lie in a model
        root and must not pass through a symlink."""
        root = next((r for r in self.model_roots if directory == r or r in directory.parents), None)
        if root is None:
            roots = ", ".join(str(r) for r in self.model_roots)
            raise Invalid("model_path", f"{model_path} is outside the model roots ({roots}); see ml.model_roots")
        existing = directory
        while not existing.exists() and existing != root:
            existing = existing.parent
        if Path(os.path.realpath(existing)) != existing:
            raise Invalid("model_path", f"{model_path} goes through a symlink ({existing} is {os.path.realpath(existing)})")
        return root

    def check_command(self, command: str, program: str) -> None:
        """program is command resolved with the agent's PATH (what will be executed)."""
        if not self.allowed_commands:
            return
        if os.path.realpath(program) in self._allowed_programs:
            return
        raise Invalid("command", f"{command!r} ({program}) is not in tasks.allowed_commands ({', '.join(self.allowed_commands)})")

    def check_env(self, env: Mapping[str, str]) -> None:
        """With an allow-list, refuse variables that would make an allowed program load
        other code (PATH, LD_*, PYTHON*)."""
        if not self.allowed_commands:
            return
        for name in env:
            if LOADER_VARIABLES.match(name):
                raise Invalid(f"env.{name}", "may not be set while tasks.allowed_commands is in force "
                                             "(it changes which code an allowed program loads)")
