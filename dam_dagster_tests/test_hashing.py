"""The exact bytes of the partial hash, and how reading fails: never a crash."""

import hashlib
import os
import random
from pathlib import Path

import pytest

from dam_dagster.core.hashing import HashJob, hash_full, hash_partial

K = 1024


def reference_partial(data: bytes) -> str:
    """docs/HASHING.md, written independently of the implementation."""
    size = len(data)
    head = data[: min(size, 64 * K)]
    tail = data[max(64 * K, size - 64 * K) :]
    return hashlib.md5(head + tail + size.to_bytes(8, "little")).hexdigest()


def job(path, file_id=1):
    st = os.stat(path)
    return HashJob(file_id, str(path), st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize(
    "size",
    [
        1,
        1000,
        64 * K - 1,
        64 * K,
        64 * K + 1,
        128 * K - 1,
        128 * K,
        128 * K + 1,
        192 * K,
        5 * K * K + 3,
    ],
)
def test_partial_hash_is_the_documented_bytes(tmp_path, size):
    data = random.Random(size).randbytes(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    outcome = hash_partial(job(path))
    assert outcome.ok
    assert outcome.partial_hash == reference_partial(data)
    if size <= 128 * K:  # read once, full hash from the same read
        assert outcome.full_hash == hashlib.md5(data).hexdigest()
        assert outcome.bytes_read == size
    else:
        assert outcome.full_hash is None
        assert outcome.bytes_read == 128 * K
    full = hash_full(job(path))
    assert full.full_hash == hashlib.md5(data).hexdigest()
    assert full.bytes_read == size


def test_decoys_share_the_partial_hash_but_not_the_full_one(tmp_path):
    rnd = random.Random(0)
    head, tail = rnd.randbytes(64 * K), rnd.randbytes(64 * K)
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(head + rnd.randbytes(10 * K) + tail)
    b.write_bytes(head + rnd.randbytes(10 * K) + tail)
    assert hash_partial(job(a)).partial_hash == hash_partial(job(b)).partial_hash
    assert hash_full(job(a)).full_hash != hash_full(job(b)).full_hash


def test_missing_file_is_a_recorded_permanent_error(tmp_path):
    outcome = hash_partial(HashJob(7, str(tmp_path / "gone.stl"), 10, 0))
    assert not outcome.ok and outcome.error_class == "FileNotFoundError"
    assert outcome.transient is False and outcome.file_id == 7


def test_fifo_is_never_read_and_never_blocks(tmp_path):
    fifo = tmp_path / "pipe.stl"
    os.mkfifo(fifo)
    for fn in (hash_partial, hash_full):
        outcome = fn(HashJob(1, str(fifo), 0, 0))  # a writer-less FIFO would block open()
        assert outcome.error_class == "NotARegularFile"


def test_symlink_is_not_followed_unless_asked(tmp_path):
    target = tmp_path / "real.stl"
    target.write_bytes(b"solid x\nendsolid x\n")
    link = tmp_path / "link.stl"
    link.symlink_to(target)
    assert hash_partial(job(link)).error_class == "OSError"  # ELOOP from O_NOFOLLOW
    assert hash_partial(job(link), follow_symlinks=True).ok


@pytest.mark.parametrize("processes", [0, 2])
def test_hash_table_gives_every_file_one_row_in_threads_or_helper_processes(tmp_path, processes):
    """The columnar path the stages use; with helper processes the answers are the same."""
    import pyarrow as pa

    from dam_dagster.core.hashing import hash_table

    paths, sizes, mtimes, ctimes = [], [], [], []
    for i in range(700):  # more than one batch
        path = tmp_path / f"f{i}"
        path.write_bytes(bytes([i % 256]) * (i * 37 + 1))
        st = path.stat()
        paths.append(str(path))
        sizes.append(st.st_size)
        mtimes.append(st.st_mtime_ns)
        ctimes.append(st.st_ctime_ns)
    paths.append(str(tmp_path / "missing"))
    sizes.append(5), mtimes.append(1), ctimes.append(2)
    jobs = pa.table({
        "file_id": list(range(len(paths))), "path": paths,
        "raw_path": pa.array([None] * len(paths), pa.binary()),
        "size_bytes": sizes, "mtime_ns": mtimes, "ctime_ns": ctimes,
    })  # fmt: skip
    got, failed, read = {}, [], []

    def take(rows, failures, nread):
        got.update((r[0], r) for r in rows)
        failed.extend(failures)
        read.append(nread)

    seen = []
    hash_table(jobs, "partial", 2, take, processes=processes, on_progress=seen.append)
    assert seen[-1].done == seen[-1].total == len(paths)
    assert len(got) == len(paths) and sum(read) == sum(sizes[:-1])
    for i in range(700):
        data = Path(paths[i]).read_bytes()
        assert got[i][6] == hashlib.md5(data).hexdigest()  # small files: full hash too
        assert got[i][5] == reference_partial(data)
    assert failed == [(paths[-1], "FileNotFoundError", got[700][9], False)]
