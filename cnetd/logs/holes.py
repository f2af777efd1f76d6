"""Give back the disk blocks of a log file's already-stored head, keeping its length.

A running task appends to its log file through its own file descriptor, and the ingester
reads it by byte offset, so the file can be neither rotated nor shortened under them.
fallocate(PUNCH_HOLE | KEEP_SIZE) frees the blocks of a range instead: offsets stay valid,
appends still land at the end, reads of the range return zeros, and st_size (what
disk_limit counts as written) is unchanged.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


class _Fallocate:
    def __init__(self) -> None:
        self._fn = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.fallocate
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            fn.restype = ctypes.c_int
            self._fn = fn
        except (OSError, AttributeError):
            pass

    def punch(self, fd: int, offset: int, length: int) -> None:
        if self._fn is None:
            raise OSError(errno.ENOSYS, "fallocate is not available")
        if self._fn(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))


_fallocate = _Fallocate()


def punch_head(path: Path, start: int, end: int) -> str | None:
    """Free the blocks of bytes [start, end) of the regular file at path (never following
    a link). Returns None when done, else why it could not be (the file is gone, is not a
    regular file, or its filesystem cannot punch holes)."""
    if end <= start:
        return None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "not a regular file"
        _fallocate.punch(fd, start, end - start)
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        os.close(fd)
