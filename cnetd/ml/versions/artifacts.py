"""The agent's own copies of model versions' artifacts, content-addressed under the state
dir: `<state_dir>/versions/<sha256>/<file name>` plus the sidecar files that lay beside the
model file (a Keras model's `<name>.meta.json`, a scaler `<stem>_scaler.pkl`, ...).

A copy is made by reflink where the file system can (FICLONE), by copying otherwise; never by
a hard link: a retrain that rewrites the model file in place (h5py does) would change the
linked copy too. The sha256 is taken of the copy, not of the source, so what is recorded is
what is served. Copies are root's, read-only (0444) in a 0755 directory under a 0711 root:
a model's worker reads them by their full path (the launcher binds the directory back into
the worker's view); nobody lists them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

FICLONE = 0x40049409  # linux/fs.h
MAX_SIDECARS = 16
CHUNK = 1 << 20


@dataclass(frozen=True)
class Stored:
    sha256: str
    size: int
    file: Path  # the copy of the model file
    sidecars: list[str]


def sidecars_of(model_file: Path) -> list[Path]:
    """Files beside the model that belong to it: `<name>.*`, `<stem>_scaler*`, `<stem>.scaler*`."""
    name, stem = model_file.name, model_file.stem
    found: list[Path] = []
    try:
        entries = sorted(model_file.parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        n = entry.name
        if entry == model_file or n.endswith((".tmp", ".new")):
            continue
        if n.startswith(name + ".") or n.startswith(stem + "_scaler") or n.startswith(stem + ".scaler"):
            with contextlib.suppress(OSError):
                if stat.S_ISREG(entry.lstat().st_mode):
                    found.append(entry)
        if len(found) >= MAX_SIDECARS:
            break
    return found


def _clone_or_copy(source_fd: int, target: Path) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.ioctl(fd, FICLONE, source_fd)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EBADF, errno.EPERM):
                raise
        os.lseek(source_fd, 0, os.SEEK_SET)
        with os.fdopen(os.dup(source_fd), "rb", closefd=True) as src, os.fdopen(os.dup(fd), "wb", closefd=True) as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    finally:
        os.close(fd)


def _copy_regular(source: Path, target: Path) -> None:
    """Copy a regular file, refusing a symlink as its last component."""
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{source} is not a regular file")
        _clone_or_copy(fd, target)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class ArtifactStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "versions"
        self._lock = threading.Lock()
        self._pending: set[str] = set()  # stored, its version not recorded yet

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):
            os.chmod(self.root, 0o711)

    def store(self, model_file: Path) -> Stored:
        """Copy model_file and its sidecars in; blocking (run it in a thread)."""
        self.prepare()
        staging = self.root / f".incoming-{uuid.uuid4().hex}"
        staging.mkdir(mode=0o700)
        try:
            target = staging / model_file.name
            _copy_regular(model_file, target)
            sidecars = []
            for sidecar in sidecars_of(model_file):
                with contextlib.suppress(OSError):  # gone meanwhile, or not a regular file any more
                    _copy_regular(sidecar, staging / sidecar.name)
                    sidecars.append(sidecar.name)
            sha, size = sha256_of(target)
            with self._lock:
                self._pending.add(sha)
            for entry in staging.iterdir():
                os.chmod(entry, 0o444)
            final = self.root / sha
            if final.is_dir() and (final / model_file.name).is_file():
                shutil.rmtree(staging)  # the same content is kept already (with its sidecars)
                present = sorted(e.name for e in final.iterdir() if e.name != model_file.name)
                return Stored(sha, size, final / model_file.name, present)
            if final.exists():
                # the same bytes kept under another file name: keep both names in one directory
                for entry in staging.iterdir():
                    with contextlib.suppress(FileExistsError):
                        os.link(entry, final / entry.name)
                shutil.rmtree(staging)
            else:
                os.chmod(staging, 0o755)
                os.rename(staging, final)
            return Stored(sha, size, final / model_file.name, sidecars)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def holds(self, path: Path) -> bool:
        return path.parent.parent == self.root

    def recorded(self, stored: Stored) -> None:
        """The version of a stored copy is in the store now: retention may judge it."""
        with self._lock:
            self._pending.discard(stored.sha256)

    def remove_unused(self, in_use: set[str]) -> list[str]:
        """Remove stored directories that no artifact in use lies in (nor a copy whose
        version is still being recorded); their names."""
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        with self._lock:
            keep = {Path(p).parent.name for p in in_use} | self._pending
        for entry in self.root.iterdir():
            if entry.name.startswith(".") or entry.name in keep:
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        return removed
