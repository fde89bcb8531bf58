"""The members of zip files are files of the catalogue: listed from the central directory,
hashed from their inflated bytes (nothing extracted to disk), deduplicated with loose files,
followed when their archive changes or goes, and their failures recorded."""

import hashlib
import io
import os
import shutil
import zipfile

import pytest

from dam_dagster.core import dedup
from dam_dagster.core.inventory import update_inventory

from .conftest import brute_force_groups, run_chain, snapshot

MODELS = ["box.STL", "torus.STL", "fuze.obj", "bunny.ply", "Duck.glb", "featuretype.3MF"]


def member_truth(lib) -> dict[str, str]:
    """MD5 of every file, members included, by their catalogue path (brute force: read
    every member whole)."""
    truth = {}
    for dirpath, _dirs, files in os.walk(lib):
        for name in files:
            path = os.path.join(dirpath, name)
            data = open(path, "rb").read()
            truth[path] = hashlib.md5(data).hexdigest()
            if name.lower().endswith(".zip"):
                with zipfile.ZipFile(path) as z:
                    for info in z.infolist():
                        if not info.is_dir() and not info.filename.startswith("__MACOSX"):
                            member = z.read(info)
                            truth[f"{path}!/{info.filename}"] = hashlib.md5(member).hexdigest()
    return truth


def groups_with_members(truth: dict[str, str]) -> dict[str, list[str]]:
    by_hash: dict[str, list[str]] = {}
    for path, md5 in truth.items():
        if md5 != hashlib.md5(b"").hexdigest():
            by_hash.setdefault(md5, []).append(path)
    return {h: sorted(p) for h, p in by_hash.items() if len(p) > 1}


@pytest.fixture
def zipped_library(corpus, tmp_path):
    lib = tmp_path / "lib"
    (lib / "loose").mkdir(parents=True)
    for name in MODELS[:3]:
        shutil.copy(corpus / name, lib / "loose" / name)
    with zipfile.ZipFile(lib / "download.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for name in MODELS:
            z.write(corpus / name, f"parts/{name}")
        z.writestr("readme.txt", "print at 0.2 mm")
        z.writestr("__MACOSX/parts/._box.STL", b"\0" * 120)  # macOS litter: not catalogued
    with zipfile.ZipFile(lib / "stored.zip", "w", zipfile.ZIP_STORED) as z:
        z.write(corpus / "torus.STL", "torus again.STL")
    shutil.copy(corpus / "off.zip", lib / "off.zip")  # a real zip from elsewhere
    return lib


def test_every_member_is_a_row_with_the_hashes_of_its_bytes(zipped_library, catalogue):
    before = snapshot(zipped_library)
    run_chain(catalogue, [zipped_library], hash_all_sizes=True)
    truth = member_truth(zipped_library)
    with catalogue.connect(write=False) as con:
        rows = con.execute("""
            SELECT f.path, f.member, a.path, f.size_bytes, h.full_hash, h.partial_hash
            FROM library_files l JOIN file_inventory f ON f.file_id = l.id
            LEFT JOIN file_inventory a ON a.file_id = f.archive_id
            LEFT JOIN partial_hashes h ON h.file_id = f.file_id""").fetchall()
    catalogued = {r[0]: r for r in rows}
    assert set(catalogued) == set(truth)  # one row per file and per member, no litter
    members = [r for r in rows if r[1] is not None]
    assert len(members) == 7 + 1 + 19
    for path, member, archive, size, full, partial in members:
        assert path == f"{archive}!/{member}"
        with zipfile.ZipFile(archive) as z:
            data = z.read(member)
        assert size == len(data)
        if size <= 128 * 1024:  # read whole with the partial hash: its full hash is known
            assert full == truth[path]
        head, tail = data[: 64 * 1024], data[max(64 * 1024, len(data) - 64 * 1024) :]
        expected = hashlib.md5(head + tail + len(data).to_bytes(8, "little")).hexdigest()
        assert partial == expected, path
    assert snapshot(zipped_library) == before  # nothing extracted, nothing written
    assert not any(p.name.endswith(".tmp") for p in zipped_library.rglob("*"))


def test_members_are_duplicates_of_loose_files_and_of_each_other(zipped_library, catalogue):
    run_chain(catalogue, [zipped_library])
    expected = groups_with_members(member_truth(zipped_library))
    got = {
        g.full_hash: sorted([g.original, *g.duplicates]) for g in dedup.duplicate_groups(catalogue)
    }
    assert got == expected
    torus = next(v for v in got.values() if any(p.endswith("loose/torus.STL") for p in v))
    assert len(torus) == 3  # loose, in download.zip, in stored.zip
    assert brute_force_groups(zipped_library) == expected
    assert brute_force_groups(zipped_library, members=False) != expected  # members find them


def test_a_changed_archive_relists_its_members_and_a_removed_one_takes_them(
    zipped_library, catalogue, corpus
):
    run_chain(catalogue, [zipped_library])
    with zipfile.ZipFile(zipped_library / "stored.zip", "w") as z:  # rewritten: other members
        z.write(corpus / "box.STL", "box.STL")
    stats = update_inventory(catalogue, [zipped_library])
    assert stats.new_files == 1 and stats.gone_files == 1 and stats.changed_files == 1
    os.unlink(zipped_library / "download.zip")
    stats = update_inventory(catalogue, [zipped_library])
    assert stats.gone_files == 1 + 7
    run_chain(catalogue, [zipped_library])
    got = {
        g.full_hash: sorted([g.original, *g.duplicates]) for g in dedup.duplicate_groups(catalogue)
    }
    assert got == groups_with_members(member_truth(zipped_library))


def encrypted_zip(path, corpus) -> None:
    """A zip whose member says it is encrypted (the flag zipfile reads), as `zip -e` makes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.write(corpus / "box.STL", "secret.stl")
    data = bytearray(buf.getvalue())
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(sig)
        data[at + flag_at] |= 1
    path.write_bytes(bytes(data))


def test_bombs_encrypted_members_and_broken_archives_are_recorded(tmp_path, corpus, catalogue):
    lib = tmp_path / "lib"
    lib.mkdir()
    with zipfile.ZipFile(lib / "bomb.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("huge.stl", "w", force_zip64=True) as part:
            for _ in range(64):
                part.write(b"\0" * (1 << 20))
        z.write(corpus / "box.STL", "box.STL")
    encrypted_zip(lib / "locked.zip", corpus)
    (lib / "broken.zip").write_bytes(b"PK\x03\x04 this is not really a zip")
    shutil.copy(corpus / "box.STL", lib / "box.STL")
    stats = run_chain(catalogue, [lib], hash_all_sizes=True)
    assert stats["inventory"].issues_by_kind == {"broken_archive": 1}
    with catalogue.connect(write=False) as con:
        errors = dict(
            con.execute("""
                SELECT f.member, h.error_class FROM partial_hashes h
                JOIN file_inventory f USING (file_id) WHERE f.member IS NOT NULL""").fetchall()
        )
        issue = con.execute("SELECT path, kind FROM walk_issues").fetchall()
    assert errors == {"huge.stl": "ArchiveBomb", "box.STL": None, "secret.stl": "MemberUnreadable"}
    assert issue == [(str(lib / "broken.zip"), "broken_archive")]
    again = run_chain(catalogue, [lib], hash_all_sizes=True)
    assert again["partial"].files_read == 0 and again["partial"].errors == 0  # kept, not retried
    assert {(g.original, tuple(g.duplicates)) for g in dedup.duplicate_groups(catalogue)} == {
        (str(lib / "box.STL"), (f"{lib / 'bomb.zip'}!/box.STL",))
    }


def test_a_loose_file_and_a_member_that_display_alike_are_two_files(tmp_path, catalogue):
    lib = tmp_path / "lib"
    (lib / "odd.zip!").mkdir(parents=True)  # a folder whose name ends in '!'
    (lib / "odd.zip!" / "file.stl").write_bytes(b"solid loose\nendsolid loose\n")
    with zipfile.ZipFile(lib / "odd.zip", "w") as z:
        z.writestr("file.stl", "solid member\nendsolid member\n")
        z.writestr("/file.stl", "solid again\nendsolid again\n")  # the same name once more
    for _ in range(2):
        stats = update_inventory(catalogue, [lib])
    assert (stats.new_files, stats.changed_files, stats.gone_files) == (0, 0, 0)
    with catalogue.connect(write=False) as con:
        rows = con.execute(
            "SELECT path, member, archive_id IS NOT NULL, size_bytes FROM file_inventory "
            "WHERE path LIKE '%file.stl' ORDER BY member NULLS FIRST"
        ).fetchall()
    shown = f"{lib}/odd.zip!/file.stl"
    assert rows == [(shown, None, False, 27), (shown, "file.stl", True, 29)]


def test_an_archive_that_goes_and_comes_back_as_it_was_brings_its_members(
    zipped_library, catalogue
):
    (zipped_library / "kept").mkdir()
    os.rename(zipped_library / "stored.zip", zipped_library / "kept" / "stored.zip")
    run_chain(catalogue, [zipped_library])
    # the folder goes and comes back (a share mounted again): the zip's inode is the same
    os.rename(zipped_library / "kept", zipped_library.parent / "kept")
    assert update_inventory(catalogue, [zipped_library]).gone_files == 2  # the zip, its member
    os.rename(zipped_library.parent / "kept", zipped_library / "kept")
    back = update_inventory(catalogue, [zipped_library])
    assert (back.returned_files, back.changed_files) == (2, 0)
    again = run_chain(catalogue, [zipped_library])
    assert again["partial"].bytes_read == 0 and again["full"].bytes_read == 0
    assert {g.full_hash for g in dedup.duplicate_groups(catalogue)} == set(
        groups_with_members(member_truth(zipped_library))
    )


def test_a_loose_copy_is_the_original_even_when_its_member_was_seen_first(
    tmp_path, corpus, catalogue
):
    lib = tmp_path / "lib"
    lib.mkdir()
    with zipfile.ZipFile(lib / "a.zip", "w") as z:
        z.write(corpus / "box.STL", "box.STL")
    run_chain(catalogue, [lib])
    shutil.copy(corpus / "box.STL", lib / "z loose box.STL")  # catalogued after the member
    run_chain(catalogue, [lib])
    [group] = dedup.duplicate_groups(catalogue)
    assert group.original == str(lib / "z loose box.STL")
    assert group.duplicates == [f"{lib / 'a.zip'}!/box.STL"]
    assert dedup.inconsistent_duplicates(catalogue) == []


def test_a_member_that_cannot_be_inflated_is_a_permanent_row(tmp_path, corpus, catalogue):
    """A corrupt LZMA member raises LZMAError from deep inside zipfile: still one row each."""
    lib = tmp_path / "lib"
    lib.mkdir()
    with zipfile.ZipFile(lib / "lzma.zip", "w", zipfile.ZIP_LZMA) as z:
        z.write(corpus / "box.STL", "box.STL")
        z.write(corpus / "torus.STL", "torus.STL")
    data = bytearray((lib / "lzma.zip").read_bytes())
    at = data.find(b"box.STL") + len(b"box.STL") + 40  # inside the compressed stream
    data[at : at + 64] = bytes(64)
    (lib / "lzma.zip").write_bytes(bytes(data))
    shutil.copy(corpus / "torus.STL", lib / "torus.STL")
    stats = run_chain(catalogue, [lib], hash_all_sizes=True)
    assert stats["partial"].transient_errors == 0
    with catalogue.connect(write=False) as con:
        rows = dict(
            con.execute("""
            SELECT f.member, h.error_class FROM partial_hashes h JOIN file_inventory f
            USING (file_id) WHERE f.member IS NOT NULL""").fetchall()
        )
    assert rows["box.STL"] is not None and rows["torus.STL"] is None, rows
    again = run_chain(catalogue, [lib], hash_all_sizes=True)
    assert again["partial"].errors == 0 and again["partial"].files_read == 0


def test_a_listing_error_that_may_pass_keeps_the_members(zipped_library, catalogue, monkeypatch):
    """An I/O error on a share while a changed zip is listed: its members stay as they were
    and the next walk lists it again (the error is injected: a real EIO needs a failing
    disk)."""
    import errno

    from dam_dagster.core import inventory

    update_inventory(catalogue, [zipped_library])
    os.utime(zipped_library / "off.zip")  # changed: to be listed again

    def eio(*_a, **_k):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(inventory, "list_members", eio)
    stats = update_inventory(catalogue, [zipped_library])
    assert stats.gone_files == 0 and stats.issues_by_kind == {"error": 1}
    monkeypatch.undo()
    stats = update_inventory(catalogue, [zipped_library])
    assert stats.gone_files == 0 and stats.issues == 0
    with catalogue.connect(write=False) as con:
        members = con.execute(
            "SELECT count(*) FROM file_inventory WHERE member LIKE 'off/%' AND present"
        ).fetchone()[0]
    assert members == 19


def test_members_get_thumbnails_from_their_bytes_in_memory(zipped_library, tmp_path):
    import dagster as dg

    from dam_dagster import dedup_assets, thumbnail_assets
    from dam_dagster.core.store import Catalogue
    from dam_dagster.resources import CatalogueResource, LibraryResource, RenderResource

    data = tmp_path / "data"
    res = {
        "library": LibraryResource(roots=str(zipped_library)),
        "catalogue": CatalogueResource(data_dir=str(data)),
        "renderer": RenderResource(fast_workers=2),
    }
    assert dg.materialize([dedup_assets.file_inventory], resources=res).success
    before = snapshot(zipped_library)
    result = dg.materialize(
        [thumbnail_assets.thumbnails_fast], partition_key="<1MB", resources=res,
        raise_on_error=False,
    )  # fmt: skip
    assert result.success
    with Catalogue(data).connect(write=False) as con:
        rows = dict(
            con.execute("""
                SELECT f.member, t.status FROM thumbnails t JOIN file_inventory f USING (file_id)
                WHERE f.member LIKE 'parts/%'""").fetchall()
        )
    assert set(rows) == {f"parts/{m}" for m in MODELS}  # all under 1 MB
    assert all(status == "ok" for status in rows.values()), rows
    assert snapshot(zipped_library) == before
