"""Real Dagster runs of the dedup chain: in-process, through the `dagster` command line, and
the automation that carries the chain after the inventory, on a real instance."""

import os
import subprocess

import dagster as dg

from dam_dagster import dedup_assets
from dam_dagster.core.store import Catalogue
from dam_dagster.home import prepare_dagster_home
from dam_dagster.resources import CatalogueResource, LibraryResource
from dam_dagster.sensors import library_sensor

from .conftest import BIN, brute_force_groups, catalogue_groups

CHAIN = dedup_assets.ASSETS + dedup_assets.CHECKS


def resources(library, data):
    return {
        "library": LibraryResource(roots=str(library)),
        "catalogue": CatalogueResource(data_dir=str(data)),
    }


def meta(result, key):
    [mat] = list(result.asset_materializations_for_node(key))
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def test_materialize_reports_what_a_person_wants_to_see(hard_library, tmp_path):
    instance = dg.DagsterInstance.get()
    result = dg.materialize(
        CHAIN, resources=resources(hard_library, tmp_path / "data"), instance=instance
    )
    assert result.success
    inv = meta(result, "file_inventory")
    assert inv["files seen"] == sum(1 for p in hard_library.rglob("*") if p.is_file())
    assert inv["new files"] == inv["files seen"] and inv["gone files"] == 0
    assert inv["dagster/row_count"] == inv["files seen"]
    assert {c.name for c in inv["dagster/column_schema"].columns} >= {
        "file_id",
        "path",
        "size_bytes",
    }
    dup = meta(result, "duplicates")
    expected = brute_force_groups(hard_library)
    assert dup["duplicate groups"] == len(expected)
    assert dup["duplicate files"] == sum(len(v) - 1 for v in expected.values())
    assert dup["reclaimable bytes"] == sum(
        os.path.getsize(v[0]) * (len(v) - 1) for v in expected.values()
    )
    assert "big/part" in dup["largest groups"]  # the largest group leads the table
    # the table has a row per member: the figure beside the row count says so
    assert dup["dagster/row_count"] == dup["duplicate files"] + dup["duplicate groups"]
    assert (
        dup["files in duplicate groups (table rows: originals + duplicate files)"]
        == dup["dagster/row_count"]
    )
    assert dup["review them in the library browser"] == "http://127.0.0.1:3001/duplicates"
    assert "(http://127.0.0.1:3001/duplicates)" in dup["largest groups"]
    docs = {c.name: c.description for c in dup["dagster/column_schema"].columns}
    assert all(docs.values()) and "the original included" in docs["file_id"]
    assert meta(result, "partial_hashes")["files skipped: unique size (tier 0)"] > 0
    assert meta(result, "collision_candidates")["empty files (zero bytes, not grouped)"] == 3
    checks = result.get_asset_check_evaluations()
    assert {c.check_name: c.passed for c in checks} == {
        "duplicates_are_consistent": True,
        "candidates_have_full_hashes": True,
    }

    # an unchanged second run reads nothing, as its metadata says
    again = dg.materialize(
        CHAIN, resources=resources(hard_library, tmp_path / "data"), instance=instance
    )
    assert meta(again, "partial_hashes")["bytes read"] == 0
    assert meta(again, "full_hashes")["bytes read"] == 0


def test_missing_root_fails_the_inventory_with_a_clear_message(tmp_path):
    result = dg.materialize(
        CHAIN, resources=resources(tmp_path / "unmounted", tmp_path / "d"), raise_on_error=False
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert (
        "does not exist (is the share mounted?)"
        in failure.step_failure_data.user_failure_data.description
    )


def test_chain_through_the_dagster_command_line(hard_library, tmp_path):
    env = {
        **os.environ,
        "DAM_LIBRARY_ROOTS": str(hard_library),
        "DAM_DATA_DIR": str(tmp_path / "data"),
        "DAGSTER_HOME": str(tmp_path / "home"),
    }
    (tmp_path / "home").mkdir()
    proc = subprocess.run(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "dam_dagster.definitions",
            "--select",
            "*duplicates",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RUN_SUCCESS" in proc.stdout + proc.stderr
    assert catalogue_groups(Catalogue(tmp_path / "data")) == brute_force_groups(hard_library)


def test_automation_carries_the_chain_after_the_inventory(hard_library, tmp_path):
    prepare_dagster_home()  # the project's dagster.yaml, a real sqlite-backed instance
    instance = dg.DagsterInstance.get()
    defs = dg.Definitions(
        assets=dedup_assets.ASSETS,
        asset_checks=dedup_assets.CHECKS,
        resources=resources(hard_library, tmp_path / "data"),
    )

    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.total_requested == 0  # nothing moves before an inventory exists

    dg.materialize(
        [dedup_assets.file_inventory],
        resources=resources(hard_library, tmp_path / "data"),
        instance=instance,
    )
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    requested = {r.key.to_user_string() for r in tick.results if r.true_subset.size}
    # the whole chain and its checks, in one evaluation: one run, not four
    assert {"partial_hashes", "collision_candidates", "full_hashes", "duplicates"} <= requested
    assert "file_inventory" not in requested
    assert any("duplicates_are_consistent" in k for k in requested)

    # the sensor would launch exactly that; run it, then nothing is left to do
    dg.materialize(
        CHAIN,
        resources=resources(hard_library, tmp_path / "data"),
        instance=instance,
        selection="*duplicates",
    )
    quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert quiet.total_requested == 0


def test_library_sensor_skips_with_the_reason_when_a_root_is_missing(tmp_path):
    res = {
        "library": LibraryResource(roots=str(tmp_path / "unmounted")),
        "catalogue": CatalogueResource(data_dir=str(tmp_path / "data")),
    }
    with dg.build_sensor_context(resources=res) as ctx:
        result = library_sensor(ctx)
    assert isinstance(result, dg.SkipReason) and "does not exist" in result.skip_message


def test_unset_roots_fail_with_guidance(tmp_path):
    result = dg.materialize(
        CHAIN,
        resources=resources("", tmp_path / "d"),
        raise_on_error=False,
        selection="file_inventory",
    )
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "DAM_LIBRARY_ROOTS is not set" in failure.step_failure_data.user_failure_data.description
