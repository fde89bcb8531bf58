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
    return exc.errno not in PERMANENT_ERRNOS


def parser_error_is_transient(exc: OSError) -> bool:
    """An OSError raised while a model already in memory is parsed. Without an errno it is a
    parser's complaint about the content (PIL's UnidentifiedImageError in a texture, trimesh
    naming a glTF buffer it did not find beside the file): permanent. A system error reading
    a side file follows the errno rule above (EIO may pass; ENOENT, EACCES do not)."""
    return exc.errno is not None and os_error_is_transient(exc)


def describe_os_error(exc: OSError) -> str:
    """'Permission denied (errno 13)': the reason without the path (rows carry the path)."""
    return f"{exc.strerror or exc}" + (f" (errno {exc.errno})" if exc.errno else "")
