"""core/_fastio.c against the Python it stands in for: the same walk, field for field."""

import os

import pytest

from dam_dagster.core.walk import PathFilter, walk_library


def test_the_c_listing_and_os_scandir_walk_alike(hard_library, monkeypatch):
    """Every field of a walk of an awkward tree, listed in C and with os.scandir."""
    from dam_dagster.core import walk

    if walk._fastio is None:
        pytest.skip("dam_dagster.core._fastio is not built here (no C compiler at install)")
    lib = hard_library
    os.mkfifo(lib / "pipe.stl")
    (lib / "broken.stl").symlink_to(lib / "nowhere.stl")
    (lib / "alias.stl").symlink_to(lib / "big")
    (lib / ".DS_Store").write_bytes(b"x")
    (lib / "@eaDir").mkdir()
    (lib / "@eaDir" / "t.jpg").write_bytes(b"x")
    raw = os.fsencode(str(lib)) + b"/caf\xe9"
    os.mkdir(raw)
    with open(raw + b"/m\xff.stl", "wb") as fh:
        fh.write(b"model")

    def fields(result):
        return (
            sorted((f.path, f.size_bytes, f.mtime_ns, f.ctime_ns) for f in result.files),
            sorted(result.issues, key=lambda i: (i.path, i.kind)),
            sorted(result.listed),
            sorted(result.subfolders),
            (result.dirs, result.excluded, result.bytes_seen, sorted(result.unlisted_dirs)),
            sorted(result.raw.values()),
        )

    path_filter = PathFilter(exclude=["*.tmp"])
    in_c = fields(walk_library([lib], path_filter))
    monkeypatch.setattr(walk, "_fastio", None)
    assert fields(walk_library([lib], path_filter)) == in_c
    assert len(in_c[0]) > 10 and any(i.kind == "special_file" for i in in_c[1])


def _fastio_or_skip():
    from dam_dagster.core import walk

    if walk._fastio is None:
        pytest.skip("dam_dagster.core._fastio is not built here (no C compiler at install)")
    return walk._fastio


def test_a_path_too_long_for_the_system_is_the_same_issue_in_c_and_python(tmp_path, monkeypatch):
    """A file whose folder can be listed but whose whole path is PATH_MAX bytes or more: C
    could reach it relative to its folder, Python cannot; both say it cannot be examined."""
    from dam_dagster.core import hashing, walk

    fastio = _fastio_or_skip()
    lib = tmp_path / "lib"
    lib.mkdir()
    fd = os.open(lib, os.O_RDONLY)
    folder = str(lib)
    try:
        while len(folder) < 3800:  # folders of 200-byte names, made relative to each other
            name = "d" * 200
            os.mkdir(name, dir_fd=fd)
            fd, old = os.open(name, os.O_RDONLY, dir_fd=fd), fd
            os.close(old)
            folder += "/" + name
        name = "m" * 250 + ".stl"
        out = os.open(name, os.O_WRONLY | os.O_CREAT, dir_fd=fd)
        os.write(out, b"solid x\n")
        os.close(out)
    finally:
        os.close(fd)
    path = folder + "/" + name
    assert len(os.fsencode(path)) >= os.pathconf("/", "PC_PATH_MAX")

    def issues():
        result = walk_library([lib])
        return [f.path for f in result.files], [(i.path, i.kind) for i in result.issues]

    in_c = issues()
    assert in_c == ([], [(path, "error")])
    hashes, codes = fastio.prefix_hashes([path], [8], False, False)
    assert hashes == [None] and codes == [36]  # ENAMETOOLONG, as os.open says
    monkeypatch.setattr(walk, "_fastio", None)
    monkeypatch.setattr(hashing, "_fastio", None)
    assert issues() == in_c
    with pytest.raises(OSError) as python_says:
        os.open(path, os.O_RDONLY)
    assert python_says.value.errno == codes[0]


def test_a_bad_size_raises_and_leaks_nothing():
    import sys

    fastio = _fastio_or_skip()
    path = b"/no/such/" + b"x" * 20  # bytes of its own (a name that is not UTF-8 comes so)
    before = sys.getrefcount(path)
    for _ in range(100):
        with pytest.raises(TypeError):
            fastio.prefix_hashes([path], ["not a size"], False, False)
    assert sys.getrefcount(path) == before


def test_a_file_gone_before_its_lstat_is_vanished_in_python_too(tmp_path, monkeypatch):
    """On a filesystem that gives no entry types, os.scandir looks each name up itself, and a
    file removed between the listing and that lookup answers False to is_file, is_dir and
    is_symlink (its FileNotFoundError swallowed). The C listing gets ENOENT from its lstat
    and says `vanished`; the Python listing said `special_file`. The race cannot be made on
    demand here, so os.scandir gives such an entry beside a real one."""
    import errno as errno_

    from dam_dagster.core import walk

    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "kept.stl").write_bytes(b"solid")
    real_scandir = os.scandir

    class Gone:
        name = "gone.stl"
        path = str(lib / "gone.stl")

        def is_file(self, follow_symlinks=True):
            return False

        is_dir = is_file

        def is_symlink(self):
            return False

        def stat(self, follow_symlinks=True):
            raise FileNotFoundError(errno_.ENOENT, "No such file or directory", self.path)

    class Listing:
        def __init__(self, folder):
            self.entries = [*real_scandir(folder), Gone()]

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(walk, "_fastio", None)
    monkeypatch.setattr(walk.os, "scandir", Listing)
    result = walk_library([lib], PathFilter())
    assert [f.path for f in result.files] == [str(lib / "kept.stl")]
    assert [(i.path, i.kind) for i in result.issues] == [(str(lib / "gone.stl"), "vanished")]
