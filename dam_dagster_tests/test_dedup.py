"""The dedup chain against a brute-force MD5 of every file, first run and after changes."""

import json
import os
import shutil

import pytest

from dam_dagster.core import dedup
from dam_dagster.core.store import Catalogue

from .conftest import brute_force_groups, catalogue_groups, run_chain, run_unprivileged, snapshot

pytestmark = pytest.mark.catalogue_contract


def ids(catalogue: Catalogue) -> dict[str, int]:
    with catalogue.connect(write=False) as con:
        return dict(con.execute("SELECT path, file_id FROM file_inventory").fetchall())


def test_corpus_matches_brute_force(corpus, catalogue):
    stats = run_chain(catalogue, [corpus])
    assert stats["inventory"].files_seen == sum(len(f) for _, _, f in os.walk(corpus))
    assert catalogue_groups(catalogue) == brute_force_groups(corpus)
    # tier 0: only files whose size another file shares are read at all
    assert stats["partial"].skipped_unique_size > 0.8 * stats["inventory"].files_seen


def test_hard_cases_match_brute_force(hard_library, catalogue):
    stats = run_chain(catalogue, [hard_library])
    expected = brute_force_groups(hard_library)
    assert catalogue_groups(catalogue) == expected
    # dragon x3, readme, exactly 128 KiB, 128 KiB + 1, big, unicode/space names: nothing else
    assert len(expected) == 6
    # decoys collide on (size, partial hash) but are told apart by the full hash
    with catalogue.connect(write=False) as con:
        decoys = con.execute("""SELECT count(DISTINCT partial_hash) FROM collision_candidates c
                                JOIN file_inventory f USING (file_id)
                                WHERE f.rel_path LIKE 'decoys/%'""").fetchone()[0]
    assert decoys == 1
    assert stats["candidates"].empty_files == 3
    # the lowest id is the original; every copy points at it
    with catalogue.connect(write=False) as con:
        rows = con.execute("""SELECT original_id, list(file_id ORDER BY file_id),
                                     list(duplicate_of_id ORDER BY file_id)
                              FROM duplicates GROUP BY original_id""").fetchall()
    for original, members, dup_of in rows:
        assert original == min(members)
        assert dup_of[0] is None and all(d == original for d in dup_of[1:])
    # files above 128 KiB are read in full only when they are candidates
    big_candidates = 2 + 2 + 2 + 3  # decoys, 128k+1, big, dragons
    assert stats["full"].files_read == big_candidates
    assert dedup.inconsistent_duplicates(catalogue) == []
    assert dedup.unhashed_candidates(catalogue) == []


def test_unchanged_rescan_reads_nothing(hard_library, catalogue):
    run_chain(catalogue, [hard_library])
    before = ids(catalogue)
    again = run_chain(catalogue, [hard_library])
    inv = again["inventory"]
    assert (inv.new_files, inv.changed_files, inv.gone_files) == (0, 0, 0)
    assert again["partial"].bytes_read == 0 and again["partial"].files_read == 0
    assert again["full"].bytes_read == 0 and again["full"].files_read == 0
    assert ids(catalogue) == before
    assert catalogue_groups(catalogue) == brute_force_groups(hard_library)


def test_changes_between_runs(hard_library, catalogue):
    run_chain(catalogue, [hard_library])
    first_ids = ids(catalogue)
    lib = hard_library
    # a copy changed: it leaves the group of three
    (lib / "backup/dragon.stl").write_bytes(b"edited" + (lib / "backup/dragon.stl").read_bytes())
    # a deleted file: kept as not present, its id not reused
    deleted_mtime = os.stat(lib / "big/part (2).3mf").st_mtime_ns
    (lib / "big/part (2).3mf").unlink()
    # a new file whose size matches a formerly unique one: both must now be read
    (lib / "new").mkdir()
    shutil.copy(lib / "unique/u3.ply", lib / "new/u3 again.ply")
    stats = run_chain(catalogue, [lib])
    inv = stats["inventory"]
    assert (inv.new_files, inv.changed_files, inv.gone_files) == (1, 1, 1)
    assert catalogue_groups(catalogue) == brute_force_groups(lib)
    # only the new pair is read: the edited copy now has a size of its own (tier 0)
    assert stats["partial"].files_read == 2
    new_ids = ids(catalogue)
    assert {p: i for p, i in new_ids.items() if p in first_ids} == first_ids
    assert new_ids[str(lib / "new/u3 again.ply")] > max(first_ids.values())
    with catalogue.connect(write=False) as con:
        gone = con.execute(
            "SELECT present, gone_at IS NOT NULL FROM file_inventory WHERE path = ?",
            [str(lib / "big/part (2).3mf")],
        ).fetchone()
        views = con.execute(
            "SELECT count(*) FROM library_files WHERE path = ?", [str(lib / "big/part (2).3mf")]
        ).fetchone()[0]
    assert gone == (False, True) and views == 0
    # a restored copy (same size and mtime, but a new inode change time): the same id, and
    # read again, since bytes can change under an old mtime (the ctime says they might have)
    shutil.copy(lib / "big/part.3mf", lib / "big/part (2).3mf")
    os.utime(lib / "big/part (2).3mf", ns=(deleted_mtime, deleted_mtime))
    back = run_chain(catalogue, [lib])
    assert back["inventory"].returned_files == 1 and back["inventory"].changed_files == 1
    assert back["full"].files_read == 1
    assert ids(catalogue)[str(lib / "big/part (2).3mf")] == first_ids[str(lib / "big/part (2).3mf")]
    assert catalogue_groups(catalogue) == brute_force_groups(lib)
    # a folder that goes away and comes back as it was (a share mounted again): its files
    # return in the same state, and their hashes are current again without a read
    os.rename(lib / "big", lib.parent / "big-away")
    away = run_chain(catalogue, [lib])
    assert away["inventory"].gone_files == 2
    os.rename(lib.parent / "big-away", lib / "big")
    again = run_chain(catalogue, [lib])
    assert (again["inventory"].returned_files, again["inventory"].changed_files) == (2, 0)
    assert again["partial"].bytes_read == 0 and again["full"].files_read == 0
    assert catalogue_groups(catalogue) == brute_force_groups(lib)


def test_library_is_byte_for_byte_unchanged(hard_library, catalogue):
    before = snapshot(hard_library)
    run_chain(catalogue, [hard_library], hash_all_sizes=True)
    assert snapshot(hard_library) == before
    assert not any(catalogue.data_dir.resolve().is_relative_to(p) for p in [hard_library])


def test_hash_all_sizes_hashes_every_nonempty_file(hard_library, catalogue):
    stats = run_chain(catalogue, [hard_library], hash_all_sizes=True)
    nonempty = sum(1 for p in hard_library.rglob("*") if p.is_file() and p.stat().st_size)
    assert stats["partial"].files_read == nonempty and stats["partial"].skipped_unique_size == 0
    assert catalogue_groups(catalogue) == brute_force_groups(hard_library)


def test_file_vanishing_or_changing_between_walk_and_read(hard_library, catalogue):
    from dam_dagster.core.inventory import update_inventory

    lib = hard_library
    update_inventory(catalogue, [lib])
    (lib / "small/readme (1).txt").unlink()  # vanishes before it is read
    with open(lib / "decoys/a.stl", "ab") as fh:  # grows before it is read
        fh.write(b"more")
    partial = dedup.update_partial_hashes(catalogue)
    assert [f[1] for f in partial.failures] == ["FileNotFoundError"]
    assert partial.transient_errors == 0
    # the changed file was hashed as it is now; the next inventory makes that hash current
    update_inventory(catalogue, [lib])
    again = dedup.update_partial_hashes(catalogue)
    assert again.files_read == 0
    dedup.update_collision_candidates(catalogue)
    dedup.update_full_hashes(catalogue)
    dedup.update_duplicates(catalogue)
    assert catalogue_groups(catalogue) == brute_force_groups(lib)


def test_special_files_links_and_odd_names_are_handled(tmp_path, catalogue):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "a.stl").write_bytes(b"same bytes")
    raw = os.fsencode(str(lib)) + b"/copy-\xe9.stl"
    with open(raw, "wb") as fh:
        fh.write(b"same bytes")
    os.mkfifo(lib / "fifo.stl")
    (lib / "dangling.stl").symlink_to(lib / "nowhere")
    (lib / "loop").symlink_to(lib / "loop")
    stats = run_chain(catalogue, [lib])
    assert stats["inventory"].issues_by_kind == {
        "undecodable_name": 1,
        "special_file": 1,
        "broken_symlink": 1,
        "symlink_loop": 1,
    }
    groups = dedup.duplicate_groups(catalogue)
    assert len(groups) == 1 and groups[0].duplicates[0].endswith("copy-\\xe9.stl")
    with catalogue.connect(write=False) as con:
        issues = con.execute("SELECT kind FROM walk_issues ORDER BY kind").fetchall()
    assert [k for (k,) in issues] == [
        "broken_symlink",
        "special_file",
        "symlink_loop",
        "undecodable_name",
    ]


def test_unreadable_file_and_folder_are_recorded(shared_tmp):
    lib, data = shared_tmp / "lib", shared_tmp / "data"
    (lib / "locked").mkdir(parents=True)
    for rel in ["a.stl", "b.stl", "locked/c.stl"]:
        (lib / rel).write_bytes(b"identical content")
    code = f"""
import json
from pathlib import Path
from dam_dagster.core.store import Catalogue
from dam_dagster_tests.conftest import run_chain
cat = Catalogue({str(data)!r})
s = run_chain(cat, [Path({str(lib)!r})])
print(json.dumps({{"issues": s["inventory"].issues_by_kind,
                   "failures": [f[1] for f in s["partial"].failures],
                   "groups": s["duplicates"].groups}}))
"""
    # first run: everything readable; then lock a file and a folder and run again
    first = run_unprivileged(code)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["groups"] == 1
    (lib / "b.stl").chmod(0o000)
    (lib / "locked").chmod(0o000)
    (lib / "a.stl").write_bytes(b"identical content")  # new mtime: must be read again
    os.utime(lib / "b.stl", ns=(0, 1))  # and so must b (which it cannot)
    second = run_unprivileged(code)
    assert second.returncode == 0, second.stderr
    out = json.loads(second.stdout)
    assert out["issues"] == {"permission_denied": 1}
    assert out["failures"] == ["PermissionError"]
    cat = Catalogue(data)
    with cat.connect(write=False) as con:
        present = dict(con.execute("SELECT rel_path, present FROM file_inventory").fetchall())
        err = con.execute("""SELECT error_class FROM partial_hashes JOIN file_inventory
                             USING (file_id) WHERE rel_path = 'b.stl'""").fetchone()[0]
    # the file under the unlisted folder is not marked gone; the error is on record
    assert present == {"a.stl": True, "b.stl": True, "locked/c.stl": True}
    assert err == "PermissionError"


def test_a_first_inventory_numbers_files_in_path_order_as_later_ones_do(tmp_path):
    """The first inventory ranks paths itself (Arrow); later ones let DuckDB number them: both
    give ids in the order of (path, exact bytes), names that are not UTF-8 and names that
    only look alike included."""
    from dam_dagster.core.inventory import update_inventory

    lib = tmp_path / "lib"
    names = ["b.stl", "a-b.stl", "é.stl", "Z.stl", "a/x.stl", "a b/y.stl", "a.b/z.stl",
             "bad\\xff.stl"]  # fmt: skip
    for name in names:
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        (lib / name).write_bytes(name.encode())
    with open(os.fsencode(str(lib)) + b"/bad\xff.stl", "wb") as fh:  # shows as bad\xff.stl too
        fh.write(b"raw")
    first = Catalogue(tmp_path / "first")
    update_inventory(first, [lib])
    later = Catalogue(tmp_path / "later")
    other = tmp_path / "other"
    other.mkdir()
    (other / "zz.stl").write_bytes(b"x")
    update_inventory(later, [other])
    update_inventory(later, [lib])  # a catalogue that knows a file already: DuckDB's numbering

    def ids(cat):
        with cat.connect(write=False) as con:
            return con.execute(
                "SELECT path, raw_path, file_id FROM file_inventory "
                "WHERE path NOT LIKE '%zz.stl' ORDER BY file_id"
            ).fetchall()

    got = ids(first)
    assert [(p, r) for p, r, _ in got] == [(p, r) for p, r, _ in ids(later)]
    assert [i for *_, i in got] == list(range(1, len(names) + 2))
    by_bytes = sorted(got, key=lambda row: (row[0].encode(), row[1] is None, row[1] or b""))
    assert got == by_bytes  # path order, as bytes; no raw bytes last
