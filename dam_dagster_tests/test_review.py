"""Keep rules and the exported plans, run for real: the shell script a person would run is
run with sh on a library of hostile names (spaces, $, backticks, quotes, newlines, leading
dashes, bytes that are not UTF-8), and must touch exactly the copies of reviewed groups."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from dam_dagster.core import review
from dam_dagster.core.inventory import update_inventory

from .conftest import run_chain, snapshot

pytestmark = pytest.mark.catalogue_contract

NAMES = [
    "keep me.stl",
    "with space.stl",
    "$HOME $(touch pwned) `touch pwned2`.stl",
    'it\'s "quoted".stl',
    "new\nline.stl",
    "-rf --no-preserve-root.stl",
    "--.stl",
    "-",
    "star*and?glob[1].stl",
    "semi;colon&amp|pipe>redir.stl",
]
BAD = b"bad \xff\xfe.stl"


@pytest.fixture
def hostile(tmp_path, catalogue):
    lib = tmp_path / "lib"
    (lib / "a").mkdir(parents=True)
    (lib / "b" / "-x").mkdir(parents=True)
    data = os.urandom(3000)
    for name in NAMES:
        (lib / "a" / name).write_bytes(data)
    with open(os.path.join(os.fsencode(lib / "b" / "-x"), BAD), "wb") as fh:
        fh.write(data)
    other = os.urandom(5000)
    (lib / "b" / "pair one.stl").write_bytes(other)
    (lib / "b" / "pair two.stl").write_bytes(other)
    (lib / "unique.stl").write_bytes(os.urandom(4000))
    run_chain(catalogue, [lib])
    return lib


def _ids(con) -> dict[str, int]:
    rows = con.execute("SELECT file_id, path FROM file_inventory").fetchall()
    return {os.path.basename(p): i for i, p in rows}


def _keep(catalogue, name: str) -> int:
    with catalogue.connect() as con:
        file_id = _ids(con)[name]
        review.keep_file(con, file_id)
    return file_id


def _run_sh(script: bytes, cwd: Path) -> subprocess.CompletedProcess:
    path = cwd / "plan.sh"
    path.write_bytes(script)
    return subprocess.run(["sh", str(path)], cwd=cwd, capture_output=True, timeout=60)


def test_remove_plan_removes_exactly_the_copies_of_reviewed_groups(hostile, catalogue, tmp_path):
    _keep(catalogue, "keep me.stl")  # the big group is reviewed, the pair is not
    plan = review.plan_from_catalogue(catalogue, "remove")
    assert plan.groups == 1 and len(plan.items) == len(NAMES)  # every member but the kept one
    script = review.render_sh(plan)
    assert b"THIS IS A DRY PLAN" in script and script.count(b"rm -- ") == len(NAMES)
    assert b"pair" not in script  # unreviewed: left out
    before = snapshot(hostile)
    done = _run_sh(script, tmp_path)
    assert done.returncode == 0, done.stderr
    after = snapshot(hostile)
    removed = set(before) - set(after)
    expected = {str(hostile / "a" / n) for n in NAMES if n != "keep me.stl"}
    expected.add(os.fsdecode(os.path.join(os.fsencode(hostile / "b" / "-x"), BAD)))
    assert removed == expected
    files = [p for p, v in after.items() if v[3] is not None]
    assert files and all(after[p] == before[p] for p in files)  # no other file changed
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_hardlink_plan_links_every_copy_to_the_kept_file(hostile, catalogue, tmp_path):
    _keep(catalogue, "keep me.stl")
    done = _run_sh(review.render_sh(review.plan_from_catalogue(catalogue, "hardlink")), tmp_path)
    assert done.returncode == 0, done.stderr
    kept = os.stat(hostile / "a" / "keep me.stl")
    for name in NAMES:
        assert os.stat(hostile / "a" / name).st_ino == kept.st_ino
    assert os.stat(os.path.join(os.fsencode(hostile / "b" / "-x"), BAD)).st_ino == kept.st_ino
    assert os.stat(hostile / "b" / "pair one.stl").st_nlink == 1


def test_quarantine_plan_moves_copies_under_their_own_path(hostile, catalogue, tmp_path):
    _keep(catalogue, "keep me.stl")
    quarantine = tmp_path / "quarantine $x"
    plan = review.plan_from_catalogue(catalogue, "quarantine", str(quarantine))
    done = _run_sh(review.render_sh(plan), tmp_path)
    assert done.returncode == 0, done.stderr
    assert (hostile / "a" / "keep me.stl").exists()
    for name in NAMES[1:]:
        assert not (hostile / "a" / name).exists()
        assert (quarantine / str(hostile / "a" / name).lstrip("/")).exists()
    moved = os.path.join(
        os.fsencode(quarantine), os.fsencode(hostile / "b" / "-x").lstrip(b"/"), BAD
    )
    assert os.path.exists(moved)


def test_a_copy_that_changed_or_a_kept_file_that_went_is_left_out(hostile, catalogue, tmp_path):
    _keep(catalogue, "keep me.stl")
    changed = hostile / "a" / "with space.stl"
    changed.write_bytes(os.urandom(3000))  # same size, other bytes, new mtime
    os.utime(changed, ns=(1, 1))
    update_inventory(catalogue, [hostile])  # the duplicates table still lists it
    plan = review.plan_from_catalogue(catalogue, "remove")
    assert "with space.stl" not in {os.path.basename(i.path) for i in plan.items}
    assert len(plan.items) == len(NAMES) - 1
    # and if the copy changes after the plan was made, cmp stops its command at run time
    script = review.render_sh(plan)
    other = hostile / "a" / "-"
    other.write_bytes(os.urandom(3000))
    assert _run_sh(script, tmp_path).returncode == 0
    assert other.exists()
    # the kept file gone: its group leaves the plan, and the header says so
    (hostile / "a" / "keep me.stl").unlink()
    update_inventory(catalogue, [hostile])
    plan = review.plan_from_catalogue(catalogue, "remove")
    assert plan.items == [] and plan.stale_groups == 1
    assert b"review them again" in review.render_sh(plan)


def test_keep_rules_pick_the_expected_copy(hostile, catalogue):
    later = time.time_ns() + 86400 * 10**9
    os.utime(hostile / "b" / "pair one.stl", ns=(later, later))  # the newer, though first
    run_chain(catalogue, [hostile])  # catalogued with that mtime, hashed again
    chosen = lambda con: dict(  # noqa: E731
        con.execute("SELECT size_bytes, keep_file_id FROM duplicate_reviews").fetchall()
    )
    with catalogue.connect() as con:
        ids = _ids(con)
        assert review.apply_rule(con, "newest") == 2
        assert chosen(con)[5000] == ids["pair one.stl"]
        review.apply_rule(con, "oldest")
        assert chosen(con)[5000] == ids["pair two.stl"]
        review.apply_rule(con, "lowest_id")
        assert chosen(con)[5000] == min(ids["pair one.stl"], ids["pair two.stl"])
        review.apply_rule(con, "shortest_path")
        assert chosen(con)[3000] == ids["-"]
        with pytest.raises(review.ReviewError):
            review.apply_rule(con, "prefer_root")
        with pytest.raises(review.ReviewError):
            review.keep_file(con, ids["unique.stl"])


def test_csv_and_json_plans_list_the_same_copies(hostile, catalogue):
    _keep(catalogue, "keep me.stl")
    plan = review.plan_from_catalogue(catalogue, "quarantine", "/q")
    rows = list(csv.DictReader(io.StringIO(review.render_csv(plan).decode().split("\n", 1)[1])))
    doc = json.loads(review.render_json(plan))
    assert (
        [r["path"] for r in rows]
        == [i["path"] for i in doc["items"]]
        == [i.path for i in plan.items]
    )
    assert all(r["target"].startswith("/q/") for r in rows)
    assert doc["copies"] == len(NAMES) and doc["note"].startswith("A dry plan")
