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
