"""End to end on a running instance, as a person uses it: `dagster dev` (webserver and daemon)
with the project's dagster.yaml, sensors as shipped, and the `dam` command beside it."""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest
import requests
from starlette.testclient import TestClient

from dam_dagster.backfill import failed_partitions
from dam_dagster.core.store import Catalogue
from dam_dagster.home import prepare_dagster_home

from .conftest import BIN, brute_force_groups, catalogue_groups
from .conftest_web import make_app

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def instance_env(tmp_path, monkeypatch):
    data = tmp_path / "data"
    env = {
        "DAM_DATA_DIR": str(data),
        "DAGSTER_HOME": str(data / "dagster_home"),
        "DAM_LIBRARY_ROOTS": str(tmp_path / "lib"),
        # what follows an update is asked for within 5 s, not 30 (the tests wait for it)
        "DAM_AUTOMATION_INTERVAL_S": "5",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    prepare_dagster_home()
    return env


class DagsterDev:
    def __init__(self, env: dict, cwd):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(cwd, "dagster-dev.log"), "w")
        self.proc = subprocess.Popen(
            [
                str(BIN / "dagster"),
                "dev",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-m",
                "dam_dagster.definitions",
            ],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/server_info", timeout=2).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("dagster dev did not come up in 90 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_sensors_alone_catalogue_dedup_and_render_a_new_library(corpus, tmp_path, instance_env):
    lib = tmp_path / "lib"
    (lib / "backup").mkdir(parents=True)
    for name in ["box.STL", "torus.STL", "Duck.glb", "featuretype.3MF"]:
        shutil.copy(corpus / name, lib / name)
    shutil.copy(corpus / "torus.STL", lib / "backup" / "torus (1).STL")
    dev = DagsterDev(instance_env, tmp_path)
    try:
        instance = dg.DagsterInstance.get()

        def everything_done():
            fast = instance.get_materialized_partitions(dg.AssetKey("thumbnails_fast"))
            dup = instance.get_latest_materialization_event(dg.AssetKey("duplicates"))
            records = instance.get_run_records()
            partitions = {
                r.dagster_run.tags.get("dagster/partition")
                for r in records
                if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS
            }
            return dup is not None and fast == {"<1MB"} and len(partitions - {None}) == 6

        wait_for(everything_done, 240, "the sensors to run every asset and partition")
        # every file is under 1 MiB: the five other buckets ran, found nothing, and are not
        # shown as materialized (green) beside the one that holds the models
        assert not instance.get_materialized_partitions(dg.AssetKey("thumbnails_slow"))
        records = instance.get_run_records()
        launched_by = {r.dagster_run.tags.get("dagster/sensor_name") for r in records}
        assert {"library_sensor", "dam_automation"} <= launched_by  # nobody clicked
        by_sensor = [
            r.dagster_run
            for r in records
            if r.dagster_run.tags.get("dagster/sensor_name") == "library_sensor"
        ]
        assert by_sensor and all(r.job_name == "file_inventory_job" for r in by_sensor)
        cat = Catalogue(instance_env["DAM_DATA_DIR"])
        assert catalogue_groups(cat) == brute_force_groups(lib)
        with cat.connect(write=False) as con:
            thumbs = con.execute("SELECT count(*) FROM models WHERE has_thumbnail = 1").fetchone()[
                0
            ]
        assert thumbs == 5
    finally:
        dev.stop()


def test_backfill_failed_rerenders_exactly_the_failed_files(corpus, tmp_path, instance_env):
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ["box.STL", "torus.STL", "idler_riser.STL"]:
        shutil.copy(corpus / name, lib / name)
    data = bytearray((corpus / "torus.STL").read_bytes())
    data[:5] = b"stuck"  # the same model under another header: its own content key
    (lib / "stuck_hang.stl").write_bytes(bytes(data))

    # a run in which one render hangs: killed at the timeout, the partition fails
    run = subprocess.run(
        [str(BIN / "dam"), "run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "DAM_RENDER_TEST_HANG_SUFFIX": "_hang.stl", "DAM_FAST_TIMEOUT_S": "3"},
        timeout=300,
    )
    assert run.returncode == 1 and "thumbnails_fast [<1MB] failed" in run.stderr
    cat = Catalogue(instance_env["DAM_DATA_DIR"])

    def rows():
        with cat.connect(write=False) as con:
            return {
                r[0]: r[1:]
                for r in con.execute(
                    "SELECT f.rel_path, t.status, t.rendered_at FROM thumbnails t "
                    "JOIN file_inventory f USING (file_id)"
                ).fetchall()
            }

    before = rows()
    assert before["stuck_hang.stl"][0] == "timeout"
    # the browser offers the retry for it (a timeout may pass)
    with TestClient(make_app(Path(instance_env["DAM_DATA_DIR"]))) as c:
        problems = c.get("/api/problems").json()
        assert problems["transient_files"] == 1
        assert "Retry the failed partitions" in c.get("/problems").text

    # the instance, with its sensors stopped so that only the backfill can mend the partition
    for sensor in ("library_sensor", "dam_automation"):
        subprocess.run(
            [str(BIN / "dagster"), "sensor", "stop", sensor, "-m", "dam_dagster.definitions"],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            env={**os.environ},
        )
    dev = DagsterDev(instance_env, tmp_path)
    try:
        launched = subprocess.run(
            [str(BIN / "dam"), "backfill-failed", "--url", dev.url],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert launched.returncode == 0, launched.stderr
        assert "thumbnails_fast: backfill" in launched.stdout and "<1MB" in launched.stdout
        instance = dg.DagsterInstance.get()
        wait_for(lambda: rows()["stuck_hang.stl"][0] == "ok", 180, "the backfill's run")
        after = rows()
        assert {k: v for k, v in after.items() if k != "stuck_hang.stl"} == {
            k: v for k, v in before.items() if k != "stuck_hang.stl"
        }
        backfills = instance.get_backfills()
        assert len(backfills) == 1 and backfills[0].tags.get("dam/backfill")
        # once the partition shows as materialized, there is nothing left to backfill
        wait_for(
            lambda: not failed_partitions(dev.url, ["thumbnails_fast"])["thumbnails_fast"],
            60,
            "the partition to show as materialized",
        )
        again = subprocess.run(
            [str(BIN / "dam"), "backfill-failed", "--url", dev.url],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 0 and "No failed thumbnail partitions" in again.stdout
        # the browser's Retry button asks the same webserver the same question
        with TestClient(make_app(Path(instance_env["DAM_DATA_DIR"]), dagster_url=dev.url)) as c:
            retry = c.post("/problems/retry")
            assert retry.status_code == 200 and "nothing to backfill" in retry.text
            assert "Retry the failed partitions" not in c.get("/problems").text
    finally:
        dev.stop()


def test_dam_dev_starts_the_ui_and_the_browser_and_ctrl_c_stops_both(tmp_path, instance_env):
    ui, web = free_port(), free_port()
    proc = subprocess.Popen(
        [str(BIN / "dam"), "dev", "--port", str(ui), "--browser-port", str(web)],
        cwd=tmp_path,
        env={**os.environ, **instance_env, "DAM_LIBRARY_ROOTS": ""},  # the sample library
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        banner = []
        while not any("Ctrl-C stops both" in line for line in banner):
            banner.append(proc.stderr.readline())
        text = "".join(banner)
        assert f"Dagster UI:      http://127.0.0.1:{ui}" in text
        assert f"library browser: http://127.0.0.1:{web}" in text

        def both_up():
            try:
                return (
                    requests.get(f"http://127.0.0.1:{ui}/server_info", timeout=2).ok
                    and requests.get(f"http://127.0.0.1:{web}/healthz", timeout=2).ok
                )
            except requests.ConnectionError:
                return False

        wait_for(both_up, 120, "the Dagster UI and the library browser")
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        proc.wait(timeout=60)

        def both_down():
            for port in (ui, web):
                try:
                    requests.get(f"http://127.0.0.1:{port}/", timeout=1)
                    return False
                except requests.ConnectionError:
                    pass
            return True

        wait_for(both_down, 30, "both servers to stop")
    finally:
        if proc.poll() is None:
            proc.kill()
