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


def test_a_loose_file_under_a_folder_named_like_a_member_is_not_one(tmp_path, catalogue):
    (tmp_path / "lib" / "odd.zip!").mkdir(parents=True)  # a folder whose name ends in '!'
    (tmp_path / "lib" / "odd.zip!" / "file.stl").write_bytes(b"solid x\nendsolid x\n")
    update_inventory(catalogue, [tmp_path / "lib"])
    with catalogue.connect(write=False) as con:
        assert con.execute("SELECT member, archive_id FROM file_inventory").fetchall() == [
            (None, None)
        ]


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
