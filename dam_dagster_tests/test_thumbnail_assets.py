"""The thumbnail lanes as Dagster runs them: partitions, incremental work, failures that fail
the partition, retries of exactly the failed files, and what the catalogue then says."""

import base64
import os
import re
import shutil

import dagster as dg
import pytest

from dam_dagster import dedup_assets, thumbnail_assets
from dam_dagster.core.status import catalogue_status
from dam_dagster.core.store import Catalogue
from dam_dagster.core.thumbnails import plan_bucket, size_buckets
from dam_dagster.resources import CatalogueResource, LibraryResource, RenderResource

from .conftest import snapshot

MODELS = [
    "box.STL",
    "torus.STL",
    "idler_riser.STL",
    "Duck.glb",
    "fuze.obj",
    "fuze.obj.mtl",
    "fuze uv.jpg",
    "featuretype.3MF",
    "bunny.ply",
    "busted.STL",
    "empty.stl",
    "1002_tray_bottom.STL",
]  # the one file over 1 MiB


@pytest.fixture
def model_library(corpus, tmp_path):
    lib = tmp_path / "models"
    lib.mkdir()
    for name in MODELS:
        shutil.copy(corpus / name, lib / name)
    (lib / "copies").mkdir()
    shutil.copy(corpus / "torus.STL", lib / "copies" / "torus again.STL")  # identical content
    (lib / "sketch.scad").write_text("cube(10);\n")  # no renderer for it
    # truncated: the header promises 12 triangles, the file holds two
    (lib / "truncated.stl").write_bytes((corpus / "box.STL").read_bytes()[:184])
    return lib


def stl_variant(source, dest, tag: bytes) -> None:
    """The same model with another 80-byte header: other bytes, so no shared thumbnail."""
    data = bytearray(source.read_bytes())
    data[: len(tag)] = tag
    dest.write_bytes(bytes(data))


def resources(lib, data, **render):
    return {
        "library": LibraryResource(roots=str(lib)),
        "catalogue": CatalogueResource(data_dir=str(data)),
        "renderer": RenderResource(**render),
    }


def inventory(lib, data, instance=None):
    assert dg.materialize(
        [dedup_assets.file_inventory], resources=resources(lib, data), instance=instance
    ).success


def render(lib, data, partition="<1MB", instance=None, **cfg):
    return dg.materialize(
        [thumbnail_assets.thumbnails_fast],
        partition_key=partition,
        resources=resources(lib, data, **cfg),
        instance=instance,
        raise_on_error=False,
    )


def rows(data) -> dict[str, tuple]:
    with Catalogue(data).connect(write=False) as con:
        return {
            r[0]: r[1:]
            for r in con.execute("""
            SELECT f.rel_path, t.status, t.source, t.thumbnail_relpath, t.rendered_at, t.transient
            FROM thumbnails t JOIN file_inventory f USING (file_id)""").fetchall()
        }


def test_a_partition_renders_its_models_and_says_what_it_did(model_library, tmp_path):
    data = tmp_path / "data"
    before = snapshot(model_library)
    inventory(model_library, data)
    result = render(model_library, data)
    assert result.success
    [mat] = result.asset_materializations_for_node("thumbnails_fast")
    meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    got = rows(data)
    # every model and image under 1 MiB went through the lane, nothing else (not the .mtl,
    # not the tray: over 1 MiB, it belongs to the next bucket)
    assert set(got) == {n for n in MODELS if n not in ("fuze.obj.mtl", "1002_tray_bottom.STL")} | {
        "copies/torus again.STL",
        "sketch.scad",
        "truncated.stl",
    }
    assert got["busted.STL"][0] == "ok"  # a valid file holding a broken mesh still draws
    assert got["truncated.stl"][0] == "failed" and got["truncated.stl"][4] is False
    assert got["empty.stl"][0] == "failed"
    assert got["sketch.scad"][0] == "unsupported"
    assert got["fuze uv.jpg"][:2] == ("ok", "image")
    # identical files share one PNG, rendered once
    assert got["copies/torus again.STL"][2] == got["torus.STL"][2]
    assert {got["copies/torus again.STL"][1], got["torus.STL"][1]} == {"render", "cache"}
    assert meta["failed"] == 2 and meta["rendered"] >= 4 and meta["files per second"] > 0
    # one vocabulary: "failed" never counts the unsupported format, in metadata or the log
    assert meta["unsupported"] == 1 and meta["status: unsupported"] == 1
    failures = meta["failures (partition now)"]
    assert "truncated.stl" in failures and "empty.stl" in failures and "sketch.scad" not in failures
    assert meta["partition now: failed"] == 2 and meta["partition now: unsupported"] == 1
    assert meta["in the library browser"] == "http://127.0.0.1:3001/?bucket=%3C1MB&kind=all"
    docs = {c.name: c.description for c in meta["dagster/column_schema"].columns}
    assert "unsupported is counted apart" in docs["status"]
    sheet = re.search(r"data:image/(png|jpeg|webp);base64,([A-Za-z0-9+/=]+)", meta["contact sheet"])
    assert sheet and len(base64.b64decode(sheet.group(2))) < 60_000
    # the catalogue's views and figures agree
    with Catalogue(data).connect(write=False) as con:
        paths = con.execute("SELECT thumbnail_path FROM models WHERE has_thumbnail = 1").fetchall()
    assert paths and all(os.path.isabs(p) and os.path.exists(p) for (p,) in paths)
    status = catalogue_status(Catalogue(data))
    assert status["thumbnails_ok"] == sum(1 for r in got.values() if r[0] == "ok")
    assert status["thumbnails_failed"] == 2 and status["thumbnails_unsupported"] == 1
    assert snapshot(model_library) == before  # nothing written inside the library


def test_second_run_renders_nothing_and_a_changed_file_alone(model_library, tmp_path):
    data = tmp_path / "data"
    inventory(model_library, data)
    assert render(model_library, data).success
    first = rows(data)
    again = render(model_library, data)
    [mat] = again.asset_materializations_for_node("thumbnails_fast")
    assert mat.metadata["files to render"].value == 0
    # a clean run still shows the partition's standing failures: the files have no thumbnail
    assert mat.metadata["failed"].value == 0 and mat.metadata["partition now: failed"].value == 2
    assert "truncated.stl" in mat.metadata["failures (partition now)"].value
    assert rows(data) == first  # permanent failures are not retried either
    stl_variant(model_library / "box.STL", model_library / "box.STL", b"edited box")
    inventory(model_library, data)
    third = render(model_library, data)
    [mat] = third.asset_materializations_for_node("thumbnails_fast")
    assert mat.metadata["files to render"].value == 1
    now = rows(data)
    assert now["box.STL"][3] > first["box.STL"][3]
    assert {k: v for k, v in now.items() if k != "box.STL"} == {
        k: v for k, v in first.items() if k != "box.STL"
    }


def test_a_hung_render_fails_the_partition_and_a_rerun_retries_only_it(
    model_library, tmp_path, monkeypatch
):
    data = tmp_path / "data"
    stl_variant(model_library / "torus.STL", model_library / "stuck_hang.stl", b"stuck")
    inventory(model_library, data)
    monkeypatch.setenv("DAM_RENDER_TEST_HANG_SUFFIX", "_hang.stl")
    failed = render(model_library, data, fast_timeout_s=3)
    assert not failed.success
    [failure] = [e for e in failed.all_events if e.is_step_failure]
    assert (
        "1 file(s) failed for a reason that may pass"
        in failure.step_failure_data.user_failure_data.description
    )
    first = rows(data)
    assert first["stuck_hang.stl"][0] == "timeout" and first["stuck_hang.stl"][4] is True
    assert first["box.STL"][0] == "ok"  # the rest of the partition completed

    monkeypatch.delenv("DAM_RENDER_TEST_HANG_SUFFIX")
    retry = render(model_library, data)
    assert retry.success
    [mat] = retry.asset_materializations_for_node("thumbnails_fast")
    assert mat.metadata["files to render"].value == 1
    second = rows(data)
    assert second["stuck_hang.stl"][0] == "ok"
    assert {k: v for k, v in second.items() if k != "stuck_hang.stl"} == {
        k: v for k, v in first.items() if k != "stuck_hang.stl"
    }


def test_a_lost_png_is_rendered_again(model_library, tmp_path):
    data = tmp_path / "data"
    inventory(model_library, data)
    assert render(model_library, data).success
    png = data / "thumbnails" / rows(data)["box.STL"][2]
    png.unlink()
    [mat] = render(model_library, data).asset_materializations_for_node("thumbnails_fast")
    assert mat.metadata["files to render"].value == 1 and png.exists()


def test_row_count_is_the_partitions_and_an_empty_bucket_is_not_green(model_library, tmp_path):
    data = tmp_path / "data"
    instance = dg.DagsterInstance.get()
    inventory(model_library, data, instance=instance)
    assert render(model_library, data, instance=instance).success
    tray = render(model_library, data, partition="1-5MB", instance=instance)
    [mat] = tray.asset_materializations_for_node("thumbnails_fast")
    assert mat.metadata["dagster/row_count"].value == 1  # the tray alone, not the whole table
    assert mat.metadata["rows in the thumbnails table (both lanes)"].value > 1
    empty = render(model_library, data, partition="5-30MB", instance=instance)
    assert empty.success and not empty.asset_materializations_for_node("thumbnails_fast")
    [observed] = [e for e in empty.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    assert observed.event_specific_data.asset_observation.metadata["files in the bucket"].value == 0
    done = instance.get_materialized_partitions(dg.AssetKey("thumbnails_fast"))
    assert done == {"<1MB", "1-5MB"}  # the empty bucket does not show as materialized


def test_buckets_split_the_lanes_by_size(model_library, tmp_path):
    data = tmp_path / "data"
    inventory(model_library, data)
    buckets = {b.key: b for b in size_buckets(1)}  # a 1 MiB threshold, for small files
    cat = Catalogue(data)
    fast = plan_bucket(cat, buckets["<1MB"], 256, "transparent")
    slow = plan_bucket(cat, buckets["1-5MB"], 256, "transparent")
    assert all(t.size_bytes < 1024 * 1024 for t in fast.tasks)
    assert [os.path.basename(t.path) for t in slow.tasks] == ["1002_tray_bottom.STL"]
    keys = [b.key for b in size_buckets(30)]
    assert keys == ["<1MB", "1-5MB", "5-30MB", "30-100MB", "100-500MB", ">=500MB"]
    assert [b.lane for b in size_buckets(30)] == ["fast"] * 3 + ["slow"] * 3


def test_thumbnails_follow_the_inventory_on_their_own(model_library, tmp_path):
    instance = dg.DagsterInstance.get()
    defs = dg.Definitions(
        assets=dedup_assets.ASSETS + thumbnail_assets.ASSETS,
        asset_checks=dedup_assets.CHECKS + thumbnail_assets.CHECKS,
        resources=resources(model_library, tmp_path / "data"),
    )
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    inventory(model_library, tmp_path / "data", instance=instance)
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    requested = {r.key.to_user_string(): r.true_subset for r in tick.results if r.true_subset.size}
    assert requested["thumbnails_fast"].size == 3 and requested["thumbnails_slow"].size == 3


def test_a_new_thumbnail_size_redoes_the_pngs(model_library, tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    inventory(model_library, data)
    assert render(model_library, data).success
    ok = sum(1 for r in rows(data).values() if r[0] == "ok")
    result = render(model_library, data, thumbnail_size=128)
    [mat] = result.asset_materializations_for_node("thumbnails_fast")
    assert mat.metadata["files to render"].value == ok
    png = data / "thumbnails" / rows(data)["box.STL"][2]
    assert Image.open(png).size == (128, 128)
