"""Atomic file writes: write to a temporary file in the target folder, fsync, then rename.

A crash or an exception mid-write never leaves a half-written file at the target path.
"""

from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Callable, Mapping


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Calls ``write(f)`` on a temporary binary file next to ``path``, then renames it to ``path``.

    Missing parent folders are created; on any failure the temporary file is removed and the old
    file at ``path`` (if any) is left as it was.
    """
    write_all_atomic({path: write})


def write_all_atomic(writes: Mapping[str | os.PathLike, Callable[[BinaryIO], None]]) -> None:
    """``write_atomic`` for a set of files, all or nothing: every ``write(f)`` fills a temporary file
    next to its path, and only when all are written and synced are they renamed to their paths.

    A failure or an interrupt (KeyboardInterrupt) while writing removes every temporary file and
    leaves every target as it was; what remains is the instant of the renames themselves.
    """
    pending = []  # (temporary file, target path)
    try:
        for path, write in writes.items():
            path = os.fspath(path)
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
            pending.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, _mode_for(path))  # mkstemp creates 0600; give the file the usual permissions
    except BaseException:
        for tmp, _ in pending:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    for tmp, path in pending:
        os.replace(tmp, path)


def _mode_for(path: str) -> int:
    """The existing file's permissions, else those of a new file under the current umask."""
    try:
        return os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    write_atomic(path, lambda f: f.write(data))
