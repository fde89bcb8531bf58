"""The members of zip files are files of the catalogue: listed from the central directory,
hashed from their inflated bytes (nothing extracted to disk), deduplicated with loose files,
followed when their archive changes or goes, and their failures recorded."""

import hashlib
import io
import os
import shutil
import zipfile
import zlib

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


def _render_fast_lane(library, tmp_path, status_sql: str):
    """The inventory and the fast lane's <1MB partition over `library` (real Dagster runs),
    then `status_sql`'s (key, status) rows, and the library's snapshot from before the lane."""
    import dagster as dg

    from dam_dagster import dedup_assets, thumbnail_assets
    from dam_dagster.core.store import Catalogue
    from dam_dagster.resources import CatalogueResource, LibraryResource, RenderResource

    data = tmp_path / "data"
    res = {
        "library": LibraryResource(roots=str(library)),
        "catalogue": CatalogueResource(data_dir=str(data)),
        "renderer": RenderResource(fast_workers=2),
    }
    assert dg.materialize([dedup_assets.file_inventory], resources=res).success
    before = snapshot(library)
    result = dg.materialize(
        [thumbnail_assets.thumbnails_fast], partition_key="<1MB", resources=res,
        raise_on_error=False,
    )  # fmt: skip
    assert result.success
    with Catalogue(data).connect(write=False) as con:
        return dict(con.execute(status_sql).fetchall()), before


def test_members_get_thumbnails_from_their_bytes_in_memory(zipped_library, tmp_path):
    rows, before = _render_fast_lane(
        zipped_library,
        tmp_path,
        """
                SELECT f.member, t.status FROM thumbnails t JOIN file_inventory f USING (file_id)
                WHERE f.member LIKE 'parts/%'""",
    )
    assert set(rows) == {f"parts/{m}" for m in MODELS}  # all under 1 MB
    assert all(status == "ok" for status in rows.values()), rows
    assert snapshot(zipped_library) == before


# --- 7z: the same, with py7zr ----------------------------------------------------------------
SEVEN_MODELS = ["box.STL", "torus.STL", "fuze.obj", "bunny.ply", "featuretype.3MF"]


@pytest.fixture
def seven_library(corpus, tmp_path):
    """A solid 7z of corpus models (py7zr's default: one block for all), a non-solid one, and
    loose copies of two of them."""
    import py7zr

    lib = tmp_path / "lib"
    (lib / "loose").mkdir(parents=True)
    for name in SEVEN_MODELS[:2]:
        shutil.copy(corpus / name, lib / "loose" / name)
    with py7zr.SevenZipFile(lib / "models.7z", "w") as z:
        for name in SEVEN_MODELS:
            z.write(corpus / name, f"parts/{name}")
        z.writestr(b"print at 0.2 mm", "readme.txt")
    with py7zr.SevenZipFile(
        lib / "copy.7z", "w", filters=[{"id": py7zr.FILTER_COPY}]
    ) as z:  # stored: every member a block of its own
        z.write(corpus / "torus.STL", "torus again.STL")
        z.write(corpus / "box.STL", "sub\\box.STL")  # a Windows name: forward slashes
    return lib


def seven_truth(lib, scratch) -> dict[str, str]:
    """MD5 of every member, from the bytes py7zr itself extracts (outside the library)."""
    import py7zr

    truth = {}
    for archive in sorted(lib.glob("*.7z")):
        out = scratch / archive.name
        with py7zr.SevenZipFile(archive) as z:
            z.extractall(out)
        for path in out.rglob("*"):
            if path.is_file():
                member = path.relative_to(out).as_posix().replace("\\", "/")
                truth[f"{archive}!/{member}"] = hashlib.md5(path.read_bytes()).hexdigest()
    return truth


def test_7z_members_are_rows_with_the_hashes_of_their_bytes_and_duplicates(
    seven_library, catalogue, tmp_path
):
    before = snapshot(seven_library)
    stats = run_chain(catalogue, [seven_library], hash_all_sizes=True)
    assert stats["inventory"].issues == 0
    truth = seven_truth(seven_library, tmp_path / "extracted")
    assert len(truth) == 6 + 2
    with catalogue.connect(write=False) as con:
        rows = con.execute("""
            SELECT f.path, f.size_bytes, coalesce(fh.full_hash, h.full_hash), h.error_class,
                   a.path
            FROM file_inventory f JOIN file_inventory a ON a.file_id = f.archive_id
            LEFT JOIN partial_hashes h ON h.file_id = f.file_id
            LEFT JOIN full_hashes fh ON fh.file_id = f.file_id""").fetchall()
    got = {r[0]: r[2] for r in rows}
    assert set(got) == set(truth)
    assert all(r[3] is None for r in rows), rows
    assert {p: h for p, h in got.items() if h is not None} == {
        p: h for p, h in truth.items() if p in got and got[p] is not None
    }
    # every member of a size that shares a hash candidate got its full hash: all of them here
    for path, md5 in truth.items():
        if got[path] is not None:
            assert got[path] == md5, path
    groups = {
        g.full_hash: sorted([g.original, *g.duplicates]) for g in dedup.duplicate_groups(catalogue)
    }
    torus = hashlib.md5((seven_library / "loose" / "torus.STL").read_bytes()).hexdigest()
    box = hashlib.md5((seven_library / "loose" / "box.STL").read_bytes()).hexdigest()
    assert groups[torus] == sorted([
        str(seven_library / "loose" / "torus.STL"),
        f"{seven_library / 'models.7z'}!/parts/torus.STL",
        f"{seven_library / 'copy.7z'}!/torus again.STL",
    ])  # fmt: skip
    assert f"{seven_library / 'copy.7z'}!/sub/box.STL" in groups[box]
    assert snapshot(seven_library) == before  # nothing extracted, nothing written


def test_a_solid_7z_is_decompressed_once_per_hashing_pass(seven_library, catalogue):
    from dam_dagster.core import hashing
    from dam_dagster.core.archives import SevenZip, list_members

    archive = str(seven_library / "models.7z")
    members = list_members(archive)
    assert len(members) == 6 and len({m.compressed for m in members}) == 1  # one solid block
    columns = (
        list(range(len(members))), [f"{archive}!/{m.name}" for m in members],
        [None] * len(members), [m.size for m in members], [0] * len(members),
        [0] * len(members), [archive] * len(members), [None] * len(members),
        [m.name for m in members],
    )  # fmt: skip
    for kind in ("prefix", "partial", "full"):
        started = SevenZip.blocks_decompressed
        rows, failures, _read = hashing.hash_batch(kind, False, columns)
        assert SevenZip.blocks_decompressed - started == 1, kind
        assert failures == [] and len(rows) == len(members)
    by_name = {m.name: row for m, row in zip(members, rows)}
    import py7zr

    with py7zr.SevenZipFile(archive) as z:
        extracted = {}
        z.extractall(seven_library.parent / "out")
    for m in members:
        extracted[m.name] = (seven_library.parent / "out" / m.name).read_bytes()
        assert by_name[m.name][6] == hashlib.md5(extracted[m.name]).hexdigest()
    # the batching never cuts an archive's members in two (one pass per archive and stage)
    import pyarrow as pa

    table = pa.table(
        {n: pa.array(c) for n, c in zip(hashing.JOB_COLUMNS, columns)}
        | {"raw_path": pa.nulls(len(members), pa.binary()),
           "archive_raw": pa.nulls(len(members), pa.binary())}
    ).select(list(hashing.JOB_COLUMNS))  # fmt: skip
    sizes = [b.num_rows for b in hashing._whole_archive_batches(table, 4)]
    assert sizes == [6]


def test_7z_broken_encrypted_and_bombs_are_recorded(tmp_path, corpus, catalogue):
    import py7zr

    lib = tmp_path / "lib"
    lib.mkdir()
    with py7zr.SevenZipFile(lib / "bomb.7z", "w") as z:
        z.writestr(b"\0" * (64 << 20), "huge.stl")  # one block: 64 MB into a few KB
    with py7zr.SevenZipFile(lib / "plain.7z", "w") as z:
        z.write(corpus / "box.STL", "box.STL")
    data = (lib / "plain.7z").read_bytes()
    (lib / "cut.7z").write_bytes(data[: len(data) // 2])
    with py7zr.SevenZipFile(lib / "locked.7z", "w", password="secret") as z:
        z.write(corpus / "torus.STL", "torus.STL")
    with py7zr.SevenZipFile(lib / "hidden.7z", "w", password="secret", header_encryption=True) as z:
        z.write(corpus / "torus.STL", "torus.STL")
    stats = run_chain(catalogue, [lib], hash_all_sizes=True)
    assert stats["inventory"].issues_by_kind == {"broken_archive": 2}
    with catalogue.connect(write=False) as con:
        errors = dict(
            con.execute("""
                SELECT f.member, h.error_class FROM partial_hashes h
                JOIN file_inventory f USING (file_id) WHERE f.member IS NOT NULL""").fetchall()
        )
        issues = con.execute("SELECT path, error_class FROM walk_issues ORDER BY path").fetchall()
        message = con.execute(
            "SELECT error_message FROM partial_hashes JOIN file_inventory USING (file_id) "
            "WHERE member = 'huge.stl'"
        ).fetchone()[0]
    assert errors == {"huge.stl": "ArchiveBomb", "box.STL": None, "torus.STL": "MemberUnreadable"}
    assert "refused before decompressing" in message
    assert issues == [
        (str(lib / "cut.7z"), "BrokenArchive"),
        (str(lib / "hidden.7z"), "EncryptedArchive"),
    ]
    again = run_chain(catalogue, [lib], hash_all_sizes=True)
    assert again["partial"].files_read == 0 and again["partial"].errors == 0  # permanent
    with catalogue.connect(write=False) as con:  # not relisted while unchanged: still known
        listed = con.execute(
            "SELECT error_class FROM archives WHERE error_class IS NOT NULL ORDER BY 1"
        ).fetchall()
    assert listed == [("BrokenArchive",), ("EncryptedArchive",)]


def test_a_7z_bomb_is_refused_before_a_byte_is_decompressed(tmp_path):
    import py7zr

    from dam_dagster.core.archives import ArchiveRefused, SevenZip, read_member

    with py7zr.SevenZipFile(tmp_path / "bomb.7z", "w") as z:
        z.writestr(b"\0" * (64 << 20), "huge.stl")
    started = SevenZip.blocks_decompressed
    with pytest.raises(ArchiveRefused, match="7z bomb"):
        read_member(str(tmp_path / "bomb.7z"), "huge.stl")
    assert SevenZip.blocks_decompressed == started


def test_7z_members_get_thumbnails(seven_library, tmp_path):
    rows, before = _render_fast_lane(
        seven_library,
        tmp_path,
        """
                SELECT f.path, t.status FROM thumbnails t JOIN file_inventory f USING (file_id)
                WHERE f.member IS NOT NULL AND f.path LIKE '%.7z!/%'
                  AND f.extension <> '.txt'""",
    )
    assert len(rows) == 5 + 2, rows
    assert all(status == "ok" for status in rows.values()), rows
    assert snapshot(seven_library) == before


def test_a_7z_name_that_climbs_out_is_catalogued_and_never_extracted(tmp_path, corpus, catalogue):
    """py7zr refuses to write '../' names, so the test writes 'xx/' and edits the (plain,
    unencoded) header, its CRCs recomputed: what a hostile archive from elsewhere holds."""
    import struct

    import py7zr

    lib = tmp_path / "lib"
    lib.mkdir()
    with py7zr.SevenZipFile(lib / "climb.7z", "w") as z:
        z.set_encoded_header_mode(False)
        z.write(corpus / "box.STL", "xx/escape.stl")
    data = bytearray((lib / "climb.7z").read_bytes())
    old, new = ("xx/escape.stl".encode("utf-16-le"), "../escape.stl".encode("utf-16-le"))
    at = data.find(old)
    data[at : at + len(old)] = new
    offset, size = struct.unpack("<QQ", data[12:28])
    data[28:32] = struct.pack("<I", zlib.crc32(bytes(data[32 + offset : 32 + offset + size])))
    data[8:12] = struct.pack("<I", zlib.crc32(bytes(data[12:32])))
    (lib / "climb.7z").write_bytes(bytes(data))
    shutil.copy(corpus / "box.STL", lib / "box.STL")
    before = snapshot(lib)
    stats = run_chain(catalogue, [lib], hash_all_sizes=True)
    assert stats["inventory"].issues == 0
    groups = {(g.original, tuple(g.duplicates)) for g in dedup.duplicate_groups(catalogue)}
    assert groups == {(str(lib / "box.STL"), (f"{lib / 'climb.7z'}!/../escape.stl",))}
    assert snapshot(lib) == before
    assert not list(tmp_path.rglob("escape.stl")) and not os.path.exists("escape.stl")


def test_an_io_error_inside_a_7z_may_pass_and_a_damaged_block_is_permanent(
    seven_library, monkeypatch
):
    """EIO while a 7z block is read (injected: a real one needs a failing disk) is a
    transient outcome; bytes that do not decompress are a permanent MemberUnreadable."""
    import errno

    from dam_dagster.core import archives, hashing

    archive = str(seven_library / "models.7z")
    members = archives.list_members(archive)
    n = len(members)
    columns = (
        list(range(n)), [f"{archive}!/{m.name}" for m in members], [None] * n,
        [m.size for m in members], [0] * n, [0] * n, [archive] * n, [None] * n,
        [m.name for m in members],
    )  # fmt: skip

    def eio(self, size=-1):
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr(archives._MemberStream, "read", eio)
        rows, failures, _ = hashing.hash_batch("partial", False, columns)
    assert all(r[8] == "OSError" and r[10] for r in rows if r[1] > 0), rows  # transient
    data = bytearray((seven_library / "models.7z").read_bytes())
    data[64:128] = bytes(64)  # inside the one compressed block
    damaged = seven_library.parent / "damaged.7z"
    damaged.write_bytes(bytes(data))
    columns = (*columns[:6], [str(damaged)] * n, *columns[7:])
    rows, failures, _ = hashing.hash_batch("full", False, columns)
    assert {r[8] for r in rows if r[1] > 0} == {"MemberUnreadable"}
    assert not any(r[10] for r in rows)
