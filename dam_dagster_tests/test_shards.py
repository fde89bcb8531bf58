"""Render partitions split finer than size buckets (DAM_RENDER_SHARDS), so that many machines
share one bucket: by a stable hash of the path, each file in exactly one shard, one run per
shard, a shard rendered (or backfilled) alone."""

import hashlib
import json
import os
import shutil
import subprocess

from dam_dagster.core.inventory import update_inventory
from dam_dagster.core.thumbnails import (
    partition_key,
    path_shard,
    plan_bucket,
    plan_buckets,
    render_partitions,
    size_buckets,
)
from dam_dagster.core.walk import PathFilter

from .conftest import BIN, PROJECT

MODELS = ["box.STL", "torus.STL", "teapot.stl", "cylinder.stl", "round.stl", "angle_block.STL"]


def test_one_shard_keeps_the_size_buckets_and_their_keys():
    assert render_partitions(30) == size_buckets(30) == render_partitions(30, 1)
    keys = [b.key for b in render_partitions(30, 4)]
    assert keys[:4] == [f"<1MB shard {i} of 4" for i in (1, 2, 3, 4)]
    assert len(keys) == 24 and len(set(keys)) == 24
    assert {b.bucket_key for b in render_partitions(30, 4)} == {b.key for b in size_buckets(30)}


def test_the_shard_of_a_path_is_the_md5_of_the_path():
    path = "/lib/a folder/teapot.stl"
    expected = int(hashlib.md5(path.encode()).hexdigest()[:8], 16) % 5
    assert path_shard(path, 5) == expected
    assert partition_key("<1MB", path, 5) == f"<1MB shard {expected + 1} of 5"
    assert partition_key("<1MB", path, 1) == "<1MB"


def test_the_shards_of_a_bucket_split_its_files_exactly(corpus, tmp_path, catalogue):
    lib = next(  # a folder whose 24 paths fall in all three shards (nearly any: 1 in 550 not)
        lib
        for lib in (tmp_path / f"lib{k}" for k in range(100))
        if len({path_shard(str(lib / f"f{i}" / n), 3) for i in range(4) for n in MODELS}) == 3
    )
    for i in range(4):  # 24 files, the same few models in four folders
        (lib / f"f{i}").mkdir(parents=True)
        for name in MODELS:
            shutil.copy(corpus / name, lib / f"f{i}" / name)
    update_inventory(catalogue, [lib], PathFilter())
    whole = plan_bucket(catalogue, size_buckets(30)[0], 256, "transparent")
    assert whole.in_bucket == 24
    seen: dict[str, int] = {}
    for part in render_partitions(30, 3)[:3]:  # the three shards of <1MB
        plan = plan_bucket(catalogue, part, 256, "transparent")
        for task in plan.tasks:
            assert task.path not in seen  # in one shard only
            seen[task.path] = part.shard
            assert path_shard(task.path, 3) == part.shard  # SQL and Python agree
    assert sorted(seen) == sorted(t.path for t in whole.tasks)  # and in one at least
    assert len(set(seen.values())) == 3  # every shard holds some of them


def test_a_shard_partition_renders_its_files_only(corpus, tmp_path):
    data = tmp_path / "data"
    # a library folder whose paths fall in both shards (the shard hashes the whole path, so
    # with six files and a temporary folder all could land in one: 1 time in 64)
    lib = next(
        lib
        for lib in (tmp_path / f"lib{k}" for k in range(100))
        if len({path_shard(str(lib / n), 2) for n in MODELS}) == 2
    )
    lib.mkdir()
    for name in MODELS:
        shutil.copy(corpus / name, lib / name)
    # the partitions are made when the code location loads: a process with 2 shards
    script = """
import json, sys
import dagster as dg
from dam_dagster import dedup_assets, thumbnail_assets
from dam_dagster.core.store import Catalogue
from dam_dagster.resources import CatalogueResource, LibraryResource, RenderResource
res = {"library": LibraryResource(roots=sys.argv[1]),
       "catalogue": CatalogueResource(data_dir=sys.argv[2]),
       "renderer": RenderResource(fast_workers=1)}
assert dg.materialize([dedup_assets.file_inventory], resources=res).success
keys = thumbnail_assets.fast_partitions.get_partition_keys()
result = dg.materialize([thumbnail_assets.thumbnails_fast], partition_key="<1MB shard 2 of 2",
                        resources=res)
with Catalogue(sys.argv[2]).connect(write=False) as con:
    done = [r[0] for r in con.execute(
        "SELECT f.path FROM thumbnails t JOIN file_inventory f USING (file_id)").fetchall()]
print(json.dumps({"keys": keys, "success": result.success, "rendered": sorted(done)}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAM_")}
    env["DAM_RENDER_SHARDS"] = "2"
    out = subprocess.run(
        [str(BIN / "python"), "-c", script, str(lib), str(data)],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["keys"][:2] == ["<1MB shard 1 of 2", "<1MB shard 2 of 2"]
    assert got["success"]
    expected = sorted(str(lib / n) for n in MODELS if path_shard(str(lib / n), 2) == 1)
    assert expected and got["rendered"] == expected  # the other shard's files untouched


def test_a_big_partition_is_planned_within_the_catalogue_memory_limit(
    tmp_path, catalogue, monkeypatch
):
    """Planning a partition reads its models with their thumbnail and facts rows, and the zips
    its members come from in a query of their own. Joined in one query to the whole
    inventory, the zips ran a million-model partition out of DuckDB's 256 MB (`dam run` and
    the render lanes stopped on an OutOfMemoryException); now it plans in 96 MB. Here 300,000
    models (rows added to a real catalogue, as a walk would have written them) at 64 MB: the
    one query needed 128-256 MB for them, the two need 32-64 MB."""
    import zipfile

    from dam_dagster.core import store
    from dam_dagster.core.archives import MEMBER_MARK

    lib = tmp_path / "lib"
    lib.mkdir()
    with zipfile.ZipFile(lib / "a.zip", "w") as z:
        z.writestr("inside/part.stl", "solid p\nendsolid p\n")
    update_inventory(catalogue, [lib])
    with catalogue.connect(write=True) as con:
        con.execute(
            """INSERT INTO file_inventory SELECT 1000000 + i,
                   '/lib/folder ' || (i // 100) || '/model ' || i || '.stl', NULL, '/lib',
                   'folder ' || (i // 100) || '/model ' || i || '.stl', '.stl',
                   100 + i % 1000, 1, 1, true, now(), now(), NULL, NULL, NULL
               FROM range(300000) t(i)"""
        )
    monkeypatch.setitem(store.DUCKDB_CONFIG, "memory_limit", "64MB")
    plans = plan_buckets(catalogue, list(render_partitions(30, 1)), 256, "transparent")
    assert sum(len(p.tasks) for p in plans) == len(plans[0].tasks) == 300_001
    member = next(t for t in plans[0].tasks if t.key < 1_000_000)
    assert member.path == f"{lib / 'a.zip'}{MEMBER_MARK}inside/part.stl"  # its zip, looked up
