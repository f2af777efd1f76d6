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
    os.close(open_model_dir(directory, roots, uid, gid))
    return directory


def open_model_dir(directory: Path, roots: Sequence[Path], uid: int | None, gid: int | None) -> int:
    """ensure_model_dir, returning a file descriptor of the model's directory (the caller
    closes it): what root writes there goes through this descriptor, never a path."""
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
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_model_file(path: Path, roots: Sequence[Path]) -> int:
    """A read-only descriptor of the regular file at path (absolute, normalised), reached
    from its model root without following a symlink anywhere on the way (the file itself
    included), so that a model whose user swapped its file or a directory for a symlink
    cannot make root read something else. ModelDirError says why not."""
    root = root_of(path.parent, roots)
    if root is None:
        raise ModelDirError(f"{path} is outside the model roots ({', '.join(map(str, roots))})")
    parts = path.relative_to(root).parts
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, name in enumerate(parts):
            leaf = i == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_NONBLOCK if leaf else os.O_DIRECTORY)
            try:
                child = os.open(name, flags, dir_fd=fd)
            except OSError as exc:
                where = root.joinpath(*parts[: i + 1])
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ModelDirError(f"{where} is a symlink or not a directory; a model file is reached "
                                        "through real directories only") from None
                if exc.errno == errno.ENOENT:
                    raise FileNotFoundError(errno.ENOENT, "no such file", str(where)) from None
                raise ModelDirError(f"{where}: {exc.strerror}") from None
            os.close(fd)
            fd = child
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelDirError(f"{path} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


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


MODEL_FILE_MODE = 0o640
FREE_SPACE_MARGIN = 64 * 1024 * 1024  # left free on the file system after a model file is written


def check_file_name(name: str) -> str:
    """A model file's name as one directory entry: no separator, no dot name, no NUL."""
    if not name or name in (".", "..") or "/" in name or "\0" in name or len(name.encode()) > 255:
        raise ModelDirError(f"{name!r:.80} is not a file name")
    return name


class ModelFileWriter:
    """Writes a model file into a model directory as root, the way a trained model lands
    there: a temporary file created (O_EXCL, never following a symlink) through the
    directory's descriptor, filled, synced, given to the model's user, and renamed over the
    final name in one step, so that a reader sees the old file or the whole new one.

        writer = ModelFileWriter(directory, "model.joblib", roots, uid, gid, size)
        writer.open()          # walks to the directory (as open_model_dir), checks free space
        writer.write(chunk)    # ...
        writer.commit()        # or writer.abort(): nothing is left behind

    The caller checks what it wrote (size, sha256) before commit."""

    def __init__(self, directory: Path, name: str, roots: Sequence[Path], uid: int | None, gid: int | None,
                 size: int) -> None:
        self.directory = directory
        self.name = check_file_name(name)
        self.roots = roots
        self.uid = uid
        self.gid = gid if gid is not None else uid
        self.size = size
        self._dir_fd: int | None = None
        self._fd: int | None = None
        self._temp = f".{name[:200]}.{os.urandom(6).hex()}.part"

    @property
    def path(self) -> Path:
        return self.directory / self.name

    def open(self) -> None:
        self._dir_fd = open_model_dir(self.directory, self.roots, self.uid, self.gid)
        try:
            vfs = os.fstatvfs(self._dir_fd)
            free = vfs.f_bavail * vfs.f_frsize
            if self.size + FREE_SPACE_MARGIN > free:
                raise ModelDirError(f"{self.directory}: {self.size} bytes do not fit: {free} bytes free, "
                                    f"{FREE_SPACE_MARGIN} of them kept free")
            self._fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                               0o600, dir_fd=self._dir_fd)
        except BaseException:
            self.abort()
            raise

    def write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def commit(self) -> Path:
        assert self._fd is not None and self._dir_fd is not None
        try:
            os.fsync(self._fd)
            if self.uid is not None:
                os.fchown(self._fd, self.uid, self.gid if self.gid is not None else self.uid)
            os.fchmod(self._fd, MODEL_FILE_MODE)
            os.close(self._fd)
            self._fd = None
            os.rename(self._temp, self.name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            os.fsync(self._dir_fd)
        except BaseException:
            self.abort()
            raise
        os.close(self._dir_fd)
        self._dir_fd = None
        return self.path

    def abort(self) -> None:
        """Remove the temporary file (if any) and let go of the directory."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._dir_fd is not None:
            try:
                os.unlink(self._temp, dir_fd=self._dir_fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove %s: %s", self.directory / self._temp, exc.strerror)
            os.close(self._dir_fd)
            self._dir_fd = None
