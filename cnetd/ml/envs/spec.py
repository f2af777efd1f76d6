"""What a request may ask of a model's Python environment, checked as hostile input.

The body (`"environment"` in a deploy or task body) names requirements inline or in a file
under the allowed roots, whether the environment layers over the agent's own (`inherit`),
and optionally a Python version installed on the node. Every requirement must be a plain
PEP 508 requirement: a project name, extras, version specifiers and an environment marker.
Anything an installer would read as an option (`--index-url ...`, `-e path`, `-r file`), a
URL or a path (`pkg @ file:///etc/shadow`, `./pkg`, `git+https://...`) is refused with a 400
naming it: the indexes an environment is built from are the operator's (pip's own
configuration on the node), never a request's.

EnvSpec is the normalised result; its key (a hash of the spec and the interpreter) names
the environment's directory and row, so the same spec is built once and shared.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from cnetd.bodies.describe import NO_NUL
from cnetd.errors import Invalid

MAX_REQUIREMENTS = 200
MAX_REQUIREMENT_CHARS = 200
MAX_REQUIREMENTS_FILE = 64 * 1024
FIELD = "environment"

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_EXTRAS = rf"\[\s*{_NAME}(?:\s*,\s*{_NAME})*\s*\]"
_VERSION = r"[A-Za-z0-9.*+!_-]+"
_SPEC = rf"(?:===|==|~=|!=|<=|>=|<|>)\s*{_VERSION}"
_SPECS = rf"{_SPEC}(?:\s*,\s*{_SPEC})*"
# A marker: names, quoted plain strings, comparison operators, and/or, parentheses. No
# comma, slash, at sign or backslash, so nothing in it can be a URL or a path.
_MARKER = r"[A-Za-z0-9_.'\"<>=!~ ()-]+"
REQUIREMENT = re.compile(
    rf"(?P<name>{_NAME})\s*(?P<extras>{_EXTRAS})?\s*(?P<specs>{_SPECS}|\(\s*{_SPECS}\s*\))?"
    rf"\s*(?:;\s*(?P<marker>{_MARKER}))?"
)
REQUIREMENT_RULE = ('a plain requirement: a project name with optional [extras], version specifiers and '
                    '"; marker" (e.g. "six==1.16.0", "tf-keras~=2.21"); no options, URLs or paths')
MARKER_VARIABLES = frozenset({
    "python_version", "python_full_version", "os_name", "sys_platform", "platform_release", "platform_system",
    "platform_version", "platform_machine", "platform_python_implementation", "implementation_name",
    "implementation_version", "extra",
})
MARKER_TOKEN = re.compile(r"\s*(?:(?P<string>'[^'\"]*'|\"[^'\"]*\")|(?P<op>===|==|!=|<=|>=|~=|<|>|\(|\))|(?P<word>[A-Za-z_]+))")
PYTHON_VERSION = re.compile(r"^3\.\d{1,2}(?!\n)$")

Requirement = Annotated[str, Meta(min_length=1, max_length=MAX_REQUIREMENT_CHARS, pattern=NO_NUL,
                                  description=REQUIREMENT_RULE)]


class EnvironmentBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The Python environment a task runs in, built once per spec and shared."""

    requirements: Annotated[list[Requirement], Meta(
        max_length=MAX_REQUIREMENTS, description="requirements to install, e.g. [\"tf-keras~=2.21\"]",
    )] | None = None
    requirements_file: Annotated[str, Meta(
        min_length=1, max_length=4096, pattern=NO_NUL,
        description="a requirements file (one requirement a line, # comments), relative to working_dir, "
                    "inside the allowed roots; options (-r, -e, --index-url) are refused",
    )] | None = None
    inherit: Annotated[bool, Meta(
        description="layer over the agent's own ML environment, installing only what it lacks (default true)",
    )] = True
    python: Annotated[str, Meta(
        pattern=PYTHON_VERSION.pattern, description='a Python version installed on the node, e.g. "3.11"; '
                                                    "default: the agent's",
        extra={"invalid": 'must be a Python version like "3.11"'},
    )] | None = None


@dataclass(frozen=True)
class EnvSpec:
    requirements: tuple[str, ...]  # normalised, sorted, no duplicates
    inherit: bool
    python: str  # major.minor
    interpreter: str  # the real path of the interpreter the environment is made from
    base: str = ""  # with inherit: the fingerprint of the agent's environment

    @property
    def key(self) -> str:
        data = {"requirements": list(self.requirements), "inherit": self.inherit, "python": self.python,
                "interpreter": self.interpreter, "base": self.base}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:24]

    def to_json(self) -> dict[str, object]:
        return {"requirements": list(self.requirements), "inherit": self.inherit, "python": self.python}


def normalise_requirement(field: str, text: str) -> str:
    """The requirement in one canonical spelling; Invalid naming field when it is not a
    plain requirement."""
    stripped = text.strip()
    match = REQUIREMENT.fullmatch(stripped)
    if match is None or "\n" in text or "\r" in text:
        raise Invalid(field, f"{text!r} is not {REQUIREMENT_RULE}")
    name = re.sub(r"[-_.]+", "-", match["name"]).lower()
    extras = ""
    if match["extras"]:
        names = sorted({re.sub(r"[-_.]+", "-", e.strip()).lower() for e in match["extras"].strip("[] ").split(",")})
        extras = f"[{','.join(names)}]"
    specs = ""
    if match["specs"]:
        parts = [re.sub(r"\s+", "", p) for p in match["specs"].strip("() ").split(",")]
        specs = ",".join(sorted(parts))
    marker = ""
    if match["marker"]:
        _check_marker(field, text, match["marker"])
        marker = f"; {' '.join(match['marker'].split())}"
    return f"{name}{extras}{specs}{marker}"


def _check_marker(field: str, text: str, marker: str) -> None:
    """An environment marker made only of marker variables, quoted strings, comparisons,
    and/or/in/not and parentheses."""
    position = 0
    while position < len(marker.rstrip()):
        token = MARKER_TOKEN.match(marker, position)
        if token is None or (token["word"] and token["word"] not in MARKER_VARIABLES | {"and", "or", "in", "not"}):
            raise Invalid(field, f"{text!r} has an environment marker that is not one: {marker!r}")
        position = token.end()


def requirements_from_text(field: str, text: str) -> list[str]:
    """A requirements file's requirements: one a line, # comments and blank lines skipped;
    any option line (-r, -c, -e, --index-url ...) is refused, naming its line."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        content = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not content:
            continue
        found.append(normalise_requirement(f"{field} line {number}", content))
    return found


def read_requirements_file(field: str, path: Path) -> str:
    """The text of a requirements file already confined to the allowed roots: a regular
    file (never a FIFO or device that would block or never end), at most 64 KiB."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise Invalid(field, f"{path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise Invalid(field, f"{path} is not a regular file")
        if st.st_size > MAX_REQUIREMENTS_FILE:
            raise Invalid(field, f"{path} is larger than {MAX_REQUIREMENTS_FILE // 1024} KiB")
        data = f.read(MAX_REQUIREMENTS_FILE + 1)
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise Invalid(field, f"{path} is not UTF-8 text") from None


def agent_python() -> tuple[str, str]:
    """(major.minor, real path) of the interpreter the agent's environment is made from."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return f"{sys.version_info.major}.{sys.version_info.minor}", os.path.realpath(base)


def find_python(version: str, search_path: str) -> str | None:
    """The real interpreter behind python<version> on the node (the agent's PATH, then the
    usual places), asked for its own sys.executable, so that a shim (pyenv) names what it
    runs; None when there is none of that version."""
    path = os.pathsep.join([search_path, "/usr/local/bin", "/usr/bin"])
    found = shutil.which(f"python{version}", path=path)
    if found is None:
        return None
    probe = "import sys; print(sys.executable); print('%d.%d' % sys.version_info[:2])"
    try:
        done = subprocess.run([found, "-I", "-c", probe], capture_output=True, text=True, timeout=20,
                              stdin=subprocess.DEVNULL, env={"PATH": path})
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) != 2 or lines[1] != version:
        return None
    return os.path.realpath(lines[0])


def base_fingerprint() -> str:
    """What an inherited environment layers over: the agent's environment and every
    distribution in it, so an upgraded agent gets new environments, never stale ones."""
    from importlib import metadata

    names = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"])
    data = json.dumps({"prefix": sys.prefix, "dists": names})
    return hashlib.sha256(data.encode()).hexdigest()[:16]
