"""Change detection for shares: the library sensor looks at folder mtimes within a budget, and
an inventory of just the changed folders leaves the catalogue as a complete walk would."""

import os
import shutil
import time

import dagster as dg
import pytest

from dam_dagster import dedup_assets
from dam_dagster.core.changes import (
    decode_folder,
    encode_folder,
    known_folder_states,
    look_for_changes,
)
from dam_dagster.core.inventory import update_inventory
from dam_dagster.core.store import Catalogue
from dam_dagster.resources import CatalogueResource, LibraryResource
from dam_dagster.sensors import library_sensor

from .conftest import make_hard_cases

pytestmark = pytest.mark.catalogue_contract


def state(cat: Catalogue) -> dict:
    """What the catalogue says of every file: present or not, and its state."""
    with cat.connect(write=False) as con:
        rows = con.execute(
            "SELECT path, present, size_bytes, mtime_ns, ctime_ns FROM file_inventory"
        ).fetchall()
        folders = con.execute("SELECT path, mtime_ns FROM folders").fetchall()
    return {r[0]: r[1:] for r in rows}, dict(folders)


def touch_later(path) -> None:
    """Give a folder's mtime a clearly new value (filesystems may have coarse clocks)."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))


def sensor(lib, data, cursor=None):
    res = {
        "library": LibraryResource(roots=str(lib)),
        "catalogue": CatalogueResource(data_dir=str(data)),
    }
    with dg.build_sensor_context(cursor=cursor, resources=res) as ctx:
        return library_sensor(ctx)


def test_the_sensor_asks_for_the_folders_that_changed_and_their_inventory_matches_a_walk(
    tmp_path,
):
    lib = make_hard_cases(tmp_path / "lib")
    data, twin = tmp_path / "data", tmp_path / "twin"  # twin: complete walks only
    first = sensor(lib, data)  # nothing walked yet: one complete walk
    [request] = first.run_requests
    assert not request.run_config
    assert dg.materialize(
        [dedup_assets.file_inventory],
        resources={
            "library": LibraryResource(roots=str(lib)),
            "catalogue": CatalogueResource(data_dir=str(data)),
        },
    ).success
    quiet = sensor(lib, data, first.cursor)
    assert not quiet.run_requests and "no folder changed" in quiet.skip_reason.skip_message

    # a new file, a removed one, a new folder with files, a removed folder, a renamed one
    (lib / "prints" / "new.stl").write_bytes(b"solid new\nendsolid new\n")
    (lib / "small" / "other.txt").unlink()
    (lib / "fresh" / "deep").mkdir(parents=True)
    (lib / "fresh" / "deep" / "a.stl").write_bytes(b"a" * 999)
    shutil.rmtree(lib / "unique")
    os.rename(lib / "edge", lib / "edge renamed")
    for folder in ("prints", "small", "."):
        touch_later(lib / folder)
    changed = sensor(lib, data, quiet.cursor)
    [request] = changed.run_requests
    folders = sorted(
        decode_folder(f) for f in request.run_config["ops"]["file_inventory"]["config"]["folders"]
    )
    assert folders == sorted(str(lib / f) if f else str(lib) for f in ["", "prints", "small"])
    assert dg.materialize(
        [dedup_assets.file_inventory],
        run_config=request.run_config,
        resources={
            "library": LibraryResource(roots=str(lib)),
            "catalogue": CatalogueResource(data_dir=str(data)),
        },
    ).success
    update_inventory(Catalogue(twin), [lib])
    files, known = state(Catalogue(data))
    twin_files, twin_known = state(Catalogue(twin))
    present = {p for p, s in files.items() if s[0]}
    assert present == {p for p, s in twin_files.items() if s[0]}
    assert {p: files[p] for p in present} == {p: twin_files[p] for p in present}
    assert known == twin_known  # the same folders, with the same mtimes
    again = sensor(lib, data, changed.cursor)
    assert not again.run_requests  # and nothing is asked twice


def test_a_file_rewritten_in_place_waits_for_the_complete_walk(tmp_path):
    lib = make_hard_cases(tmp_path / "lib")
    data = tmp_path / "data"
    cat = Catalogue(data)
    update_inventory(cat, [lib])
    time.sleep(0.01)
    (lib / "prints" / "dragon.stl").write_bytes(b"edited")  # the folder's mtime stays
    look = look_for_changes(known_folder_states(cat), 0, budget_s=10)
    assert look.changed == []
    stats = update_inventory(cat, [lib])  # what dam_complete_walk runs
    assert stats.changed_files == 1 and stats.complete


def test_a_look_stops_at_its_budget_and_the_next_goes_on_from_there(tmp_path):
    folders = []
    for i in range(60):
        folder = tmp_path / f"f{i:02d}"
        folder.mkdir()
        folders.append((str(folder), str(tmp_path), os.stat(folder).st_mtime_ns))
    touch_later(tmp_path / "f05")
    touch_later(tmp_path / "f45")
    first = look_for_changes(folders, 0, budget_s=0.000001, chunk=10)
    assert first.checked == 10 and first.position == 10 and first.changed == [str(tmp_path / "f05")]
    seen, position, found = first.checked, first.position, set(first.changed)
    while seen < 60:
        look = look_for_changes(folders, position, budget_s=0.000001, chunk=10)
        seen, position = seen + look.checked, look.position
        found |= set(look.changed)
    assert found == {str(tmp_path / "f05"), str(tmp_path / "f45")} and position == 0
    whole = look_for_changes(folders, 17, budget_s=60, chunk=10)
    assert whole.checked == 60 and whole.position == 17  # once round, no more


def test_a_vanished_folder_lists_its_parent(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    folders = [
        (str(p), str(tmp_path), os.stat(p).st_mtime_ns)
        for p in (tmp_path, tmp_path / "a", tmp_path / "a" / "b")
    ]
    shutil.rmtree(tmp_path / "a" / "b")
    os.utime(tmp_path / "a", ns=(folders[1][2], folders[1][2]))  # even if its mtime is back
    look = look_for_changes(folders, 0, budget_s=10)
    assert look.changed == [str(tmp_path / "a")]


def test_folder_names_that_are_not_utf8_survive_run_config(tmp_path):
    raw = os.fsdecode(os.fsencode(str(tmp_path)) + b"/bad\xffname")
    assert encode_folder(raw).startswith("hex:") and decode_folder(encode_folder(raw)) == raw
    assert encode_folder(str(tmp_path)) == str(tmp_path)


def test_a_deleted_tree_of_folders_is_gone_from_the_catalogue_after_a_look(tmp_path):
    lib = tmp_path / "lib"
    (lib / "top" / "mid" / "leaf").mkdir(parents=True)
    for folder in ("top", "top/mid", "top/mid/leaf"):
        (lib / folder / "part.stl").write_bytes(folder.encode())
    (lib / "other.stl").write_bytes(b"stays")
    cat, twin = Catalogue(tmp_path / "data"), Catalogue(tmp_path / "twin")
    update_inventory(cat, [lib])
    shutil.rmtree(lib / "top" / "mid")
    look = look_for_changes(known_folder_states(cat), 0, budget_s=10)
    assert look.changed == [str(lib / "top")]  # the nearest folder still there
    stats = update_inventory(cat, [lib], only={str(lib): look.changed})
    assert stats.gone_files == 2 and not stats.complete
    update_inventory(twin, [lib])
    files, known = state(cat)
    twin_files, twin_known = state(twin)
    assert {p for p, s in files.items() if s[0]} == {p for p, s in twin_files.items() if s[0]}
    assert known == twin_known


def test_a_root_added_to_the_settings_gets_a_complete_walk(tmp_path):
    first, second = make_hard_cases(tmp_path / "first"), tmp_path / "second"
    (second / "x").mkdir(parents=True)
    (second / "x" / "a.stl").write_bytes(b"a")
    data = tmp_path / "data"
    update_inventory(Catalogue(data), [first])
    res = {
        "library": LibraryResource(roots=f"{first}:{second}"),
        "catalogue": CatalogueResource(data_dir=str(data)),
    }
    with dg.build_sensor_context(resources=res) as ctx:
        result = library_sensor(ctx)
    [request] = result.run_requests
    assert request.run_key.startswith("complete-walk-") and not request.run_config
