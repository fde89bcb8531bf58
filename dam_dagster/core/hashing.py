"""Reading library files to hash them: prefix, partial and full hashes, a bounded thread pool.

The prefix hash: XXH64 (seed 0, hexadecimal) of the first min(size, 4 KiB) bytes: one small
read per file, to set apart files that merely share a size (most of them) before anything
larger is read. It is a filter, not a proof (files sharing it are read again, and a full MD5
decides), so it is the fast non-cryptographic hash jdupes uses for the same tier: MD5 was 5 us
of the 12 us a 4 KiB read costs here (docs/BENCHMARKS.md, "Scale on one machine").

The partial hash (docs/HASHING.md; never change it without a schema migration that drops the
stored hashes):

    partial_hash = MD5( H || T || size as 8-byte little-endian unsigned )
    H = bytes [0, min(size, 64 KiB))
    T = bytes [max(64 KiB, size - 64 KiB), size)

For a file of at most 128 KiB, H || T is the whole file, so one read gives both the partial
hash and the full hash (plain MD5 of the content, as `md5sum` prints it).

Files are opened read-only, without following a link unless asked, non-blocking (a FIFO that
replaced a file cannot hang a thread) and with O_NOATIME where the kernel allows it, so a scan
does not even touch access times. A file whose size or mtime changes while it is read gets an
error outcome instead of a hash.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

import xxhash

try:  # the prefix pass in C (core/_fastio.c), built where a compiler was; else the same in Python
    from . import _fastio
except ImportError:  # pragma: no cover - a machine without a compiler
    _fastio = None

from .failures import PermanentFailure, describe_os_error, os_error_is_transient
from .reading import open_readonly

PREFIX_BYTES = 4 * 1024
HEAD_BYTES = 64 * 1024
TAIL_BYTES = 64 * 1024
SMALL_FILE_MAX = HEAD_BYTES + TAIL_BYTES
CHUNK_BYTES = 1024 * 1024
# The prefix and head/tail reads are small and scattered: advise the kernel not to read ahead
# around them (on a share the readahead would fetch 4x the 4 KiB asked for, docs/BENCHMARKS.md).
# The passes over many files ask for it on network filesystems only: on a local disk the
# advice is one more system call per file (1.4 us of a 4 KiB read's 12) and saves nothing.
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


# What reading a path that is not a regular file any more fails with (the open succeeds).
_NOT_A_FILE = frozenset({errno.ESPIPE, errno.EISDIR, errno.EINVAL})


class ChangedDuringRead(Exception):
    """The file's size or mtime changed while it was being read."""


class NotARegularFile(Exception):
    """The path no longer names a regular file (a FIFO, a folder...)."""


def _open(path: str, follow_symlinks: bool) -> int:
    return open_readonly(path, follow_symlinks)


_FADVISE = getattr(os, "posix_fadvise", None)


def _advise_small_reads(fd: int, advise: bool | None = None) -> None:
    if (SMALL_READ_ADVICE if advise is None else advise) and _FADVISE is not None:
        _FADVISE(fd, 0, 0, os.POSIX_FADV_RANDOM)


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


def hashing_in_c() -> bool:
    """Whether the prefix pass runs in C (core/_fastio.c was built)."""
    return _fastio is not None


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


prefix_hash_of = xxhash.xxh64_hexdigest  # (bytes) -> 16 hexadecimal digits, seed 0


# One file's outcome as a plain tuple (a million of them are cheap; a million dataclasses are
# not): file_id, size, mtime, ctime (the state read), prefix, partial, full, bytes read,
# error class, error message, transient.
Row = tuple


def _prefix(fd: int, st: os.stat_result) -> tuple:
    data = _pread_exact(fd, min(st.st_size, PREFIX_BYTES), 0)
    return prefix_hash_of(data), None, None, len(data)


def _partial(fd: int, st: os.stat_result) -> tuple:
    size = st.st_size
    if size <= SMALL_FILE_MAX:
        data = _pread_exact(fd, size, 0)
        head, tail = data[:HEAD_BYTES], data[HEAD_BYTES:]
        full, read = _md5(data), size
    else:
        head = _pread_exact(fd, HEAD_BYTES, 0)
        tail = _pread_exact(fd, TAIL_BYTES, size - TAIL_BYTES)
        full, read = None, HEAD_BYTES + TAIL_BYTES
    return prefix_hash_of(head[:PREFIX_BYTES]), partial_hash_of(head, tail, size), full, read


def _full(fd: int, st: os.stat_result) -> tuple:
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
    if read != st.st_size:
        raise ChangedDuringRead("the file changed while it was read")
    return None, None, digest.hexdigest(), read


KINDS = {"prefix": _prefix, "partial": _partial, "full": _full}


def hash_row(
    kind: str,
    file_id: int,
    path: str,
    state: tuple,
    follow_symlinks: bool = False,
    advise: bool | None = None,
) -> Row:
    """Hash one file (`kind`: prefix, partial or full); `state` is the inventory's (size,
    mtime, ctime), recorded with an error when the file cannot be read. `advise`: whether
    small reads ask the kernel not to read ahead (None: SMALL_READ_ADVICE)."""
    try:
        fd = _open(path, follow_symlinks)
    except OSError as exc:
        return _failure_row(file_id, state, exc)
    try:
        st = _checked_stat(fd)
        if kind != "full":
            _advise_small_reads(fd, advise)
        prefix, partial, full, read = KINDS[kind](fd, st)
        if not _same_state(st, os.fstat(fd)):
            raise ChangedDuringRead("the file changed while it was read")
        state_read = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return (file_id, *state_read, prefix, partial, full, read, None, None, False)
    except (OSError, ChangedDuringRead, NotARegularFile) as exc:
        return _failure_row(file_id, state, exc)
    finally:
        os.close(fd)


def _member_hashes(kind: str, stream, size: int) -> tuple:
    """prefix / partial / full of a member's uncompressed bytes, streamed: the very same
    definitions as for a file (so a member equal to a loose file gets its hashes)."""
    if kind == "prefix" or size <= SMALL_FILE_MAX:
        data = stream.read(PREFIX_BYTES if kind == "prefix" and size > PREFIX_BYTES else size + 1)
        if kind != "prefix" and len(data) != size:
            raise ChangedDuringRead("the member is not the size its archive declares")
        if kind == "prefix":
            return prefix_hash_of(data), None, None, len(data)
        head, tail = data[:HEAD_BYTES], data[HEAD_BYTES:]
        partial = partial_hash_of(head, tail, size)
        return prefix_hash_of(head[:PREFIX_BYTES]), partial, _md5(data), size
    digest = hashlib.md5(usedforsecurity=False)
    head = b""
    tail = bytearray()
    read = 0
    while True:  # inflating is sequential: the tail costs the whole member
        chunk = stream.read(CHUNK_BYTES)
        if not chunk:
            break
        digest.update(chunk)
        if len(head) < HEAD_BYTES:
            head += chunk[: HEAD_BYTES - len(head)]
        tail += chunk
        del tail[: max(0, len(tail) - TAIL_BYTES)]
        read += len(chunk)
    if read != size:
        raise ChangedDuringRead("the member is not the size its archive declares")
    partial = partial_hash_of(head, bytes(tail), size)
    return prefix_hash_of(head[:PREFIX_BYTES]), partial, digest.hexdigest(), read


class _OpenArchive:
    """A zip opened once for the members of it that follow each other in a batch (jobs come
    in path order, so an archive's members are together): its central directory is parsed
    once, not once per member."""

    def __init__(self, path: str, follow_symlinks: bool):
        import zipfile

        self.path = path
        self.fd = _open(path, follow_symlinks)
        try:
            self.stat = _checked_stat(self.fd)
            self.file = os.fdopen(os.dup(self.fd), "rb")
            self.zip = zipfile.ZipFile(self.file)
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        for closing in (self.zip.close, self.file.close):
            try:
                closing()
            except Exception:  # noqa: BLE001 - closing a read-only file
                pass
        os.close(self.fd)


# What reading a member may raise that says something about the archive, not the storage.
def _member_errors() -> tuple:
    import lzma
    import zipfile
    import zlib

    from .archives import ArchiveRefused, MemberUnreadable

    return (
        zipfile.BadZipFile,
        zlib.error,
        lzma.LZMAError,
        EOFError,
        ValueError,
        NotImplementedError,
        RuntimeError,
        KeyError,
        MemberUnreadable,
        ArchiveRefused,
    )


def hash_member_row(kind: str, file_id: int, archive: _OpenArchive, member: str,
                    state: tuple) -> Row:  # fmt: skip
    """Hash a member of an open zip from its uncompressed bytes, inflated in memory as they
    stream (nothing is written anywhere). The state read is (the member's size, the
    archive's mtime and ctime)."""
    from .archives import open_member

    try:
        with open_member(archive.zip, member) as stream:
            prefix, partial, full, read = _member_hashes(kind, stream, state[0])
        if not _same_state(archive.stat, os.fstat(archive.fd)):
            raise ChangedDuringRead("the archive changed while it was read")
        st = archive.stat
        return (file_id, state[0], st.st_mtime_ns, st.st_ctime_ns, prefix, partial, full, read,
                None, None, False)  # fmt: skip
    except (ChangedDuringRead, NotARegularFile) as exc:
        return _failure_row(file_id, state, exc)
    except OSError as exc:
        if exc.errno is None:  # a decoder's complaint (bz2's "Invalid data stream")
            return _failure_row(file_id, state, PermanentFailure(type(exc).__name__, str(exc)))
        return _failure_row(file_id, state, exc)
    except _member_errors() as exc:
        cls = getattr(exc, "error_class", type(exc).__name__)
        return _failure_row(file_id, state, PermanentFailure(cls, str(exc)))


def _member_failure(file_id: int, state: tuple, exc: BaseException) -> Row:
    """A member's failure: an I/O error of the storage as it is (it may pass), anything else
    (encrypted, a bomb, a damaged block) permanent under its own class."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return _failure_row(file_id, state, exc)
    cls = getattr(exc, "error_class", type(exc).__name__)
    return _failure_row(file_id, state, PermanentFailure(cls, str(exc)))


def _failure_row(file_id: int, state: tuple, exc: BaseException) -> Row:
    cls = exc.error_class if isinstance(exc, PermanentFailure) else type(exc).__name__
    if isinstance(exc, OSError):
        transient = os_error_is_transient(exc)
        message = describe_os_error(exc)
    else:
        transient = False
        message = str(exc)
    return (file_id, *state, None, None, None, 0, cls, message, transient)


def _outcome(row: Row) -> HashOutcome:
    return HashOutcome(*row[:4], *row[4:7], row[7], *row[8:])


def hash_prefix(job: HashJob, follow_symlinks: bool = False) -> HashOutcome:
    """MD5 of the first 4 KiB; a file no larger than that gets its partial and full hash too."""
    state = (job.size_bytes, job.mtime_ns, job.ctime_ns)
    return _outcome(hash_row("prefix", job.file_id, job.path, state, follow_symlinks))


def hash_partial(job: HashJob, follow_symlinks: bool = False) -> HashOutcome:
    """Partial hash of one file; for files of at most 128 KiB also the full hash."""
    state = (job.size_bytes, job.mtime_ns, job.ctime_ns)
    return _outcome(hash_row("partial", job.file_id, job.path, state, follow_symlinks))


def hash_full(job: HashJob, follow_symlinks: bool = False) -> HashOutcome:
    """MD5 of the whole file, read sequentially in 1 MiB chunks."""
    state = (job.size_bytes, job.mtime_ns, job.ctime_ns)
    return _outcome(hash_row("full", job.file_id, job.path, state, follow_symlinks))


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


# The fields of an outcome Row, which hash_columns returns as one list each.
OUTCOME_FIELDS = ("file_id", "size_bytes", "mtime_ns", "ctime_ns", "prefix_hash",
                  "partial_hash", "full_hash", "bytes_read", "error_class", "error_message",
                  "transient")  # fmt: skip


def hash_batch(kind: str, follow_symlinks: bool, columns: tuple) -> tuple[list, list, int]:
    """hash_columns, with the outcomes as rows (tuples of OUTCOME_FIELDS)."""
    outcomes, failures, read = hash_columns(kind, follow_symlinks, columns)
    return list(zip(*outcomes)), failures, read


def hash_columns(
    kind: str, follow_symlinks: bool, columns: tuple, advise: bool | None = None
) -> tuple[tuple[list, ...], list, int]:
    """Hash one batch: columns are lists (file_id, path, raw_path, size, mtime, ctime,
    archive_path, archive_raw, member); a row with a member is a member of that archive.
    Every job gets an outcome, whatever happens (an error nobody foresaw is recorded as the
    file's own). The members of one 7z that follow each other are read in one pass over
    the archive (hash_7z_members). Returns the outcomes as columns (one list per
    OUTCOME_FIELDS: a batch crosses a pipe and becomes an Arrow table cheaply), the failures
    among them (path, error class, message, transient), and the bytes read. `advise`: see
    hash_row."""
    from .archives import is_seven_zip

    out = tuple([] for _ in OUTCOME_FIELDS)
    failures, read = [], 0
    archive: _OpenArchive | None = None
    jobs = list(zip(*columns))
    advise = SMALL_READ_ADVICE if advise is None else advise
    if kind == "prefix":  # the loose files first, in one call; the archive members below
        jobs, read = _prefix_outcomes(jobs, follow_symlinks, advise, out, failures)
    i = 0
    try:
        while i < len(jobs):
            fid, path, raw, size, mtime, ctime, zpath, zraw, member = jobs[i]
            if member is not None and is_seven_zip(
                fs_zip := os.fsdecode(zraw) if zraw is not None else zpath
            ):
                j = i
                while j < len(jobs) and jobs[j][8] is not None and jobs[j][6:8] == (zpath, zraw):
                    j += 1
                rows = hash_7z_members(kind, fs_zip, jobs[i:j], follow_symlinks)
                i = j
            else:
                state = (size, mtime, ctime)
                try:
                    if member is not None:
                        if archive is None or archive.path != fs_zip:
                            if archive is not None:
                                archive.close()
                                archive = None
                            archive = _OpenArchive(fs_zip, follow_symlinks)
                        row = hash_member_row(kind, fid, archive, member, state)
                    else:
                        fs_path = os.fsdecode(raw) if raw is not None else path
                        row = hash_row(kind, fid, fs_path, state, follow_symlinks, advise)
                except OSError as exc:  # the archive could not be opened
                    row = _failure_row(fid, state, exc)
                except Exception as exc:  # noqa: BLE001 - one file's surprise is its own outcome
                    row = _failure_row(fid, state, PermanentFailure(type(exc).__name__, str(exc)))
                rows = [row]
                i += 1
            for row, job in zip(rows, jobs[i - len(rows) : i]):
                for column, value in zip(out, row):
                    column.append(value)
                read += row[7]
                if row[8] is not None:
                    failures.append((job[1], row[8], row[9], row[10]))
    finally:
        if archive is not None:
            archive.close()
    return out, failures, read


def _prefix_hashes_py(paths: list, sizes: list, follow_symlinks: bool, advise: bool):
    """core/_fastio.c's prefix_hashes in Python, where it was not built: for each path (str or
    bytes) and the size the walk saw, the XXH64 of its first min(size, 4 KiB) bytes and code
    0, or None and an errno (-1: the file ends sooner). No fstat: the state recorded is the
    one the walk saw (a file rewritten since has a new ctime, which the next walk sees)."""
    hashes, codes = [], []
    pread, close = os.pread, os.close
    for path, size in zip(paths, sizes):
        want = size if size < PREFIX_BYTES else PREFIX_BYTES
        try:
            fd = _open(path, follow_symlinks)
        except OSError as exc:
            hashes.append(None), codes.append(exc.errno or errno.EIO)
            continue
        try:
            if advise:
                _advise_small_reads(fd, True)
            data = pread(fd, want, 0)
            if len(data) != want:
                data = _pread_exact(fd, want, 0)
        except OSError as exc:
            hashes.append(None), codes.append(exc.errno or errno.EIO)
        except ChangedDuringRead:
            hashes.append(None), codes.append(-1)
        else:
            hashes.append(prefix_hash_of(data)), codes.append(0)
        finally:
            close(fd)
    return hashes, codes


# The prefix loop: in C where it was built (the GIL released), else the same in Python.
prefix_hashes = _fastio.prefix_hashes if _fastio is not None else _prefix_hashes_py


def _loose_prefix_batch(batch, follow_symlinks: bool, advise: bool | None):
    """The prefix pass of a batch of loose files (an Arrow record batch of JOB_COLUMNS): only
    paths and sizes go to prefix_hashes, only hashes come back, and when every file was read
    the outcomes are an Arrow table made of the batch's own columns (row by row when some
    failed: rare)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    raws = batch.column(2)
    paths = batch.column(1).to_pylist()
    if raws.null_count != batch.num_rows:  # names that are not UTF-8: their exact bytes
        paths = [r if r is not None else p for p, r in zip(paths, raws.to_pylist())]
    sizes = batch.column(3).to_pylist()
    advise = SMALL_READ_ADVICE if advise is None else advise
    hashes, codes = prefix_hashes(paths, sizes, follow_symlinks, advise)
    if any(codes):  # some file could not be read (rare): the outcomes row by row, no read again
        jobs = list(zip(*(batch.column(i).to_pylist() for i in range(len(JOB_COLUMNS)))))
        out, failures = tuple([] for _ in OUTCOME_FIELDS), []
        _, read = _prefix_outcomes(jobs, follow_symlinks, advise, out, failures, (hashes, codes))
        return out, failures, read
    n = batch.num_rows
    wants = pc.min_element_wise(batch.column(3), pa.scalar(PREFIX_BYTES, pa.int64()))
    nulls = pa.nulls(n, pa.string())
    table = pa.table(
        {
            "file_id": batch.column(0), "size_bytes": batch.column(3),
            "mtime_ns": batch.column(4), "ctime_ns": batch.column(5),
            "prefix_hash": pa.array(hashes, pa.string()), "partial_hash": nulls,
            "full_hash": nulls, "error_class": nulls, "error_message": nulls,
            "transient": pa.nulls(n, pa.bool_()),
        }
    )  # fmt: skip
    return table, [], pc.sum(wants).as_py() or 0


def _prefix_outcomes(
    jobs: list, follow_symlinks: bool, advise: bool, out: tuple, failures: list, answers=None
):
    """The prefix pass of the batch's loose files (prefix_hashes, in one call): their outcomes
    are appended to `out`. `answers`: prefix_hashes' (hashes, codes) for these loose files
    when they were read already. Returns the jobs left (archive members) and the bytes read."""
    loose = [job for job in jobs if job[8] is None]
    if not loose:
        return jobs, 0
    if answers is None:
        paths = [raw if raw is not None else path for _, path, raw, *_ in loose]
        answers = prefix_hashes(paths, [job[3] for job in loose], follow_symlinks, advise)
    hashes, codes = answers
    read = 0
    for job, digest, code in zip(loose, hashes, codes):
        fid, path, _raw, size, mtime, ctime = job[:6]
        if code == 0:
            want = size if size < PREFIX_BYTES else PREFIX_BYTES
            row = (fid, size, mtime, ctime, digest, None, None, want, None, None, False)
            read += want
        else:
            if code < 0:
                exc = ChangedDuringRead("the file became shorter while it was read")
            elif code in _NOT_A_FILE:  # a FIFO or a folder where the file was
                exc = NotARegularFile("not a regular file any more")
            else:
                exc = OSError(code, os.strerror(code), path)
            row = _failure_row(fid, (size, mtime, ctime), exc)
            failures.append((path, row[8], row[9], row[10]))
        for column, value in zip(out, row):
            column.append(value)
    return [job for job in jobs if job[8] is not None], read


def hash_7z_members(kind: str, fs_path: str, jobs: list, follow_symlinks: bool) -> list[Row]:
    """Hash members of one 7z (jobs: rows of hash_batch's columns, all of this archive) in one
    pass: each block holding one of them is decompressed once, from its start, and each
    member streams into its hashers as it comes (memory: one chunk and a member's 64 KiB
    tail, never a member or the archive whole). Rows in the order of `jobs`."""
    from .archives import SevenZip

    states = {job[8]: (job[0], (job[3], job[4], job[5])) for job in jobs}
    rows: dict[str, Row] = {}
    try:
        fd = _open(fs_path, follow_symlinks)
    except OSError as exc:
        return [_failure_row(job[0], (job[3], job[4], job[5]), exc) for job in jobs]
    try:
        st = _checked_stat(fd)
        with os.fdopen(os.dup(fd), "rb") as f, SevenZip(f) as z:
            for name, got in z.stream_members(list(states)):
                fid, state = states[name]
                if isinstance(got, BaseException):
                    rows[name] = _member_failure(fid, state, got)
                    continue
                try:
                    prefix, partial, full, nread = _member_hashes(kind, got, state[0])
                except (OSError, ChangedDuringRead, *_member_errors()) as exc:
                    rows[name] = _member_failure(fid, state, exc)
                    continue
                rows[name] = (fid, state[0], st.st_mtime_ns, st.st_ctime_ns, prefix, partial,
                              full, nread, None, None, False)  # fmt: skip
        if not _same_state(st, os.fstat(fd)):
            raise ChangedDuringRead("the archive changed while it was read")
    except (OSError, ChangedDuringRead, NotARegularFile) as exc:
        return [_failure_row(job[0], (job[3], job[4], job[5]), exc) for job in jobs]
    except Exception as exc:  # noqa: BLE001 - a broken archive: every member's outcome
        cls = getattr(exc, "error_class", type(exc).__name__)
        failure = PermanentFailure(cls, f"the archive cannot be read: {exc}")
        return [rows.get(job[8]) or _failure_row(job[0], (job[3], job[4], job[5]), failure)
                for job in jobs]  # fmt: skip
    finally:
        os.close(fd)
    return [rows[job[8]] for job in jobs]


# --- helper processes ----------------------------------------------------------------------
# On a local disk a pass over many small files is Python work (four system calls and an MD5
# per file) that threads serialise on the GIL: helper processes, one per CPU, do it in
# parallel. They are started as `python -c` (no fork of a threaded process, no re-run of the
# caller's __main__), import this module only, and answer one batch at a time over a pipe.
_SERVE = (
    "import json, os, sys\n"
    "sys.path[:0] = [p for p in json.loads(os.environ.pop('DAM_HASH_SYS_PATH', '[]'))"
    " if p not in sys.path]\n"
    "from dam_dagster.core.hashing import serve\n"
    "serve()\n"
)


def serve() -> None:
    """A helper process: length-prefixed pickled batches in on stdin, results out on stdout."""
    import pickle

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = stdin.read(8)
        if len(header) < 8:
            return
        request = pickle.loads(_read_exactly(stdin, int.from_bytes(header, "little")))
        answer = pickle.dumps(hash_columns(*request), protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(len(answer).to_bytes(8, "little") + answer)
        stdout.flush()


def _read_exactly(stream, n: int) -> bytes:
    parts = []
    while n > 0:
        chunk = stream.read(n)
        if not chunk:
            raise EOFError("the hashing helper process went away")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


class _Helper:
    """One helper process, used by one thread at a time."""

    def __init__(self):
        import json
        import subprocess

        env = {**os.environ, "DAM_HASH_SYS_PATH": json.dumps([p for p in sys.path if p])}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=env, close_fds=True,
        )  # fmt: skip

    def __call__(self, *request):
        """hash_columns(*request) in the helper."""
        import pickle

        request = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.write(len(request).to_bytes(8, "little") + request)
        self.proc.stdin.flush()
        size = int.from_bytes(_read_exactly(self.proc.stdout, 8), "little")
        return pickle.loads(_read_exactly(self.proc.stdout, size))

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - never leave it behind
            self.proc.kill()
            self.proc.wait()


JOB_COLUMNS = ("file_id", "path", "raw_path", "size_bytes", "mtime_ns", "ctime_ns",
               "archive_path", "archive_raw", "member")  # fmt: skip


def _job_types():
    import pyarrow as pa

    return {"archive_path": pa.string(), "archive_raw": pa.binary(), "member": pa.string()}


def _whole_archive_batches(jobs, batch: int):
    """Batches of about `batch` jobs that never cut the members of one archive in two (one
    pass over a 7z per hashing stage: its members are in path order, so together)."""
    import pyarrow as pa

    carry = None
    for b in jobs.to_batches(max_chunksize=batch):
        t = pa.Table.from_batches([b])
        if carry is not None:
            t = pa.concat_tables([carry, t])
            carry = None
        archives = t.column("archive_path").to_pylist()
        last = archives[-1] if archives else None
        if last is not None:
            cut = len(archives)
            while cut > 0 and archives[cut - 1] == last:
                cut -= 1
            if cut > 0:
                carry, t = t.slice(cut), t.slice(0, cut)
            else:
                carry, t = t, None
        if t is not None and t.num_rows:
            yield from t.combine_chunks().to_batches()
    if carry is not None and carry.num_rows:
        yield from carry.combine_chunks().to_batches()


def hash_table(
    jobs,
    kind: str,
    threads: int,
    on_rows: Callable[[tuple[list, ...], list[tuple], int], None],
    follow_symlinks: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    progress_every_s: float = 5.0,
    stage: str = "",
    batch: int | None = None,
    processes: int = 0,
    advise: bool | None = None,
) -> None:
    """Hash every job of an Arrow table (file_id, path, raw_path, size_bytes, mtime_ns,
    ctime_ns) with `threads` threads (each driving a helper process when `processes` > 0),
    handing each batch's outcomes (columns, see hash_columns, or an Arrow table of the hash
    tables' columns from the fast prefix path) to `on_rows` as they come, in this thread,
    with the failures among them and the bytes read: a million files never become a million
    objects at once. Batches of `batch` jobs (prefix reads take a few
    microseconds a file: 1,024 of them, enough that a batch's round trip to a helper costs
    nothing and few enough that 16 threads all have reads in flight on a cold disk; other
    kinds 512). `advise`: see hash_row."""
    total = jobs.num_rows
    if not total:
        return
    workers = max(1, processes or threads)
    batch = batch or (1024 if kind == "prefix" else 512)
    started = last = time.monotonic()
    done = read = 0
    helpers: list[_Helper] = []
    local = threading.local()

    def work(b):
        # loose files only (no archive member): their columns go to the prefix loop whole
        if not processes and kind == "prefix" and b.column(8).null_count == b.num_rows:
            return _loose_prefix_batch(b, follow_symlinks, advise)
        columns = tuple(b.column(i).to_pylist() for i in range(len(JOB_COLUMNS)))
        if not processes:
            return hash_columns(kind, follow_symlinks, columns, advise)
        helper = getattr(local, "helper", None)
        if helper is None:
            helper = local.helper = _Helper()
            helpers.append(helper)
        return helper(kind, follow_symlinks, columns, advise)

    import pyarrow as pa

    for name, arrow_type in _job_types().items():  # loose files only: no archive columns
        if name not in jobs.column_names:
            jobs = jobs.append_column(name, pa.nulls(jobs.num_rows, arrow_type))
    jobs = jobs.select(list(JOB_COLUMNS))
    batches = _whole_archive_batches(jobs, batch)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dam-io") as pool:
            # a bounded number of batches in flight: the rows of a million files never pile up
            pending = {pool.submit(work, b) for _, b in zip(range(workers * 3), batches)}
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    outcomes, failures, nread = future.result()
                    done += outcomes.num_rows if hasattr(outcomes, "num_rows") else len(outcomes[0])
                    read += nread
                    on_rows(outcomes, failures, nread)
                    nxt = next(batches, None)
                    if nxt is not None:
                        pending.add(pool.submit(work, nxt))
                now = time.monotonic()
                if on_progress is not None and now - last >= progress_every_s:
                    on_progress(Progress(done, total, read, now - started, stage))
                    last = now
    finally:
        for helper in helpers:
            helper.close()
    if on_progress is not None:
        on_progress(Progress(done, total, read, time.monotonic() - started, stage))
