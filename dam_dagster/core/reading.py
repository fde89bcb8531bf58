"""Opening library files: the one way every reader opens them (hashing, render workers).

Read-only, close-on-exec, non-blocking (a FIFO put where a file was cannot hang a reader),
without following a symbolic link unless asked, and with O_NOATIME where the kernel allows
it (it needs ownership of the file), so a scan does not even change access times.
Standard library only: render workers import it.
"""

from __future__ import annotations

import os

_NOATIME = getattr(os, "O_NOATIME", 0)


def open_readonly(path: str, follow_symlinks: bool = True) -> int:
    """A file descriptor for reading `path`; OSError when it cannot be opened."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    if _NOATIME:
        try:
            return os.open(path, flags | _NOATIME)
        except PermissionError:
            pass  # O_NOATIME needs ownership of the file (EPERM): open without it
    return os.open(path, flags)
