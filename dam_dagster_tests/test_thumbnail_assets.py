"""The thumbnail lanes as Dagster runs them: partitions, incremental work, failures that fail
the partition, retries of exactly the failed files, and what the catalogue then says."""

import base64
import os
import re
import shutil

import dagster as dg
import pytest

from dam_dagster import dedup_assets, similar_assets, thumbnail_assets
from dam_dagster.core.similar import similar_groups
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


# -- what the lanes measure, and when they do it again --------------------------------------


def facts_rows(data) -> dict[str, dict]:
    with Catalogue(data).connect(write=False) as con:
        cur = con.execute(
            "SELECT f.rel_path, m.* FROM model_facts m JOIN file_inventory f USING (file_id)"
        )
        names = [d[0] for d in cur.description]
        return {r[0]: dict(zip(names[1:], r[1:])) for r in cur.fetchall()}


def test_the_lanes_measure_every_model_and_the_views_show_it(
    corpus, model_library, tmp_path, monkeypatch
):
    import trimesh

    from . import slicer_files as sf

    monkeypatch.setenv("DAM_PRINTERS", "Small=8x5x4, Turned=5x8x4, Big=300x300x300")
    data = tmp_path / "data"
    torus = trimesh.load(corpus / "torus.STL")
    (model_library / "torus ascii.stl").write_text(trimesh.exchange.stl.export_stl_ascii(torus))
    (model_library / "print.gcode").write_bytes(sf.prusa_gcode())
    shutil.copy(corpus / "featuretype.STEP", model_library / "featuretype.STEP")
    inventory(model_library, data)
    assert render(model_library, data, partition="1-5MB").success  # the tray, the ASCII torus
    result = render(model_library, data)
    assert result.success
    [mat] = result.asset_materializations_for_node("thumbnails_fast")
    got, measured = rows(data), facts_rows(data)
    ok_models = {n for n, r in got.items() if r[0] == "ok" and not n.endswith(".jpg")}
    assert ok_models <= set(measured), ok_models - set(measured)
    assert mat.metadata["models measured (model_facts rows)"].value == len(measured) - 2
    box = trimesh.load(corpus / "box.STL")
    with Catalogue(data).connect(write=False) as con:
        cols = (
            "triangles, size_x_mm, size_y_mm, size_z_mm, area_mm2, volume_mm3, watertight, "
            "fits_printers, fingerprint, printer, print_time_s"
        )
        view = {
            os.path.basename(r[0]): r[1:]
            for r in con.execute(f"SELECT path, {cols} FROM models").fetchall()
        }
    tri, sx, sy, sz, area, volume, watertight, fits, _, _, _ = view["box.STL"]
    assert tri == len(box.faces) and watertight is True
    assert [sx, sy, sz] == pytest.approx(list(box.extents), rel=1e-6)
    assert area == pytest.approx(box.area, rel=1e-6) and volume == pytest.approx(box.volume)
    # 7.25 x 4.5 x 3.75 mm: in the small printer as it lies, in the other turned a quarter
    assert fits == ["Big", "Small", "Turned"]
    assert view["busted.STL"][7] == ["Big"]  # 10.7 x 11.4 x 9.6 mm
    assert view["Duck.glb"][7] == []  # 1.65 m tall (glTF is in metres)
    assert view["featuretype.STEP"][1] == pytest.approx(127.0)  # rendered, in mm
    assert view["print.gcode"][9] == "MK4S" and view["print.gcode"][10] == 3723.0
    assert view["torus.STL"][8] == view["torus ascii.stl"][8] == view["torus again.STL"][8]
    assert view["box.STL"][8] != view["torus.STL"][8]
    assert "sketch.scad" not in measured and "truncated.stl" not in measured


def test_similar_models_groups_the_same_mesh_in_other_bytes(corpus, model_library, tmp_path):
    import trimesh

    data = tmp_path / "data"
    torus = trimesh.load(corpus / "torus.STL")
    (model_library / "torus ascii.stl").write_text(trimesh.exchange.stl.export_stl_ascii(torus))
    torus.export(model_library / "torus.obj")
    inventory(model_library, data)
    assert render(model_library, data).success
    assert render(model_library, data, partition="1-5MB").success  # the ASCII STL: 2.3 MB
    result = dg.materialize(
        [similar_assets.similar_models], resources=resources(model_library, data)
    )
    assert result.success
    [mat] = result.asset_materializations_for_node("similar_models")
    assert mat.metadata["groups"].value == 1
    [group] = similar_groups(Catalogue(data))
    names = sorted(os.path.relpath(p, model_library) for p in group.members)
    assert names == ["copies/torus again.STL", "torus ascii.stl", "torus.STL", "torus.obj"]
    # the two byte-identical copies are said to be so
    assert sorted(os.path.basename(p) for p in group.exact_duplicates[0]) == [
        "torus again.STL",
        "torus.STL",
    ]
    with Catalogue(data).connect(write=False) as con:
        ids = con.execute(
            "SELECT count(DISTINCT similar_group_id), count(*) FROM models "
            "WHERE similar_group_id IS NOT NULL"
        ).fetchone()
    assert ids == (1, 4)


def test_installing_a_loader_replans_exactly_its_unsupported_files(
    corpus, model_library, tmp_path, monkeypatch
):
    """A STEP file rendered while cascadio could not be imported is 'unsupported'; once the
    working cascadio is back on the path the next run renders it, and nothing else."""
    data = tmp_path / "data"
    shutil.copy(corpus / "featuretype.STEP", model_library / "featuretype.STEP")
    # a broken install that shadows the real one: a newer version that does not import
    shadow = tmp_path / "shadow"
    (shadow / "cascadio").mkdir(parents=True)
    (shadow / "cascadio" / "__init__.py").write_text("raise ImportError('broken build')\n")
    dist = shadow / "cascadio-99.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cascadio\nVersion: 99.0\n")
    monkeypatch.syspath_prepend(str(shadow))
    inventory(model_library, data)
    assert render(model_library, data).success
    before = rows(data)
    assert before["featuretype.STEP"][0] == "unsupported"
    with Catalogue(data).connect(write=False) as con:
        caps = con.execute(
            "SELECT capabilities FROM thumbnails JOIN file_inventory USING (file_id) "
            "WHERE rel_path = 'featuretype.STEP'"
        ).fetchone()[0]
    assert "cascadio 99.0" in caps
    # nothing changed: nothing to do
    again = render(model_library, data)
    [mat] = again.asset_materializations_for_node("thumbnails_fast")
    assert mat.metadata["files to render"].value == 0
    monkeypatch.undo()  # the shadow goes: the real cascadio is found again
    import sys

    sys.modules.pop("cascadio", None)
    after_fix = render(model_library, data)
    [mat] = after_fix.asset_materializations_for_node("thumbnails_fast")
    assert mat.metadata["retried: the format's loader changed"].value == 1
    assert mat.metadata["files to render"].value == 1
    after = rows(data)
    assert after["featuretype.STEP"][:2] == ("ok", "render")
    assert {k: v for k, v in after.items() if k != "featuretype.STEP"} == {
        k: v for k, v in before.items() if k != "featuretype.STEP"
    }


def test_retry_by_config_or_tag_renders_failed_files_again(model_library, tmp_path):
    data = tmp_path / "data"
    inventory(model_library, data)
    assert render(model_library, data).success
    assert rows(data)["truncated.stl"][0] == "failed"
    # the file is mended in place, keeping its size and mtime (restored from a backup, say):
    # nothing tells the pipeline, so only a retry renders it
    path = model_library / "truncated.stl"
    st = path.stat()
    fixed = bytearray(path.read_bytes())
    fixed[80:84] = (2).to_bytes(4, "little")  # the header now says the two triangles it has
    path.write_bytes(bytes(fixed))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    plain = render(model_library, data)
    [mat] = plain.asset_materializations_for_node("thumbnails_fast")
    assert mat.metadata["files to render"].value == 0
    by_config = dg.materialize(
        [thumbnail_assets.thumbnails_fast],
        partition_key="<1MB",
        resources=resources(model_library, data),
        run_config={"ops": {"thumbnails_fast": {"config": {"retry": "failed"}}}},
    )
    [mat] = by_config.asset_materializations_for_node("thumbnails_fast")
    assert mat.metadata["retried: asked for"].value == 2  # truncated.stl and empty.stl
    assert rows(data)["truncated.stl"][0] == "ok" and rows(data)["empty.stl"][0] == "failed"
    by_tag = dg.materialize(
        [thumbnail_assets.thumbnails_fast],
        partition_key="<1MB",
        resources=resources(model_library, data),
        tags={"dam/retry": "unsupported"},
    )
    [mat] = by_tag.asset_materializations_for_node("thumbnails_fast")
    assert mat.metadata["retried: asked for"].value == 1  # sketch.scad, still unsupported
    assert rows(data)["sketch.scad"][0] == "unsupported"


def test_rows_from_before_the_facts_are_measured_without_rendering_again(model_library, tmp_path):
    data = tmp_path / "data"
    inventory(model_library, data)
    assert render(model_library, data).success
    first = rows(data)
    png = data / "thumbnails" / first["box.STL"][2]
    png_mtime = png.stat().st_mtime_ns
    with Catalogue(data).connect() as con:  # as an older release left them
        con.execute("DELETE FROM model_facts")
        con.execute("UPDATE thumbnails SET renderer_version = NULL, capabilities = NULL")
    again = render(model_library, data)
    [mat] = again.asset_materializations_for_node("thumbnails_fast")
    measured = facts_rows(data)
    ok = {n for n, r in first.items() if r[0] == "ok" and not n.endswith(".jpg")}
    # OBJ and PLY are drawn by newer code than the 'version 1' of rows without a record:
    # those are rendered again; every other model is only read and measured
    redone = {"fuze.obj", "bunny.ply"}
    assert mat.metadata["retried: made by older code for the format"].value == len(redone)
    assert mat.metadata["measured only (thumbnail current)"].value == len(ok - redone)
    assert ok <= set(measured)
    second = rows(data)
    assert png.stat().st_mtime_ns == png_mtime  # no PNG written again
    for name in ok - redone:
        assert second[name] == first[name], name  # the thumbnail rows are left alone
    for name in redone:
        assert second[name][3] > first[name][3] and second[name][1] == "render"


def test_similar_models_follows_a_lane_even_while_other_partitions_are_missing(
    model_library, tmp_path
):
    instance = dg.DagsterInstance.get()
    defs = dg.Definitions(
        assets=dedup_assets.ASSETS + thumbnail_assets.ASSETS + similar_assets.ASSETS,
        resources=resources(model_library, tmp_path / "data"),
    )
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    inventory(model_library, tmp_path / "data", instance=instance)
    assert render(model_library, tmp_path / "data", instance=instance).success  # one partition
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    requested = {r.key.to_user_string() for r in tick.results if r.true_subset.size}
    assert "similar_models" in requested  # five partitions have never materialized


def test_the_loaders_sensor_asks_the_partitions_made_by_other_loaders(model_library, tmp_path):
    data = tmp_path / "data"
    catalogue = CatalogueResource(data_dir=str(data))

    def tick(cursor=None):
        context = dg.build_sensor_context(cursor=cursor, resources={"catalogue": catalogue})
        return thumbnail_assets.loaders_sensor(context)

    assert isinstance(tick(), dg.SkipReason)  # no catalogue yet: nothing to re-plan
    inventory(model_library, data)
    assert render(model_library, data).success
    first = tick()  # a first look (a new daemon): every row was made by these loaders
    assert not first.run_requests and first.cursor
    assert isinstance(tick(first.cursor), dg.SkipReason)  # the same loaders: not even a look
    with Catalogue(data).connect() as con:  # as after an upgrade of our STL code
        con.execute(
            "UPDATE thumbnails SET renderer_version = replace(renderer_version, 'stl/', 'x')"
        )
    upgraded = tick("older")
    asked = [(r.job_name, r.partition_key) for r in upgraded.run_requests]
    assert asked == [("thumbnails_fast_job", "<1MB")] and upgraded.cursor == first.cursor
    small = thumbnail_assets.BUCKETS["<1MB"]
    assert plan_bucket(Catalogue(data), small, 256, "transparent").renderer_changed
