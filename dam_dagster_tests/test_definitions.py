"""The code location loads, and its graph is the one DESIGN.md draws."""

import dagster as dg

from dam_dagster.definitions import defs
from dam_dagster.home import prepare_dagster_home


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    chain = [
        "file_inventory",
        "partial_hashes",
        "collision_candidates",
        "full_hashes",
        "duplicates",
    ]
    for upstream, downstream in zip(chain, chain[1:]):
        assert graph.get(dg.AssetKey(downstream)).parent_keys == {dg.AssetKey(upstream)}
    # the dedup chain follows the inventory on its own; the inventory itself is sensor-driven
    for key in chain[1:]:
        assert graph.get(dg.AssetKey(key)).automation_condition is not None
    assert graph.get(dg.AssetKey("file_inventory")).automation_condition is None
    checks = {c.name for c in graph.asset_check_keys}
    assert {"duplicates_are_consistent", "candidates_have_full_hashes"} <= checks
    from dam_dagster.dedup_assets import duplicates_are_consistent

    [spec] = duplicates_are_consistent.check_specs
    assert spec.blocking and spec.asset_key == dg.AssetKey("duplicates")


def test_sensors_run_by_default():
    sensors = {s.name: s for s in defs.sensors}
    assert set(sensors) == {"library_sensor", "dam_automation", "dam_dead_runs", "dam_loaders"}
    for sensor in sensors.values():
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_sensor_targets_read_as_words_in_the_ui():
    sensors = {s.name: s for s in defs.sensors}
    # the UI shows str(selection): a selection string, not a Python repr
    assert str(sensors["dam_automation"].asset_selection) == 'group:"dedup" or group:"thumbnails"'
    graph = defs.resolve_asset_graph()
    checks = sensors["dam_automation"].asset_selection.resolve_checks(graph)
    assert {c.name for c in checks} == {c.name for c in graph.asset_check_keys}
    # a run per partition, not a backfill: an empty bucket (observed, not materialized) would
    # count as a failed partition of a backfill
    assert not sensors["dam_automation"].emit_backfills
    # library_sensor launches a named job, so its runs show a target
    assert sensors["library_sensor"].job_name == "file_inventory_job"


def test_one_vocabulary_of_thumbnail_figures():
    from dam_dagster.core.vocabulary import thumbnail_summary

    summary = thumbnail_summary({"ok": 3, "failed": 1, "timeout": 1, "unsupported": 2})
    assert summary == "3 ok, 2 failed (1 timeout), 2 unsupported"


def test_catalogue_writers_share_one_pool():
    for key in [
        "file_inventory",
        "partial_hashes",
        "collision_candidates",
        "full_hashes",
        "duplicates",
    ]:
        assert defs.resolve_assets_def(key).node_def.pool == "dam_catalogue"


def test_dagster_yaml_is_a_valid_instance_config(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    home = prepare_dagster_home()
    assert (home / "dagster.yaml").exists()
    instance = dg.DagsterInstance.get()
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 10
    assert instance.get_concurrency_config().pool_config.pool_granularity.value == "run"
    # never overwritten: edits stick
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    prepare_dagster_home()
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"


def test_every_setting_is_documented_with_its_default():
    from pathlib import Path

    from dam_dagster.core.config import SETTINGS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "CONFIGURATION.md").read_text()
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[2].strip(" `")
        for line in doc.splitlines()
        if line.startswith("| `DAM_")
    }
    for setting in SETTINGS:
        assert setting.name in rows, f"{setting.name} is not in docs/CONFIGURATION.md"
        if setting.default not in ("",):
            assert rows[setting.name] == setting.default, setting.name
