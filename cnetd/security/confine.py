"""Confinement: paths a request names must resolve inside the allowed roots, and
commands must be on the allow-list when there is one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from cnetd.errors import Invalid


class Confinement:
    def __init__(self, roots: Iterable[Path], allowed_commands: Iterable[str]) -> None:
        self.roots = [Path(os.path.realpath(r)) for r in roots]
        self.allowed_commands = tuple(allowed_commands)
        self._allowed_paths = {os.path.realpath(c) for c in self.allowed_commands if "/" in c}

    def check_path(self, field: str, path: str, relative_to: Path) -> Path:
        """The real path (symlinks resolved) of path, if it lies inside a root."""
        real = Path(os.path.realpath(relative_to / path))
        if not any(real == root or real.is_relative_to(root) for root in self.roots):
            roots = ", ".join(str(r) for r in self.roots)
            raise Invalid(field, f"{path} resolves to {real}, outside the allowed roots ({roots}); see ml.allowed_roots")
        return real

    def check_command(self, command: str, search_path: str | None) -> None:
        if not self.allowed_commands:
            return
        if command in self.allowed_commands and "/" not in command:
            return
        found = command if "/" in command else shutil.which(command, path=search_path)
        if found is not None and os.path.realpath(found) in self._allowed_paths:
            return
        raise Invalid("command", f"{command!r} is not in tasks.allowed_commands ({', '.join(self.allowed_commands)})")
