"""Reading library files to hash them: prefix, partial and full hashes, a bounded thread pool.

The prefix hash: MD5 of the first min(size, 4 KiB) bytes: one small read per file, to set apart
files that merely share a size (most of them) before anything larger is read.

The partial hash (docs/HASHING.md; never change it without a schema migration that drops the
stored hashes):

    partial_hash = MD5( H || T || size as 8-byte little-endian unsigned )
    H = bytes [0, min(size, 64 KiB))
    T = bytes [max(64 KiB, size - 64 KiB), size)

For a file of at most 128 KiB, H || T is the whole file, so one read gives both the partial
hash and the full hash (plain MD5 of the content, as `md5sum` prints it); for a file of at
most 4 KiB the prefix read already is that read.

Files are opened read-only, without following a link unless asked, non-blocking (a FIFO that
replaced a file cannot hang a thread) and with O_NOATIME where the kernel allows it, so a scan
does not even touch access times. A file whose size or mtime changes while it is read gets an
error outcome instead of a hash.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from .failures import describe_os_error, os_error_is_transient

PREFIX_BYTES = 4 * 1024
HEAD_BYTES = 64 * 1024
TAIL_BYTES = 64 * 1024
SMALL_FILE_MAX = HEAD_BYTES + TAIL_BYTES
CHUNK_BYTES = 1024 * 1024
# The prefix and head/tail reads are small and scattered: advise the kernel not to read ahead
# around them (on a share the readahead would fetch 4x the 4 KiB asked for, docs/BENCHMARKS.md).
SMALL_READ_ADVICE = True


@dataclass(frozen=True)
class HashJob:
    file_id: int
    path: str  # filesystem path (surrogate escapes allowed)
    size_bytes: int  # as the inventory saw it
    mtime_ns: int
    ctime_ns: int | None = None


@dataclass(frozen=True)
class HashOutcome:
    file_id: int
    size_bytes: int  # the state that was actually read (may differ from the job's)
    mtime_ns: int
    ctime_ns: int | None
    prefix_hash: str | None = None
    partial_hash: str | None = None
    full_hash: str | None = None
    bytes_read: int = 0
    error_class: str | None = None
    error_message: str | None = None
    transient: bool = False  # a retry could succeed (an I/O error on a share, say)

    @property
    def ok(self) -> bool:
        return self.error_class is None


class ChangedDuringRead(Exception):
    """The file's size or mtime changed while it was being read."""


class NotARegularFile(Exception):
    """The path no longer names a regular file (a FIFO, a folder...)."""


_NOATIME = getattr(os, "O_NOATIME", 0)


def _open(path: str, follow_symlinks: bool) -> int:
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    if _NOATIME:
        try:
            return os.open(path, flags | _NOATIME)
        except PermissionError:
            pass  # O_NOATIME needs ownership of the file (EPERM): open without it
    return os.open(path, flags)


def _advise_small_reads(fd: int) -> None:
    if SMALL_READ_ADVICE and hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    parts = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            raise ChangedDuringRead("the file became shorter while it was read")
        parts.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(parts) if len(parts) != 1 else parts[0]


def _checked_stat(fd: int) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise NotARegularFile("not a regular file any more")
    return st


def _same_state(a: os.stat_result, b: os.stat_result) -> bool:
    return (
        a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns and a.st_ctime_ns == b.st_ctime_ns
    )


def partial_hash_of(head: bytes, tail: bytes, size: int) -> str:
    digest = hashlib.md5(head, usedforsecurity=False)
    digest.update(tail)
    digest.update(size.to_bytes(8, "little"))
    return digest.hexdigest()


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def hash_prefix(job: HashJob, follow_symlinks: bool = False) -> HashOutcome:
    """MD5 of the first 4 KiB; a file no larger than that gets its partial and full hash too."""
    try:
        fd = _open(job.path, follow_symlinks)
    except OSError as exc:
        return _failure(job, exc)
    try:
        st = _checked_stat(fd)
        _advise_small_reads(fd)
        size = st.st_size
        data = _pread_exact(fd, min(size, PREFIX_BYTES), 0)
        if not _same_state(st, os.fstat(fd)):
            raise ChangedDuringRead("the file changed while it was read")
        small = size <= PREFIX_BYTES
        return HashOutcome(
            job.file_id,
            size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            prefix_hash=_md5(data),
            partial_hash=partial_hash_of(data, b"", size) if small else None,
            full_hash=_md5(data) if small else None,
            bytes_read=len(data),
        )
    except (OSError, ChangedDuringRead, NotARegularFile) as exc:
        return _failure(job, exc)
    finally:
        os.close(fd)


def hash_partial(job: HashJob, follow_symlinks: bool = False) -> HashOutcome:
    """Partial hash of one file; for files of at most 128 KiB also the full hash."""
    try:
        fd = _open(job.path, follow_symlinks)
    except OSError as exc:
        return _failure(job, exc)
    try:
        st = _checked_stat(fd)
        _advise_small_reads(fd)
        size = st.st_size
        if size <= SMALL_FILE_MAX:
            data = _pread_exact(fd, size, 0)
            head, tail = data[:HEAD_BYTES], data[HEAD_BYTES:]
            full = _md5(data)
            read = size
        else:
            head = _pread_exact(fd, HEAD_BYTES, 0)
            tail = _pread_exact(fd, TAIL_BYTES, size - TAIL_BYTES)
            full = None
            read = HEAD_BYTES + TAIL_BYTES
        if not _same_state(st, os.fstat(fd)):
            raise ChangedDuringRead("the file changed while it was read")
        return HashOutcome(
            job.file_id,
            size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            prefix_hash=_md5(head[:PREFIX_BYTES]),
            partial_hash=partial_hash_of(head, tail, size),
            full_hash=full,
            bytes_read=read,
        )
    except (OSError, ChangedDuringRead, NotARegularFile) as exc:
        return _failure(job, exc)
    finally:
        os.close(fd)


def hash_full(job: HashJob, follow_symlinks: bool = False) -> HashOutcome:
    """MD5 of the whole file, read sequentially in 1 MiB chunks."""
    try:
        fd = _open(job.path, follow_symlinks)
    except OSError as exc:
        return _failure(job, exc)
    try:
        st = _checked_stat(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        digest = hashlib.md5(usedforsecurity=False)
        buf = bytearray(CHUNK_BYTES)
        view = memoryview(buf)
        read = 0
        while True:
            n = os.readv(fd, [buf])
            if n == 0:
                break
            digest.update(view[:n])  # hashlib releases the GIL on large buffers
            read += n
        if read != st.st_size or not _same_state(st, os.fstat(fd)):
            raise ChangedDuringRead("the file changed while it was read")
        return HashOutcome(
            job.file_id,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            full_hash=digest.hexdigest(),
            bytes_read=read,
        )
    except (OSError, ChangedDuringRead, NotARegularFile) as exc:
        return _failure(job, exc)
    finally:
        os.close(fd)


def _failure(job: HashJob, exc: BaseException) -> HashOutcome:
    if isinstance(exc, OSError):
        transient = os_error_is_transient(exc)
        message = describe_os_error(exc)
    else:
        transient = False
        message = str(exc)
    return HashOutcome(
        job.file_id,
        job.size_bytes,
        job.mtime_ns,
        job.ctime_ns,
        error_class=type(exc).__name__,
        error_message=message,
        transient=transient,
    )


@dataclass
class Progress:
    done: int
    total: int
    bytes_read: int
    elapsed_s: float
    stage: str = ""  # what is being read, e.g. "first 4 KiB"

    @property
    def rate_mb_s(self) -> float:
        return self.bytes_read / 1e6 / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def describe(self, what: str = "") -> str:
        eta = ""
        if 0 < self.done < self.total and self.elapsed_s > 0:
            left = (self.total - self.done) * self.elapsed_s / self.done
            eta = f", about {left:.0f} s left"
        return (
            f"{what or self.stage or 'read'}: {self.done:,}/{self.total:,} files, "
            f"{self.bytes_read / 1e6:,.1f} MB "
            f"read at {self.rate_mb_s:,.1f} MB/s{eta}"
        )


def hash_many(
    jobs: Sequence[HashJob],
    fn: Callable[[HashJob], HashOutcome],
    threads: int,
    on_progress: Callable[[Progress], None] | None = None,
    progress_every_s: float = 5.0,
    stage: str = "",
) -> list[HashOutcome]:
    """Run `fn` over the jobs with a bounded pool of threads (shares are latency-bound).

    Jobs go to the threads in small batches: one future per file costs more in lock traffic
    than reading a 4 KiB prefix does.
    """
    outcomes: list[HashOutcome] = []
    if not jobs:
        return outcomes
    threads = max(1, threads)
    batch = max(1, min(64, len(jobs) // (threads * 4)))
    batches = [jobs[i : i + batch] for i in range(0, len(jobs), batch)]
    started = last = time.monotonic()
    read = 0
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dam-io") as pool:
        futures = [pool.submit(lambda b: [fn(job) for job in b], b) for b in batches]
        for future in as_completed(futures):
            for outcome in future.result():
                outcomes.append(outcome)
                read += outcome.bytes_read
            now = time.monotonic()
            if on_progress is not None and now - last >= progress_every_s:
                on_progress(Progress(len(outcomes), len(jobs), read, now - started, stage))
                last = now
    if on_progress is not None:
        on_progress(Progress(len(outcomes), len(jobs), read, time.monotonic() - started, stage))
    outcomes.sort(key=lambda o: o.file_id)
    return outcomes
