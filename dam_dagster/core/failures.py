"""Per-file failures, one rule for every stage: is it about the file, or may it pass?

- Permanent: the failure says something about the file in its current state (it vanished,
  it cannot be read with its permissions, it is not a regular file any more, its model is
  corrupt or empty, its format has no reader, its archive is a bomb, it was killed at the
  memory cap twice). The outcome is recorded and the file is not tried again until its state
  (size, mtime, ctime) changes; `chmod` moves ctime, so mending permissions is enough.
- Transient: the failure may pass without the file changing (an I/O error on a share, a
  timeout, a crashed worker, a first memory-cap kill). The outcome is recorded, the file is
  tried again on the next run, and the run fails at its end with a summary so that the
  partition shows as failed and a backfill retries exactly those files.

Hashing (core/hashing.py) and rendering (core/render/worker.py, core/thumbnails.py) both ask
here. Standard library only: the render workers import it too.
"""

from __future__ import annotations

import errno
import os

# OSErrors that say something about the file, not about the storage.
PERMANENT_ERRNOS = frozenset(
    {
        errno.ENOENT,  # vanished since the walk: the next walk marks it gone
        errno.EACCES,  # permission denied: kept until chmod/chown changes its ctime
        errno.EPERM,
        errno.ELOOP,  # a link where a file was (links are not followed)
        errno.EISDIR,
        errno.ENOTDIR,
        errno.ENAMETOOLONG,
        errno.ENXIO,  # a FIFO or socket where a file was
    }
)

# How many memory-cap kills of one unchanged file make it permanent.
MEMORY_KILLS_PERMANENT = 2


def os_error_is_transient(exc: OSError) -> bool:
    """An OSError with an errno of the storage (EIO, ETIMEDOUT...) may pass; one about the file,
    or with no errno at all (a decoder's "Invalid data stream"), is the file's own."""
    return exc.errno is not None and exc.errno not in PERMANENT_ERRNOS


class PermanentFailure(Exception):
    """A failure about the file, recorded under the class that names it (ArchiveBomb,
    MemberUnreadable, LZMAError...)."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class


# What a person is told when the data folder's disk refuses a write (the catalogue, the run
# history, a PNG), the cause first: DuckDB and SQLite word it their own way, and SQLite says
# only "disk I/O error" when its WAL index cannot grow on a full disk.
_DISK_HINTS = {
    errno.ENOSPC: "the disk holding the data folder (DAM_DATA_DIR) is full",
    errno.EDQUOT: "the disk quota of the data folder (DAM_DATA_DIR) is used up",
    errno.EROFS: "the data folder (DAM_DATA_DIR) is on a read-only filesystem",
}


def disk_is_full(path: str | os.PathLike) -> bool:
    """Whether the filesystem holding `path` (or its nearest existing parent) has less than
    1 MiB left for this user."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def storage_cause(message: str, data_dir: str | os.PathLike | None = None) -> str:
    """`message` with its cause first when it is the disk: "the disk holding the data folder
    (DAM_DATA_DIR) is full (IOException: ... No space left on device)"."""
    for code, hint in _DISK_HINTS.items():
        if f"[Errno {code}]" in message or os.strerror(code) in message:
            return f"{hint} ({message})"
    if "database or disk is full" in message or (
        "disk I/O error" in message and data_dir is not None and disk_is_full(data_dir)
    ):
        return f"{_DISK_HINTS[errno.ENOSPC]} ({message})"
    return message


def describe_os_error(exc: OSError) -> str:
    """'Permission denied (errno 13)': the reason without the path (rows carry the path)."""
    return f"{exc.strerror or exc}" + (f" (errno {exc.errno})" if exc.errno else "")
