"""The test share (dam_dagster_tests/slowshare.py): a real FUSE mount that behaves like a NAS.

Each test mounts a small folder through the `slow_share` fixture (skipped, saying why, where
FUSE cannot mount) and checks one promise the benchmarks rely on: the same files and bytes as
the source, latency really added per metadata request, one capped link for all reads, nothing
writable, and dam's answer through it the same as a brute-force answer on the source.
"""

import errno
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dam_dagster.core.store import Catalogue
from dam_dagster.core.walk import filesystem_type, on_network_filesystem

from .conftest import brute_force_groups, snapshot
from .test_cli import dam


def _tree(root: Path) -> dict[str, tuple]:
    """Every entry under root, relative: type, size, mtime, content hash or link target."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir", st.st_mode & 0o7777)
            else:
                with open(path, "rb") as fh:
                    digest = hashlib.md5(fh.read()).hexdigest()
                out[rel] = ("file", st.st_size, st.st_mtime_ns, st.st_mode & 0o7777, digest)
    return out


def _source(root: Path) -> Path:
    (root / "prints" / "dragon").mkdir(parents=True)
    (root / "prints" / "dragon" / "dragon.stl").write_bytes(os.urandom(300_000))
    (root / "prints" / "empty.stl").write_bytes(b"")
    (root / "ünïcödé model.3mf").write_bytes(b"PK\x03\x04" + os.urandom(5000))
    (root / "empty folder").mkdir()
    (root / "deep" / "a" / "b" / "c").mkdir(parents=True)
    (root / "deep" / "a" / "b" / "c" / "part.obj").write_text("v 0 0 0\n" * 1000)
    os.symlink("prints/dragon/dragon.stl", root / "link to dragon.stl")
    with open(os.fsencode(root) + b"/bad name \xff.stl", "wb") as fh:  # not valid UTF-8
        fh.write(b"solid x\nendsolid x\n")
    return root


def test_the_share_shows_the_same_files_and_bytes_as_its_source(slow_share, tmp_path):
    source = _source(tmp_path / "source")
    share = slow_share(source, latency_ms=0.2)
    assert filesystem_type(share.path) == "fuse.slowshare"
    assert on_network_filesystem([share.path])  # dam treats it as a network share
    expected = _tree(source)
    assert len(expected) == 13
    assert _tree(share.path) == expected


def test_every_metadata_request_pays_the_latency(slow_share, tmp_path):
    source = tmp_path / "source"
    for folder, count in (("listed", 20), ("unlisted", 25)):
        (source / folder).mkdir(parents=True)
        for i in range(count):
            (source / folder / f"f{i}.stl").write_bytes(b"x" * i)
    for i in range(40):
        (source / "many" / f"d{i}").mkdir(parents=True)
        (source / "many" / f"d{i}" / "part.stl").write_bytes(b"y")
    latency_s = 0.02
    share = slow_share(source, latency_ms=latency_s * 1000, attr_timeout_s=60)
    root = share.path
    os.listdir(root)
    os.listdir(root / "many")

    # a listing carries its entries' attributes: stats right after it cost no round trip
    names = os.listdir(root / "listed")
    assert sorted(os.stat(root / "listed" / n).st_size for n in names) == list(range(20))

    # 25 names the client has not seen: one lookup each, one after the other
    started = time.perf_counter()
    for i in range(25):
        assert os.stat(root / "unlisted" / f"f{i}.stl").st_size == i
    assert time.perf_counter() - started >= 25 * latency_s

    # the server answers several requests at once, as a NAS does
    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(lambda i: os.stat(root / "many" / f"d{i}" / "part.stl"), range(40)))
    assert {s.st_size for s in sizes} == {1}

    share.unmount()
    stats = share.stats
    lookups = stats.requests["lookup/getattr"]
    assert 25 + 40 <= lookups < 25 + 40 + 20  # the 20 listed entries were not looked up
    assert stats.requests["readdir"] >= 3  # one reply per folder here (the end is free)
    assert stats.max_in_flight >= 2
    assert stats.latency_s >= sum(stats.requests.values()) * latency_s * 0.99


def test_all_reads_share_one_capped_link(slow_share, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    data = [os.urandom(3_000_000), os.urandom(3_000_000)]
    for i, blob in enumerate(data):
        (source / f"model{i}.stl").write_bytes(blob)
    cap_mb_s = 20.0
    share = slow_share(source, latency_ms=0.5, read_mb_s=cap_mb_s)

    def read(i: int) -> bytes:
        return (share.path / f"model{i}.stl").read_bytes()

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:  # two readers still share one link
        assert list(pool.map(read, range(2))) == data
    elapsed = time.perf_counter() - started
    rate_mb_s = 6.0 / elapsed
    assert rate_mb_s <= cap_mb_s * 1.05, f"{rate_mb_s:.1f} MB/s through a {cap_mb_s} MB/s cap"
    assert rate_mb_s >= cap_mb_s / 4, f"only {rate_mb_s:.1f} MB/s through a {cap_mb_s} cap"

    share.unmount()
    assert share.stats.read_bytes >= 6_000_000
    assert share.stats.link_busy_s >= 6.0 / cap_mb_s * 0.99
    assert share.stats.requests["open"] == 2


def test_nothing_can_be_written_through_the_share(slow_share, tmp_path):
    source = _source(tmp_path / "source")
    before = snapshot(source)
    root = str(slow_share(source, latency_ms=0.2).path)
    model, folder = root + "/prints/dragon/dragon.stl", root + "/prints"
    attempts = {
        "open for writing": lambda: os.open(model, os.O_WRONLY),
        "open read-write": lambda: os.open(model, os.O_RDWR),
        "open to append": lambda: os.open(model, os.O_WRONLY | os.O_APPEND),
        "open truncating": lambda: os.open(model, os.O_RDONLY | os.O_TRUNC),
        "create": lambda: os.open(folder + "/new.stl", os.O_WRONLY | os.O_CREAT, 0o644),
        "mkdir": lambda: os.mkdir(folder + "/new"),
        "rmdir": lambda: os.rmdir(root + "/empty folder"),
        "unlink": lambda: os.unlink(model),
        "rename": lambda: os.rename(model, folder + "/moved.stl"),
        "chmod": lambda: os.chmod(model, 0o777),
        "chown": lambda: os.chown(model, 1, 1),
        "utime": lambda: os.utime(model, (0, 0)),
        "truncate": lambda: os.truncate(model, 0),
        "symlink": lambda: os.symlink("dragon.stl", folder + "/l"),
        "hard link": lambda: os.link(model, folder + "/h"),
        "setxattr": lambda: os.setxattr(model, "user.dam", b"1"),
        "mkfifo": lambda: os.mkfifo(folder + "/fifo"),
    }
    refused = {}
    for what, attempt in attempts.items():
        try:
            attempt()
            refused[what] = "SUCCEEDED"
        except OSError as exc:
            refused[what] = errno.errorcode.get(exc.errno, str(exc.errno))
    assert refused == dict.fromkeys(attempts, "EROFS")
    assert snapshot(source) == before


def test_dam_run_behind_the_share_finds_what_brute_force_finds_on_the_source(
    slow_share, hard_library, tmp_path
):
    share = slow_share(hard_library, latency_ms=1, read_mb_s=110, read_latency_ms=1)
    env = {"DAM_LIBRARY_ROOTS": str(share.path), "DAM_DATA_DIR": str(tmp_path / "data")}
    run = dam("run", "--skip-thumbnails", env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    groups = json.loads(dam("duplicates", "--format", "json", env=env, cwd=tmp_path).stdout)
    share.unmount()

    def relative(paths, root) -> list[str]:
        return sorted(os.path.relpath(p, root) for p in paths)

    expected = {h: relative(g, hard_library) for h, g in brute_force_groups(hard_library).items()}
    assert len(expected) >= 5
    found = {
        g["full_hash"]: relative([g["original"], *g["duplicates"]], share.path) for g in groups
    }
    assert found == expected
    with Catalogue(tmp_path / "data").connect(write=False) as con:
        files = con.execute("SELECT count(*) FROM present_files").fetchone()[0]
    assert files == sum(1 for p in hard_library.rglob("*") if p.is_file())
    stats = share.stats  # the reading went through the share
    assert stats.requests["open"] >= 10 and stats.read_bytes > 0


def test_the_small_reads_fetch_only_what_they_ask_for(slow_share, tmp_path, monkeypatch):
    from dam_dagster.core import hashing

    source = tmp_path / "source"
    source.mkdir()
    for i in range(20):
        (source / f"model{i}.stl").write_bytes(os.urandom(1_000_000))

    def prefix_pass(advice: bool):
        monkeypatch.setattr(hashing, "SMALL_READ_ADVICE", advice)
        share = slow_share(source, latency_ms=0.2)
        jobs = [hashing.HashJob(i, str(share.path / f"model{i}.stl"), 0, 0) for i in range(20)]
        outcomes = [hashing.hash_prefix(job) for job in jobs]
        share.unmount()
        assert all(o.ok and o.bytes_read == hashing.PREFIX_BYTES for o in outcomes)
        return share.stats

    advised = prefix_pass(True)  # POSIX_FADV_RANDOM: one 4 KiB request per file
    assert advised.read_bytes == 20 * hashing.PREFIX_BYTES
    assert advised.requests["read"] == 20
    unadvised = prefix_pass(False)  # the kernel's readahead fetches more than asked for
    assert unadvised.read_bytes > 2 * advised.read_bytes


def test_the_prefix_pass_opens_no_folder_on_the_share(slow_share, tmp_path):
    """The prefix pass in C opens each file relative to its folder; the folder is only looked
    up (O_PATH), not opened: an open folder is an OPENDIR round trip on a share, one per
    folder (7,516 more requests for the 34,249-file benchmark library before). The Python
    loop opens whole paths. Both: one open per file and no folder opened."""
    from dam_dagster.core import hashing

    source = tmp_path / "source"
    for f in range(6):
        (source / f"folder {f}").mkdir(parents=True)
        for i in range(3):
            (source / f"folder {f}" / f"model{i}.stl").write_bytes(os.urandom(10_000))
    loops = {"Python": hashing._prefix_hashes_py}
    if hashing.hashing_in_c():
        loops["C"] = hashing.prefix_hashes
    answers = {}
    for name, loop in loops.items():
        share = slow_share(source, latency_ms=0.2)
        paths = [str(share.path / p.relative_to(source)) for p in sorted(source.rglob("*.stl"))]
        answers[name] = loop(paths, [10_000] * len(paths), False, True)
        share.unmount()
        assert share.stats.requests["open"] == 18, name
        assert share.stats.requests.get("opendir", 0) == 0, (name, share.stats.requests)
    hashes, codes = answers["Python"]
    assert codes == [0] * 18 and len(set(hashes)) == 18
    assert all(a == answers["Python"] for a in answers.values())
