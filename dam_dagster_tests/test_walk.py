"""Walking: every awkward thing a library folder holds becomes a record, never a crash."""

import json
import os
from pathlib import Path

import pytest

from dam_dagster.core.walk import PathFilter, RootUnavailable, check_roots, walk_library

from .conftest import run_unprivileged


@pytest.fixture(autouse=True, params=["C", "Python"])
def impl(request, monkeypatch):
    """Every test here walks twice: folders listed in C (core/_fastio.c) and with os.scandir
    (where no compiler built the C module)."""
    from dam_dagster.core import walk

    if request.param == "C" and walk._fastio is None:
        pytest.skip("dam_dagster.core._fastio is not built here (no C compiler at install)")
    if request.param == "Python":
        monkeypatch.setattr(walk, "_fastio", None)
    return request.param


def rels(result):
    return sorted(f.rel_path for f in result.files)


def kinds(result):
    return {(os.path.basename(i.path), i.kind) for i in result.issues}


def test_default_excludes_skip_nas_and_os_litter(tmp_path):
    for rel in [
        "a.stl",
        ".git/objects/x",
        "@eaDir/a.stl/SYNOFILE_THUMB_M.jpg",
        ".DS_Store",
        "sub/Thumbs.db",
        "sub/._a.stl",
        "sub/b.3mf",
        "#recycle/old.stl",
    ]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    result = walk_library([tmp_path])
    assert rels(result) == ["a.stl", "sub/b.3mf"]
    assert result.excluded == 6


def test_include_and_exclude_patterns(tmp_path):
    for rel in ["a.STL", "b.3mf", "c.txt", "wip/d.stl", "keep/e.stl"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    result = walk_library([tmp_path], PathFilter(include=["*.stl", "*.3mf"], exclude=["wip"]))
    assert rels(result) == ["a.STL", "b.3mf", "keep/e.stl"]  # case-insensitive


def test_symlinks_broken_looping_and_not_followed(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "m.stl").write_bytes(b"abc")
    (tmp_path / "broken.stl").symlink_to(tmp_path / "nowhere.stl")
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    (tmp_path / "real" / "up").symlink_to(tmp_path)  # a link to an ancestor
    (tmp_path / "alias.stl").symlink_to(tmp_path / "real" / "m.stl")

    default = walk_library([tmp_path])
    assert rels(default) == ["real/m.stl"]
    assert {
        ("broken.stl", "broken_symlink"),
        ("loop_a", "symlink_loop"),
        ("loop_b", "symlink_loop"),
        ("up", "symlink_skipped"),
        ("alias.stl", "symlink_skipped"),
    } <= kinds(default)

    followed = walk_library([tmp_path], follow_symlinks=True)
    assert rels(followed) == ["alias.stl", "real/m.stl"]  # the ancestor loop is not walked
    assert ("up", "symlink_loop") in kinds(followed) or any(
        i.kind == "symlink_loop" and i.path.endswith("/up") for i in followed.issues
    )


def test_fifo_and_undecodable_names(tmp_path):
    os.mkfifo(tmp_path / "pipe.stl")
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.stl"  # Latin-1, not UTF-8
    with open(raw, "wb") as fh:
        fh.write(b"model")
    result = walk_library([tmp_path])
    assert ("pipe.stl", "special_file") in kinds(result)
    assert [f.size_bytes for f in result.files] == [5]
    assert os.fsencode(result.files[0].path) == raw  # the exact bytes survive
    assert any(
        i.kind == "undecodable_name" and i.path.endswith("caf\\xe9.stl") for i in result.issues
    )


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(RootUnavailable, match="does not exist"):
        check_roots([tmp_path / "not-mounted"])
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(RootUnavailable, match="not a folder"):
        walk_library([tmp_path / "file"])


def test_unreadable_folder_is_recorded_not_fatal(shared_tmp, impl):
    lib = shared_tmp / "lib"
    (lib / "open").mkdir(parents=True)
    (lib / "open" / "a.stl").write_bytes(b"a")
    (lib / "locked").mkdir()
    (lib / "locked" / "b.stl").write_bytes(b"b")
    lib.chmod(0o755)
    (lib / "open").chmod(0o755)
    (lib / "open" / "a.stl").chmod(0o644)
    (lib / "locked").chmod(0o000)
    # a folder that can be listed but not entered: its names, but no stat of them
    (lib / "listable").mkdir()
    (lib / "listable" / "c.stl").write_bytes(b"c")
    (lib / "listable" / "d.txt").write_bytes(b"d")
    (lib / "listable").chmod(0o444)
    code = f"""
import json
from dam_dagster.core import walk
from dam_dagster.core.walk import PathFilter, walk_library
if {impl == "Python"}:
    walk._fastio = None
r = walk_library([{str(lib)!r}])
only = walk_library([{str(lib)!r}], PathFilter(["*.stl"]))
print(json.dumps({{"files": [f.rel_path for f in r.files],
                   "issues": [[i.path, i.kind] for i in r.issues],
                   "unlisted": r.unlisted_dirs,
                   "stl_issues": sorted(i.path for i in only.issues),
                   "stl_excluded": only.excluded}}))
"""
    proc = run_unprivileged(code)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["files"] == ["open/a.stl"]
    assert [str(lib / "locked"), "permission_denied"] in out["issues"]
    assert [str(lib / "listable" / "c.stl"), "permission_denied"] in out["issues"]
    assert out["unlisted"] == [str(lib / "locked")]
    # with an include filter, a file it leaves out is not an issue, only excluded
    assert out["stl_issues"] == sorted([str(lib / "locked"), str(lib / "listable" / "c.stl")])
    assert out["stl_excluded"] == 1  # listable/d.txt


def test_walk_writes_nothing(tmp_path, hard_library):
    from .conftest import snapshot

    before = snapshot(hard_library)
    walk_library([hard_library])
    assert snapshot(hard_library) == before
    assert Path(hard_library).exists()


def test_threaded_walk_finds_the_same_as_one_thread(hard_library):
    (hard_library / "links").mkdir()
    (hard_library / "links" / "up").symlink_to(hard_library)
    for follow in (False, True):
        one = walk_library([hard_library], follow_symlinks=follow, threads=1)
        many = walk_library([hard_library], follow_symlinks=follow, threads=6)
        assert sorted(one.files, key=lambda f: f.path) == sorted(many.files, key=lambda f: f.path)
        assert sorted(one.issues, key=lambda i: i.path) == sorted(many.issues, key=lambda i: i.path)
        assert one.dirs == many.dirs


def test_network_filesystems_get_the_io_threads(tmp_path, monkeypatch):
    from dam_dagster.core import dedup, walk
    from dam_dagster.core.config import cpu_count
    from dam_dagster.core.dedup import prefix_threads

    local = walk.filesystem_type(tmp_path)
    assert local and walk.filesystem_type("/proc") == "proc"
    assert walk.walk_threads([tmp_path], 8) == 1
    # in C the prefix reads hold no GIL: every io thread, a local disk too
    monkeypatch.setattr(dedup, "hashing_in_c", lambda: True)
    assert prefix_threads([str(tmp_path)], 8) == 8
    # in Python one a CPU (at least two)
    monkeypatch.setattr(dedup, "hashing_in_c", lambda: False)
    assert prefix_threads([str(tmp_path)], 8) == min(8, max(2, cpu_count()))
    assert prefix_threads([str(tmp_path)], 1) == 1
    monkeypatch.setattr(walk, "NETWORK_FILESYSTEMS", frozenset({local}))
    assert walk.walk_threads([tmp_path], 8) == 8
    assert prefix_threads([str(tmp_path)], 8) == 8
