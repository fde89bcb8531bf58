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


M64 = (1 << 64) - 1
P1, P2, P3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
P4, P5 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5


def reference_xxh64(data: bytes, seed: int = 0) -> str:
    """XXH64 as its specification states it (github.com/Cyan4973/xxHash, doc/xxhash_spec.md),
    written without the library the code uses: the prefix hash of docs/HASHING.md."""
    rotl = lambda x, r: ((x << r) | (x >> (64 - r))) & M64  # noqa: E731
    u64 = lambda i: int.from_bytes(data[i : i + 8], "little")  # noqa: E731

    def round_(acc, lane):
        return rotl((acc + lane * P2) & M64, 31) * P1 & M64

    n, i = len(data), 0
    if n >= 32:
        v = [(seed + P1 + P2) & M64, (seed + P2) & M64, seed, (seed - P1) & M64]
        while i + 32 <= n:
            v = [round_(v[k], u64(i + 8 * k)) for k in range(4)]
            i += 32
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & M64
        for lane in v:
            h = ((h ^ round_(0, lane)) * P1 + P4) & M64
    else:
        h = (seed + P5) & M64
    h = (h + n) & M64
    while i + 8 <= n:
        h = (rotl(h ^ round_(0, u64(i)), 27) * P1 + P4) & M64
        i += 8
    if i + 4 <= n:
        h = (rotl(h ^ (int.from_bytes(data[i : i + 4], "little") * P1 & M64), 23) * P2 + P3) & M64
        i += 4
    while i < n:
        h = rotl(h ^ (data[i] * P5 & M64), 11) * P1 & M64
        i += 1
    for shift, prime in ((33, P2), (29, P3)):
        h = (h ^ (h >> shift)) * prime & M64
    return f"{h ^ (h >> 32):016x}"


def test_the_reference_xxh64_is_the_specification():
    assert reference_xxh64(b"") == "ef46db3751d8e999"  # the specification's empty input


def _c_module():
    from dam_dagster.core import hashing

    if hashing._fastio is None:
        pytest.skip("dam_dagster.core._fastio is not built here (no C compiler at install)")
    return hashing._fastio


def test_the_c_xxh64_is_the_specification():
    fastio = _c_module()
    data = random.Random(7).randbytes(300)
    for n in [*range(0, 70), 100, 255, 256, 299]:
        assert fastio.xxh64_hex(data[:n]) == reference_xxh64(data[:n]), n


@pytest.mark.parametrize("in_c", [True, False], ids=["C", "Python"])
def test_the_prefix_pass_hashes_the_documented_bytes_and_records_every_failure(
    tmp_path, monkeypatch, in_c
):
    """The prefix pass of a batch (the loop every first run goes through, in C where it was
    built and in Python otherwise): XXH64 of the first min(size, 4 KiB) bytes and the state
    the walk saw, or an error outcome per file; both give the same outcomes."""
    from dam_dagster.core import hashing
    from dam_dagster.core.hashing import hash_columns

    if in_c:
        _c_module()
    else:
        monkeypatch.setattr(hashing, "prefix_hashes", hashing._prefix_hashes_py)

    paths, states, expected = [], [], {}
    for i, size in enumerate([1, 31, 32, 33, 4095, 4096, 4097, 100_000]):
        data = random.Random(size).randbytes(size)
        path = tmp_path / f"f{i}.stl"
        path.write_bytes(data)
        st = path.stat()
        paths.append(str(path))
        states.append((st.st_size, st.st_mtime_ns, st.st_ctime_ns))  # as the walk saw them
        expected[i] = reference_xxh64(data[: 4 * K])
    shorter = tmp_path / "shorter.stl"  # shorter than the walk saw it
    shorter.write_bytes(b"x" * 100)
    os.mkfifo(tmp_path / "pipe.stl")  # a FIFO where the walk saw a file
    (tmp_path / "link.stl").symlink_to(paths[0])  # a link (not followed)
    (tmp_path / "folder.stl").mkdir()  # a folder
    odd = [tmp_path / n for n in ("gone.stl", "shorter.stl", "pipe.stl", "link.stl", "folder.stl")]
    paths += [str(p) for p in odd]
    states += [(9, 1, 2), (200, 1, 2), (9, 1, 2), (9, 1, 2), (9, 1, 2)]
    n = len(paths)
    sizes, mtimes, ctimes = (list(c) for c in zip(*states))
    columns = (list(range(n)), paths, [None] * n, sizes, mtimes, ctimes,
               [None] * n, [None] * n, [None] * n)  # fmt: skip
    for advise in (False, True):
        outcomes, failures, read = hash_columns("prefix", False, columns, advise)
        rows = {r[0]: r for r in zip(*outcomes)}
        assert len(rows) == n
        for i, prefix in expected.items():
            size = states[i][0]
            assert rows[i][1:8] == (*states[i], prefix, None, None, min(size, 4 * K))
        assert read == sum(min(s[0], 4 * K) for s in states[: len(expected)])
        assert [(f[0], f[1]) for f in failures] == [
            (str(odd[0]), "FileNotFoundError"), (str(odd[1]), "ChangedDuringRead"),
            (str(odd[2]), "NotARegularFile"), (str(odd[3]), "OSError"),
            (str(odd[4]), "NotARegularFile"),
        ]  # fmt: skip
        for i in range(len(expected), n):  # the walk's state, no hash, permanent
            assert rows[i][1:4] == states[i] and rows[i][4] is None and rows[i][10] is False


@pytest.mark.parametrize("in_c", [True, False], ids=["C", "Python"])
def test_a_batch_with_an_unreadable_file_is_read_once(tmp_path, monkeypatch, in_c):
    """hash_table's prefix path: a batch where one file cannot be read gets its outcomes
    row by row from the answers it has, without reading the batch's files again."""
    import pyarrow as pa

    from dam_dagster.core import hashing

    asked = []

    def counting(paths, *args):  # the real loop, the paths of each call counted
        asked.extend(paths)
        return real(paths, *args)

    real = _c_module().prefix_hashes if in_c else hashing._prefix_hashes_py
    monkeypatch.setattr(hashing, "prefix_hashes", counting)
    paths = []
    for i in range(50):
        (tmp_path / f"f{i}.stl").write_bytes(b"solid %d\n" % i)
        paths.append(str(tmp_path / f"f{i}.stl"))
    paths.insert(20, str(tmp_path / "gone.stl"))
    sizes = [os.path.getsize(p) if os.path.exists(p) else 9 for p in paths]
    jobs = pa.table({
        "file_id": list(range(len(paths))), "path": paths,
        "raw_path": pa.array([None] * len(paths), pa.binary()),
        "size_bytes": sizes, "mtime_ns": [1] * len(paths), "ctime_ns": [2] * len(paths),
    })  # fmt: skip
    got, failed = {}, []

    def take(outcomes, failures, nread):
        got.update((r[0], r) for r in zip(*outcomes))
        failed.extend(failures)

    hashing.hash_table(jobs, "prefix", 1, take)
    assert sorted(asked) == sorted(paths)  # every file asked for once
    assert [(f[0], f[1]) for f in failed] == [(paths[20], "FileNotFoundError")]
    for i, path in enumerate(paths):
        if i != 20:
            assert got[i][4] == reference_xxh64(open(path, "rb").read())


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

    def take(outcomes, failures, nread):
        got.update((r[0], r) for r in zip(*outcomes))
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
