"""Shared fixtures: real files, real catalogues, and an independent brute-force answer."""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

from dam_dagster.core import dedup
from dam_dagster.core.config import SETTING_NAMES
from dam_dagster.core.inventory import update_inventory
from dam_dagster.core.store import Catalogue

PROJECT = Path(__file__).resolve().parents[1]


def _find_corpus() -> Path:
    """The shared model corpus: $DAM_TEST_CORPUS, else `shared/corpus/trimesh-models` beside
    the project or beside any folder above it (a clone may sit deeper than the checkout)."""
    if os.environ.get("DAM_TEST_CORPUS"):
        return Path(os.environ["DAM_TEST_CORPUS"])
    candidates = [up / "shared" / "corpus" / "trimesh-models" for up in PROJECT.parents]
    return next((c for c in candidates if c.is_dir()), candidates[0])


CORPUS = _find_corpus()
BIN = Path(sys.executable).parent


def pytest_addoption(parser):
    parser.addoption(
        "--catalogue",
        choices=("duckdb", "postgres"),
        default="duckdb",
        help="the catalogue backend every test's catalogue uses: the DuckDB file (default) or "
        "a PostgreSQL server the session starts (DAM_CATALOGUE_URL, a database per test); "
        "`make test` runs the tests marked catalogue_contract on both",
    )


@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL server for the session (dam_dagster_tests/cluster.py); the
    tests that need it skip, saying why, where none can start."""
    from dam_dagster_tests.cluster import ServerUnavailable, postgres

    try:
        with postgres() as server:
            yield server
    except ServerUnavailable as exc:
        pytest.skip(f"no PostgreSQL server could be started here: {exc}")


@pytest.fixture(scope="session")
def _catalogue_server(request):
    """The session's PostgreSQL server when --catalogue=postgres (else None)."""
    if request.config.getoption("--catalogue") != "postgres":
        return None
    return request.getfixturevalue("postgres_server")


_databases = iter(range(1, 1_000_000))


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path, _catalogue_server):
    """No test sees the developer's DAM_* settings or Dagster home. With --catalogue=postgres
    every test gets a new, empty PostgreSQL database as its DAM_CATALOGUE_URL (processes the
    test starts inherit it)."""
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    if _catalogue_server is not None:
        name = f"dam_test_{os.getpid()}_{next(_databases)}"
        monkeypatch.setenv("DAM_CATALOGUE_URL", _catalogue_server.database(name))


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"the shared model corpus is not at {CORPUS} (set DAM_TEST_CORPUS)")
    return CORPUS


@pytest.fixture
def catalogue(tmp_path) -> Catalogue:
    return Catalogue(tmp_path / "data", lock_timeout_s=30)


def run_chain(catalogue: Catalogue, roots, **kw) -> dict:
    """The whole dedup chain through the core stages, in order; returns each stage's stats."""
    follow = kw.pop("follow_symlinks", False)
    stats = {
        "inventory": update_inventory(
            catalogue, [Path(r) for r in roots], kw.pop("path_filter", None), follow
        )
    }
    stats["partial"] = dedup.update_partial_hashes(catalogue, follow_symlinks=follow, **kw)
    stats["candidates"] = dedup.update_collision_candidates(catalogue)
    stats["full"] = dedup.update_full_hashes(catalogue, follow_symlinks=follow)
    stats["duplicates"] = dedup.update_duplicates(catalogue)
    return stats


def brute_force_groups(root: Path, members: bool = True) -> dict[str, list[str]]:
    """MD5 of every non-empty regular file, read whole, and (as the catalogue counts them)
    of every file inside a zip, extracted in memory ('<zip>!/<member>'); groups of two or
    more."""
    import zipfile

    by_hash = defaultdict(list)
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            if os.path.getsize(path) == 0:
                continue
            with open(path, "rb") as fh:
                by_hash[hashlib.md5(fh.read()).hexdigest()].append(path)
            if not (members and name.lower().endswith(".zip")):
                continue
            try:
                with zipfile.ZipFile(path) as z:
                    for info in z.infolist():
                        parts = info.filename.split("/")
                        if info.is_dir() or info.file_size == 0 or "__MACOSX" in parts:
                            continue
                        if any(p.startswith("._") for p in parts) or info.flag_bits & 1:
                            continue
                        digest = hashlib.md5(z.read(info)).hexdigest()
                        by_hash[digest].append(f"{path}!/{info.filename}")
            except zipfile.BadZipFile:
                continue
    return {h: sorted(p) for h, p in by_hash.items() if len(p) > 1}


def catalogue_groups(catalogue: Catalogue) -> dict[str, list[str]]:
    return {
        g.full_hash: sorted([g.original, *g.duplicates]) for g in dedup.duplicate_groups(catalogue)
    }


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root with its type, size, mtime and content hash."""
    state = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest = None
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as fh:
                    digest = hashlib.md5(fh.read()).hexdigest()
            state[path] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return state


def _random(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def make_hard_cases(root: Path) -> Path:
    """A tree with every case a duplicate finder gets wrong, and some it should skip."""

    def put(rel: str, data: bytes) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    k = 1024
    model = _random(200 * k, 1)
    put("prints/dragon.stl", model)  # identical files, other folders
    put("backup/old/dragon copy.stl", model)
    put("backup/dragon.stl", model)  # a group of three
    head, tail = _random(64 * k, 2), _random(64 * k, 3)
    put("decoys/a.stl", head + _random(100 * k, 4) + tail)  # same size, head and tail,
    put("decoys/b.stl", head + _random(100 * k, 5) + tail)  # different middle
    put("small/readme.txt", b"x" * 1000)  # small duplicates
    put("small/readme (1).txt", b"x" * 1000)
    put("small/other.txt", b"y" * 1000)  # same size, other content
    put("edge/exact_128k_a.bin", _random(128 * k, 6))  # the small-file boundary
    put("edge/exact_128k_b.bin", (root / "edge/exact_128k_a.bin").read_bytes())
    put("edge/exact_128k_c.bin", _random(128 * k, 7))
    put("edge/over_128k_a.bin", _random(128 * k + 1, 8))
    put("edge/over_128k_b.bin", (root / "edge/over_128k_a.bin").read_bytes())
    put("edge/exact_64k_a.bin", _random(64 * k, 9))
    put("edge/exact_64k_b.bin", _random(64 * k, 10))
    big = _random(3 * k * k + 17, 11)
    put("big/part.3mf", big)
    put("big/part (2).3mf", big)
    put("empty/zero1.stl", b"")  # empty files are never grouped
    put("empty/zero2.stl", b"")
    put("empty/deeper/zero3.obj", b"")
    for i in range(5):  # unique sizes: never read
        put(f"unique/u{i}.ply", _random(10 * k + i * 7, 20 + i))
    put("names/ünïcödé model.stl", model[: 50 * k])
    put("names/with space.stl", model[: 50 * k])
    return root


@pytest.fixture
def hard_library(tmp_path) -> Path:
    return make_hard_cases(tmp_path / "library")


# --- running without root's privileges ----------------------------------------------------
@pytest.fixture
def shared_tmp():
    """A temp folder for tests that change permissions, cleaned up whatever they did."""
    path = Path(tempfile.mkdtemp(prefix="dam-test-"))
    yield path
    subprocess.run(["chmod", "-R", "u+rwx", str(path)], check=False)
    shutil.rmtree(path, ignore_errors=True)


# CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH let root read any file whatever its mode; CI runs
# as root, so tests of unreadable files drop them for the child process (prctl
# PR_CAPBSET_DROP before exec) and root then meets permission bits like anyone else.
_PR_CAPBSET_DROP = 24
_DAC_CAPS = (1, 2)


def _drop_dac_capabilities() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in _DAC_CAPS:
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_unprivileged(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run Python code in a child that cannot override file permissions."""
    kwargs = {"preexec_fn": _drop_dac_capabilities} if os.geteuid() == 0 else {}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        **kwargs,
    )


# --- a library on a slow share (dam_dagster_tests/slowshare.py) ---------------------------
@pytest.fixture
def slow_share(tmp_path):
    """Mount folders as slow shares: `slow_share(source, latency_ms=1, read_mb_s=110)` returns
    a mounted `SlowShare` (its `.path`; `.stats` once unmounted). Every share is unmounted at
    the end, whatever the test did. Skips, saying why, where FUSE cannot mount."""
    from .slowshare import ShareUnavailable, SlowShare

    shares = []

    def mount(source, **options):
        share = SlowShare(source, tmp_path / f"share-{len(shares)}", **options)
        shares.append(share)
        try:
            return share.mount()
        except ShareUnavailable as exc:
            pytest.skip(f"FUSE cannot mount a test share here: {exc}")

    yield mount
    for share in shares:
        share.close()
