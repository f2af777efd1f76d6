"""Model directories: where a model's files may be written, made by root without ever
following a path a request controls.

A model's directory (the directory of its model_path) must lie inside one of the model
roots (ml.model_roots). The agent owns the roots: root:root, mode 1733 (anyone may create an
entry and reach it by name, nobody but root may list or remove others' entries), so models
that share a root, as the guide's two example models share models/, cannot list, replace or
delete each other's files; a task writes with umask 027, so they cannot read them either.

Below a root the agent walks with directory file descriptors and O_NOFOLLOW, creating what
is missing: the directories on the way belong to root (0755), the model's directory itself
to the model's uid (0750). A symlink anywhere on the way, or a directory that belongs to
another uid, stops the walk: root never creates or chowns along a path that a task could
have redirected.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

ROOT_MODE = 0o1733
DIR_MODE = 0o755
MODEL_DIR_MODE = 0o750


class ModelDirError(Exception):
    """The model directory cannot be used; the message names the path and why."""


def prepare_roots(roots: Iterable[Path]) -> list[Path]:
    """Create the model roots and give them their owner and mode; returns their real paths."""
    out = []
    for root in roots:
        root.mkdir(parents=True, exist_ok=True)
        st = os.stat(root)
        misowned = st.st_uid != 0 or st.st_gid != 0 or stat.S_IMODE(st.st_mode) != ROOT_MODE
        if misowned and os.geteuid() == 0:
            log.info("model root %s: setting root:root %o (was %s)", root, ROOT_MODE, stat.filemode(st.st_mode))
            os.chown(root, 0, 0)
            os.chmod(root, ROOT_MODE)
        out.append(Path(os.path.realpath(root)))
    return out


def root_of(path: Path, roots: Sequence[Path]) -> Path | None:
    """The model root path lies in (path absolute and normalised, not resolved)."""
    for root in roots:
        if path == root or root in path.parents:
            return root
    return None


def _describe_owner(st: os.stat_result) -> str:
    return f"uid {st.st_uid}"


def ensure_model_dir(directory: Path, roots: Sequence[Path], uid: int | None, gid: int | None) -> Path:
    """Make directory (absolute, normalised) ready for a model running as uid: every part
    below its root created or checked without following symlinks. Returns directory.
    uid None: tasks run as the agent's own user, nothing is chowned."""
    root = root_of(directory, roots)
    if root is None:
        raise ModelDirError(f"{directory} is outside the model roots ({', '.join(map(str, roots))}); see ml.model_roots")
    parts = directory.relative_to(root).parts
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, name in enumerate(parts):
            leaf = i == len(parts) - 1
            made = False
            try:
                os.mkdir(name, MODEL_DIR_MODE if leaf else DIR_MODE, dir_fd=fd)
                made = True
            except FileExistsError:
                pass
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                where = root.joinpath(*parts[: i + 1])
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ModelDirError(
                        f"{where} is a symlink or not a directory; model directories must be real directories"
                    ) from None
                raise ModelDirError(f"{where}: {exc.strerror}") from None
            os.close(fd)
            fd = child
            st = os.fstat(fd)
            where = root.joinpath(*parts[: i + 1])
            if made:
                os.fchmod(fd, MODEL_DIR_MODE if leaf else DIR_MODE)  # whatever the umask took
                if leaf and uid is not None:
                    os.fchown(fd, uid, gid if gid is not None else uid)
            elif uid is not None and st.st_uid != uid and (leaf or st.st_uid != 0):
                if st.st_uid == 0:
                    raise ModelDirError(f"{where} belongs to root and is not a model root: give the model a directory of its own")
                raise ModelDirError(f"{where} belongs to another model's user ({_describe_owner(st)})")
    finally:
        os.close(fd)
    return directory


def file_owner_problem(path: Path, uid: int | None) -> str | None:
    """Why a model running as uid could not replace the file at path (None: it can, or
    there is no file yet). uid None: a model that has no uid yet, whose any existing file
    is someone else's. A final symlink is not followed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symlink; a model file must be a regular file"
    if st.st_uid != uid:
        return f"{path} exists and belongs to uid {st.st_uid}, not to this model's user: it could not replace it"
    return None
