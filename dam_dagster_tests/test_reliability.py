"""Issue 8: nothing a crash, a race, a name or a full disk does may stop the pipeline for good.
Each test reproduces one way it used to stop, as a person meets it: `dam` commands in
subprocesses, real runs, a real killed process, a real full filesystem."""

import contextlib
import io
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import dagster as dg
import pytest

from dam_dagster.core import dedup
from dam_dagster.core.render import RenderConfig, RenderTask, render_files
from dam_dagster.core.store import SCHEMA_VERSION, Catalogue, CatalogueMissing, migrate
from dam_dagster.core.thumbnails import plan_bucket, size_buckets
from dam_dagster.runs import host_id

from .conftest import BIN, _drop_dac_capabilities, brute_force_groups, catalogue_groups, run_chain

BOX = 84 + 12 * 50  # a binary STL of 12 triangles


def dam(*args, env=None, cwd=None, timeout=300, unprivileged=False):
    kwargs = {"preexec_fn": _drop_dac_capabilities} if unprivileged and os.geteuid() == 0 else {}
    return subprocess.run(
        [str(BIN / "dam"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
        **kwargs,
    )


def box_stl(tag: bytes = b"") -> bytes:
    """A real 10 mm cube as binary STL; `tag` goes in the header (other bytes, same mesh)."""
    import struct

    v = [(x, y, z) for x in (0, 10) for y in (0, 10) for z in (0, 10)]
    faces = [(0, 1, 3), (0, 3, 2), (4, 6, 7), (4, 7, 5), (0, 4, 5), (0, 5, 1)]
    faces += [(2, 3, 7), (2, 7, 6), (0, 2, 6), (0, 6, 4), (1, 5, 7), (1, 7, 3)]
    body = b"".join(struct.pack("<12fH", 0, 0, 0, *v[a], *v[b], *v[c], 0) for a, b, c in faces)
    return tag.ljust(80, b" ")[:80] + struct.pack("<I", len(faces)) + body


def run_env(lib, data, **extra):
    return {"DAM_LIBRARY_ROOTS": str(lib), "DAM_DATA_DIR": str(data), **extra}


# --- 1. concurrent first runs ---------------------------------------------------------------
def test_concurrent_first_runs_prepare_dagster_home_once(hard_library, tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME")  # its default: under the data folder, made by dam
    data = tmp_path / "data"
    env = {**os.environ, **run_env(hard_library, data)}
    procs = [
        subprocess.Popen(
            [str(BIN / "dam"), "run", "--skip-thumbnails"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert [code for code, _ in results] == [0, 0, 0, 0], [err[-1500:] for _, err in results]
    again = dam(
        "run", "--skip-thumbnails", "--force", env=run_env(hard_library, data), cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr[-2000:]
    runs_db = data / "dagster_home" / "history" / "runs.db"
    with sqlite3.connect(runs_db) as con:
        heads = con.execute("SELECT version_num FROM alembic_version").fetchall()
        finished = con.execute("SELECT count(*) FROM runs WHERE status = 'SUCCESS'").fetchone()
    ran = sum("nothing changed" not in err for _, err in results)  # later starters may find
    assert len(heads) == 1 and finished[0] == ran + 1 and ran >= 1  # the work done already
    assert catalogue_groups(Catalogue(data)) == brute_force_groups(hard_library)


# --- 2. names that display alike ------------------------------------------------------------
def test_two_names_that_display_alike_are_two_files(tmp_path, catalogue):
    lib = tmp_path / "lib"
    lib.mkdir()
    raw = os.path.join(os.fsencode(lib), b"bad\xff.stl")  # a raw 0xFF byte
    literal = lib / "bad\\xff.stl"  # a backslash, an x and two f: shows the same
    for path in (raw, literal):
        with open(path, "wb") as f:
            f.write(box_stl(b"same"))
    (lib / "other.stl").write_bytes(box_stl(b"other"))
    run_chain(catalogue, [lib])
    with catalogue.connect(write=False) as con:
        rows = con.execute(
            "SELECT file_id, path, raw_path FROM file_inventory ORDER BY file_id"
        ).fetchall()
    shown = [r[1] for r in rows if r[1].endswith("bad\\xff.stl")]
    assert len(shown) == 2 and len({r[0] for r in rows}) == 3  # two rows, two ids
    assert sorted(r[2] for r in rows if r[1] in shown and r[2] is not None) == [raw]
    [group] = dedup.duplicate_groups(catalogue)  # identical bytes: one group of both
    assert sorted([group.original, *group.duplicates]) == shown
    again = run_chain(catalogue, [lib])["inventory"]
    assert (again.new_files, again.changed_files, again.gone_files) == (0, 0, 0)
    # the renderer gets the exact bytes of each name
    [bucket] = [b for b in size_buckets(30) if b.holds(BOX)]
    plan = plan_bucket(catalogue, bucket, 64, "transparent")
    paths = sorted(os.fsencode(t.path) for t in plan.tasks)
    assert paths == sorted([raw, os.fsencode(literal), os.fsencode(lib / "other.stl")])


# --- 3. killed runs -------------------------------------------------------------------------
def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_run_is_marked_failed_and_the_queue_says_so(tmp_path, monkeypatch):
    from dam_dagster.sensors import dead_runs_sensor

    lib, data = tmp_path / "lib", tmp_path / "data"
    lib.mkdir()
    (lib / "stuck_hang.stl").write_bytes(box_stl(b"hang"))
    home = data / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    env = {**os.environ, **run_env(lib, data), "DAM_RENDER_TEST_HANG_SUFFIX": "_hang.stl"}
    proc = subprocess.Popen(
        [str(BIN / "dam"), "run"], env=env, cwd=tmp_path, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait(lambda: (home / ".dam-prepared").exists(), 60, "the Dagster home")
        instance = dg.DagsterInstance.get()

        def rendering():
            runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
            return [r for r in runs if r.tags.get("dagster/partition") == "<1MB"]

        [stuck] = _wait(rendering, 120, "the render run to start")
        assert stuck.tags["dam/pid"] == str(proc.pid)
        time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert instance.get_run_by_id(stuck.run_id).status == dg.DagsterRunStatus.STARTED

    status = dam("status", env=run_env(lib, data), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "runs: 1 runs in progress (at most 10 at once)" in status.stdout
    assert "1 of them have no process any more" in status.stdout
    assert "have no process any more (killed or crashed)" in status.stderr
    figures = json.loads(dam("status", "--json", env=run_env(lib, data), cwd=tmp_path).stdout)
    assert figures["runs_without_process"] == 1 and figures["runs_in_progress"] == 1

    # the daemon's sensor marks it failed, and says how the queue stands
    result = dead_runs_sensor(dg.build_sensor_context(instance=instance))
    assert "marked 1 run(s) failed" in result.skip_message
    failed = instance.get_run_by_id(stuck.run_id)
    assert failed.status == dg.DagsterRunStatus.FAILURE
    assert (
        "0 runs in progress"
        in dead_runs_sensor(dg.build_sensor_context(instance=instance)).skip_message
    )
    again = json.loads(dam("status", "--json", env=run_env(lib, data), cwd=tmp_path).stdout)
    assert again["runs_in_progress"] == 0 and again["runs_without_process"] == 0


def test_dam_run_sweeps_runs_left_by_a_dead_process(tmp_path, monkeypatch):
    from dam_dagster.home import prepare_dagster_home

    lib, data = tmp_path / "lib", tmp_path / "data"
    lib.mkdir()
    (lib / "a.stl").write_bytes(box_stl())
    monkeypatch.setenv("DAGSTER_HOME", str(data / "dagster_home"))
    prepare_dagster_home()
    instance = dg.DagsterInstance.get()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    tags = {"dam/host": host_id(), "dam/pid": dead, "dam/process_start": "1"}
    run = instance.add_run(
        dg.DagsterRun(job_name="left_behind", status=dg.DagsterRunStatus.STARTED, tags=tags)
    )
    # killed between creating its run and storing its first event (found by
    # bench/fault_injection.py): NOT_STARTED for ever, its event database never stamped
    unborn = instance.add_run(
        dg.DagsterRun(job_name="never_began", status=dg.DagsterRunStatus.NOT_STARTED, tags=tags)
    )
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    proc = dam("run", "--skip-thumbnails", env=run_env(lib, data), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"run {run.run_id[:8]} (left_behind) was left in progress" in proc.stderr
    assert f"run {unborn.run_id[:8]} (never_began) was left" in proc.stderr
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(unborn.run_id).status == dg.DagsterRunStatus.FAILURE
    # with nothing else to do, `dam run` still sweeps such a run
    again = instance.add_run(
        dg.DagsterRun(job_name="never_began", status=dg.DagsterRunStatus.NOT_STARTED, tags=tags)
    )
    proc = dam("run", "--skip-thumbnails", env=run_env(lib, data), cwd=tmp_path)
    assert proc.returncode == 0 and f"run {again.run_id[:8]} (never_began)" in proc.stderr
    assert instance.get_run_by_id(again.run_id).status == dg.DagsterRunStatus.FAILURE


# --- 4. reading commands --------------------------------------------------------------------
def test_reading_commands_never_create_a_catalogue(tmp_path):
    typo = tmp_path / "dta"
    for args in (["status"], ["status", "--json"], ["duplicates"]):
        proc = dam(*args, env={"DAM_DATA_DIR": str(typo)}, cwd=tmp_path)
        assert proc.returncode == 2 and "there is no catalogue at" in proc.stderr, proc.stderr
        assert "check DAM_DATA_DIR" in proc.stderr
    assert not typo.exists()
    with pytest.raises(CatalogueMissing):
        with Catalogue(typo).connect(write=False):
            pass
    assert not typo.exists()


def test_every_command_refuses_a_data_folder_inside_a_root(hard_library, tmp_path):
    from .conftest import snapshot

    before = snapshot(hard_library)
    inside = hard_library / "data"
    env = run_env(hard_library, inside)
    for args in (["status"], ["duplicates"], ["run"], ["run", "--skip-thumbnails"]):
        proc = dam(*args, env=env, cwd=tmp_path)
        assert proc.returncode == 2 and "never writes into a library" in proc.stderr, args
    assert snapshot(hard_library) == before and not inside.exists()


@contextlib.contextmanager
def _small_disk(tmp_path: Path, size_mb: int):
    """A tmpfs of size_mb for the data folder (skips where it cannot be mounted: needs root),
    and a library of three identical STLs beside it: (mount, library, data folder, env)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.strip()}): needs root")
    try:
        lib, data = tmp_path / "lib", mount / "data"
        lib.mkdir()
        for i in range(3):
            (lib / f"copy{i}.stl").write_bytes(box_stl(b"same"))
        yield mount, lib, data, run_env(lib, data)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for block in (b"\0" * (1 << 20), b"\0" * 4096, b"\0"):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, block)
    finally:
        os.close(fd)


def test_reading_works_on_a_full_disk_and_a_full_disk_fails_one_clear_line(tmp_path):
    with _small_disk(tmp_path, 48) as (mount, lib, data, env):
        assert dam("run", "--skip-thumbnails", env=env, cwd=tmp_path).returncode == 0
        _fill(mount / "filler")  # the disk fills up
        for i in range(50):
            (lib / f"new{i}.stl").write_bytes(box_stl(b"new%d" % (i % 5)))
        status = dam("status", "--json", env=env, cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["duplicate_files"] == 2
        full = dam("run", "--skip-thumbnails", env=env, cwd=tmp_path)
        assert full.returncode != 0
        lines = [line for line in full.stderr.splitlines() if line.startswith("dam:")]
        assert any("No space left on device" in line or "disk is full" in line for line in lines), (
            full.stderr[-3000:]
        )
        assert (
            "Traceback" not in full.stderr and "Error occurred while executing" not in full.stderr
        )
        assert dam("status", env=env, cwd=tmp_path).returncode == 0  # still readable
        os.unlink(mount / "filler")
        mended = dam("run", "--skip-thumbnails", env=env, cwd=tmp_path)
        assert mended.returncode == 0, mended.stderr[-2000:]
        assert catalogue_groups(Catalogue(data)) == brute_force_groups(lib)


def test_a_full_disk_under_the_run_history_is_one_line_and_status_still_reads(
    tmp_path, monkeypatch
):
    """Found by bench/fault_injection.py: when the disk is full, writing the Dagster home (its
    dagster.yaml on an empty data folder, a new run in runs.db) raised out of `dam run` with a
    stack trace, and a run that failed there left runs.db's WAL index unreadable, so `dam
    status` died with one too until space was freed."""
    monkeypatch.delenv("DAGSTER_HOME")  # its default: in the data folder, on the small disk
    with _small_disk(tmp_path, 32) as (mount, lib, data, env):

        def one_clear_line(proc):
            assert proc.returncode == 1, proc.stderr[-3000:]
            assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
            full = [x for x in proc.stderr.splitlines() if x.startswith("dam: the disk holding")]
            assert full and "(DAM_DATA_DIR) is full" in full[0], proc.stderr[-3000:]

        _fill(mount / "filler")  # full before the first run: nothing of the data folder yet
        one_clear_line(dam("run", "--skip-thumbnails", env=env, cwd=tmp_path))
        os.unlink(mount / "filler")
        assert dam("run", "--skip-thumbnails", env=env, cwd=tmp_path).returncode == 0
        _fill(mount / "filler")  # full between two runs, with work to do
        for i in range(40):
            (lib / f"new{i}.stl").write_bytes(box_stl(b"new%d" % (i % 4)))
        one_clear_line(dam("run", "--skip-thumbnails", env=env, cwd=tmp_path))
        status = dam("status", env=env, cwd=tmp_path)
        assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr[-3000:]
        assert "duplicate files" in status.stdout
        os.unlink(mount / "filler")
        mended = dam("run", "--skip-thumbnails", env=env, cwd=tmp_path)
        assert mended.returncode == 0, mended.stderr[-2000:]
        assert catalogue_groups(Catalogue(data)) == brute_force_groups(lib)


# --- 5. permanent problems ------------------------------------------------------------------
def zip_bomb_3mf(path: Path, declared_mb: int = 64) -> None:
    """A 3MF whose model part inflates from a few hundred KB to `declared_mb` MB of spaces."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        with z.open("3D/3dmodel.model", "w", force_zip64=True) as part:
            chunk = b" " * (1 << 20)
            for _ in range(declared_mb):
                part.write(chunk)


def test_permanent_problems_are_recorded_once_and_do_not_fail_runs(tmp_path, monkeypatch):
    lib, data = tmp_path / "lib", tmp_path / "data"
    lib.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(data / "dagster_home"))
    zip_bomb_3mf(lib / "bomb.3mf")
    (lib / "good.stl").write_bytes(box_stl(b"good"))
    locked = lib / "locked.stl"
    locked.write_bytes(box_stl(b"locked"))
    (lib / "locked copy.stl").write_bytes(box_stl(b"locked"))  # a candidate: read in full
    locked.chmod(0)
    env = run_env(lib, data)
    first = dam("run", env=env, cwd=tmp_path, unprivileged=True)
    assert first.returncode == 0, first.stderr[-3000:]

    def rows():
        with Catalogue(data).connect(write=False) as con:
            thumbs = con.execute("""
                SELECT f.rel_path, t.status, t.error_class, t.transient, t.rendered_at
                FROM thumbnails t JOIN file_inventory f USING (file_id)""").fetchall()
            hashes = con.execute("""
                SELECT f.rel_path, h.error_class, h.transient, h.hashed_at
                FROM partial_hashes h JOIN file_inventory f USING (file_id)
                WHERE h.error_class IS NOT NULL""").fetchall()
        return {r[0]: r[1:] for r in thumbs}, {r[0]: r[1:] for r in hashes}

    thumbs, hashes = rows()
    assert thumbs["bomb.3mf"][:3] == ("failed", "ArchiveBomb", False)
    assert thumbs["locked.stl"][:3] == ("failed", "PermissionError", False)
    assert hashes["locked.stl"][:2] == ("PermissionError", False)
    assert thumbs["good.stl"][0] == "ok"
    # nothing permanent is tried again while the files stay as they are
    second = dam("run", env=env, cwd=tmp_path, unprivileged=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert rows() == (thumbs, hashes)
    # mending the permissions moves the file's ctime: it is read and rendered again
    locked.chmod(0o644)
    third = dam("run", env=env, cwd=tmp_path, unprivileged=True)
    assert third.returncode == 0, third.stderr[-3000:]
    thumbs3, hashes3 = rows()
    assert thumbs3["locked.stl"][0] == "ok" and "locked.stl" not in hashes3
    assert thumbs3["bomb.3mf"] == thumbs["bomb.3mf"]
    assert catalogue_groups(Catalogue(data)) == brute_force_groups(lib)


def test_archive_sizes_are_checked_before_inflating():
    from dam_dagster.core.archives import ArchiveRefused, check_zip

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("3D/3dmodel.model", "<model/>" * 100_000)  # 800 KB, a real model's ratio
    summary = check_zip(buf.getvalue(), 1 << 30)
    assert summary is not None and summary.declared_bytes == 800_000
    with pytest.raises(ArchiveRefused, match="over the 0 MB"):
        check_zip(buf.getvalue(), 100_000)  # more than the cap: refused, whatever the ratio
    assert check_zip(b"not a zip at all", 1 << 30) is None  # the loader says what it is


def test_a_memory_cap_kill_of_the_same_unchanged_file_twice_is_permanent(tmp_path):
    from dam_dagster import thumbnail_assets

    from .conftest_render import binary_ply
    from .test_thumbnail_assets import inventory, resources

    lib, data = tmp_path / "lib", tmp_path / "data"
    lib.mkdir()
    (lib / "huge.ply").write_bytes(binary_ply(3_000_000))  # ~50 MB: GBs once parsed
    inventory(lib, data)

    def render():
        return dg.materialize(
            [thumbnail_assets.thumbnails_slow],
            partition_key="30-100MB",
            resources=resources(lib, data, memory_mb=600, slow_workers=1),
            raise_on_error=False,
        )

    def row():
        with Catalogue(data).connect(write=False) as con:
            return con.execute(
                "SELECT status, transient, memory_kills, error_message FROM thumbnails"
            ).fetchone()

    assert not render().success  # the first kill may pass (another run, more memory free)
    assert row()[:3] == ("memory", True, 1)
    assert render().success  # the second kill of the same file is the file's own doing
    status, transient, kills, message = row()
    assert (status, transient, kills) == ("memory", False, 2) and "2 times" in message
    [mat] = render().asset_materializations_for_node("thumbnails_slow")
    assert mat.metadata["files to render"].value == 0  # and it is not tried again


def test_a_model_whose_side_file_is_missing_fails_permanently(corpus, tmp_path):
    """Found by bench/fault_injection.py: a glTF whose .bin buffer is not beside it was a
    transient failure (an OSError from the loader), so every `dam run` failed for ever; a
    parser's OSError is about the model, while a failed PNG write stays transient."""
    import shutil

    shutil.copyfile(corpus / "Mesh_PrimitiveMode_04.gltf", tmp_path / "alone.gltf")
    (tmp_path / "cube.stl").write_bytes(box_stl(b"side"))
    gltf = RenderTask(1, str(tmp_path / "alone.gltf"), (tmp_path / "alone.gltf").stat().st_size)
    thumbs = tmp_path / "thumbs"
    [missing] = render_files([gltf], thumbs, RenderConfig(workers=1))
    assert (missing.status, missing.transient) == ("failed", False), missing
    assert "Mesh_PrimitiveMode_04.bin" in missing.error_message
    assert "refers to" in missing.error_message
    thumbs.mkdir(exist_ok=True)
    os.chmod(thumbs, 0o500)  # the data folder cannot be written: that may pass
    try:
        code = f"""
from dam_dagster.core.render import RenderConfig, RenderTask, render_files
[o] = render_files([RenderTask(2, {str(tmp_path / "cube.stl")!r}, {BOX})], {str(thumbs)!r},
                   RenderConfig(workers=1))
print(o.status, o.transient, o.error_class)
"""
        from .conftest import run_unprivileged

        proc = run_unprivileged(code)
    finally:
        os.chmod(thumbs, 0o755)
    assert proc.stdout.split() == ["failed", "True", "PermissionError"], proc.stderr[-2000:]


# --- 6. leftovers ---------------------------------------------------------------------------
def test_leftover_temp_files_go_and_pngs_follow_the_umask(tmp_path):
    thumbs = tmp_path / "thumbs"
    (thumbs / "ab").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    stale = thumbs / "ab" / f".ab12.x1y2.{dead}.tmp"
    stale.write_bytes(b"")
    os.utime(stale, (time.time() - 120, time.time() - 120))  # left by a run two minutes ago
    fresh = thumbs / "ab" / f".ab56.x1y2.{dead}.tmp"  # another machine's, being written now
    fresh.write_bytes(b"")
    live = thumbs / "ab" / f".ab34.x1y2.{os.getpid()}.tmp"  # a writer still at work
    live.write_bytes(b"")
    (tmp_path / "cube.stl").write_bytes(box_stl(b"umask"))
    old = os.umask(0o022)
    try:
        [outcome] = render_files(
            [RenderTask(1, str(tmp_path / "cube.stl"), BOX)], thumbs, RenderConfig(workers=1)
        )
    finally:
        os.umask(old)
    assert outcome.ok
    assert not stale.exists() and live.exists() and fresh.exists()
    mode = stat.S_IMODE(os.stat(thumbs / outcome.thumbnail_relpath).st_mode)
    assert mode == 0o644


# --- 7. what the user sees ------------------------------------------------------------------
def test_a_failed_step_is_one_line_with_its_cause_first(tmp_path):
    lib, data = tmp_path / "lib", tmp_path / "data"
    lib.mkdir()
    (lib / "a.stl").write_bytes(box_stl())
    env = run_env(lib, data, DAM_LOCK_TIMEOUT_S="3")
    with Catalogue(data).connect():
        pass
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from dam_dagster.core.store import Catalogue
with Catalogue({str(data)!r}, who='a long inventory').connect():
    print('holding', flush=True)
    time.sleep(40)
"""], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "holding"
        busy = dam("run", "--skip-thumbnails", env=env, cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert busy.returncode == 1
    [line] = [x for x in busy.stderr.splitlines() if x.startswith("dam: file_inventory failed")]
    assert "CatalogueBusy" in line and "raise DAM_LOCK_TIMEOUT_S" in line, busy.stderr
    assert "Traceback" not in busy.stderr and "Error occurred while executing" not in busy.stderr
    assert busy.stderr.count("waiting for the catalogue") <= 2  # not once per retry


def test_a_designed_failure_prints_its_description_without_a_stack(tmp_path):
    lib, data = tmp_path / "lib", tmp_path / "data"
    lib.mkdir()
    (lib / "stuck_hang.stl").write_bytes(box_stl(b"hang"))
    env = run_env(lib, data, DAM_RENDER_TEST_HANG_SUFFIX="_hang.stl", DAM_FAST_TIMEOUT_S="2")
    proc = dam("run", env=env, cwd=tmp_path)
    assert proc.returncode == 1
    [line] = [x for x in proc.stderr.splitlines() if "thumbnails_fast [<1MB] failed" in x]
    assert "1 file(s) failed for a reason that may pass" in line
    assert "Traceback" not in proc.stderr and 'File "' not in proc.stderr


# --- 8. same size, same mtime, new content --------------------------------------------------
def test_new_content_under_the_same_size_and_mtime_is_seen(tmp_path, catalogue):
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("a.stl", "b.stl", "c.stl"):
        (lib / name).write_bytes(box_stl(b"same"))
    run_chain(catalogue, [lib])
    assert len(dedup.duplicate_groups(catalogue)) == 1
    target = lib / "c.stl"
    before = os.stat(target)
    target.write_bytes(box_stl(b"edit"))  # same size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime
    assert (os.stat(target).st_size, os.stat(target).st_mtime_ns) == (
        before.st_size,
        before.st_mtime_ns,
    )
    stats = run_chain(catalogue, [lib])
    assert stats["inventory"].changed_files == 1
    assert catalogue_groups(catalogue) == brute_force_groups(lib)
    [group] = dedup.duplicate_groups(catalogue)
    assert str(target) not in [group.original, *group.duplicates]


def test_a_v2_catalogue_upgrades_without_reading_a_file_again(hard_library, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    import duckdb

    con = duckdb.connect(str(data / "dam.duckdb"))
    migrate(con, data / "thumbnails", target=2)  # a catalogue as the previous release left it
    con.close()
    cat = Catalogue(data)
    Catalogue._migrated.clear()
    # the previous release wrote rows without ctime: simulate its state after one full run
    run_chain(cat, [hard_library])
    with cat.connect() as con:
        for table in ("file_inventory", "partial_hashes", "full_hashes"):
            con.execute(f"UPDATE {table} SET ctime_ns = NULL")
        version = con.execute("SELECT max(version) FROM dam_schema").fetchone()[0]
    assert version == SCHEMA_VERSION
    again = run_chain(cat, [hard_library])
    assert again["inventory"].changed_files == 0 and again["partial"].bytes_read == 0
    assert again["full"].bytes_read == 0
    with cat.connect(write=False) as con:
        missing = con.execute(
            "SELECT count(*) FROM file_inventory WHERE present AND ctime_ns IS NULL"
        ).fetchone()[0]
    assert missing == 0
    assert catalogue_groups(cat) == brute_force_groups(hard_library)


def test_md5_prefixes_of_a_v7_catalogue_are_read_again_once_and_nothing_else(
    tmp_path, hard_library
):
    """Schema 8: the prefix tier became XXH64. A catalogue whose prefixes are MD5 (as v7 wrote
    them) reads every eligible file's 4 KiB again, once, keeps its partial and full hashes,
    and answers as brute force does; the run after reads nothing."""
    import hashlib

    data = tmp_path / "data"
    cat = Catalogue(data)
    first = run_chain(cat, [hard_library])
    with cat.connect() as con:
        rows = con.execute("""SELECT p.file_id, f.path FROM partial_hashes p
                              JOIN file_inventory f USING (file_id)
                              WHERE p.prefix_hash IS NOT NULL""").fetchall()
        for file_id, path in rows:  # the prefixes as v7 computed them
            with open(path, "rb") as fh:
                md5 = hashlib.md5(fh.read(4096)).hexdigest()
            con.execute("UPDATE partial_hashes SET prefix_hash = ? WHERE file_id = ?",
                        [md5, file_id])  # fmt: skip
        con.execute("DELETE FROM dam_schema WHERE version = 8")
        kept = con.execute(
            "SELECT file_id, partial_hash, full_hash FROM partial_hashes "
            "WHERE partial_hash IS NOT NULL ORDER BY file_id"
        ).fetchall()
    assert len(rows) == first["partial"].prefix_reads > 10 and kept
    Catalogue._migrated.clear()
    again = run_chain(cat, [hard_library])
    assert again["partial"].prefix_reads == len(rows)  # every prefix once more
    assert again["partial"].files_read == 0 and again["full"].files_read == 0  # nothing else
    with cat.connect(write=False) as con:
        assert con.execute("SELECT max(version) FROM dam_schema").fetchone()[0] == SCHEMA_VERSION
        assert con.execute("SELECT count(*) FROM partial_hashes WHERE length(prefix_hash) <> 16"
                           ).fetchone()[0] == 0  # fmt: skip
        assert (
            kept
            == con.execute(
                "SELECT file_id, partial_hash, full_hash FROM partial_hashes "
                "WHERE partial_hash IS NOT NULL ORDER BY file_id"
            ).fetchall()
        )
    assert catalogue_groups(cat) == brute_force_groups(hard_library)
    third = run_chain(cat, [hard_library])
    assert third["partial"].bytes_read == 0 and third["full"].bytes_read == 0


def test_the_upgrade_keeps_every_row_of_a_v2_file(tmp_path):
    import duckdb

    data = tmp_path / "data"
    data.mkdir()
    con = duckdb.connect(str(data / "dam.duckdb"))
    migrate(con, data / "thumbnails", target=2)
    con.execute("""INSERT INTO file_inventory VALUES (7, '/lib/a.stl', NULL, '/lib', 'a.stl',
                   '.stl', 10, 20, true, now(), now(), NULL)""")
    con.execute("INSERT INTO partial_hashes VALUES (7, 10, 20, 'p', 'q', 'f', now(), NULL, NULL)")
    con.close()
    Catalogue._migrated.clear()
    with Catalogue(data).connect(write=False) as con:
        row = con.execute(
            "SELECT file_id, path, size_bytes, mtime_ns, ctime_ns FROM file_inventory"
        ).fetchone()
        hashed = con.execute("SELECT id, full_hash FROM library_files").fetchone()
    assert row == (7, "/lib/a.stl", 10, 20, None) and hashed == (7, "f")


def test_dam_status_never_creates_dagster_storages(tmp_path, monkeypatch):
    """A dagster.yaml written, its storages not yet made (another process is preparing the
    home): a reading command must not make them outside the lock."""
    from dam_dagster.home import DAGSTER_YAML

    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    with Catalogue(data).connect():
        pass
    proc = dam("status", "--json", env={"DAM_DATA_DIR": str(data), "DAGSTER_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in home.iterdir()) == ["dagster.yaml"]


def test_the_sweep_leaves_live_runs_and_inherited_tags_alone(tmp_path, monkeypatch):
    from dam_dagster.home import prepare_dagster_home
    from dam_dagster.runs import mark_dead_runs_failed, process_tags

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    prepare_dagster_home()
    instance = dg.DagsterInstance.get()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    gone = {"dam/host": host_id(), "dam/pid": dead, "dam/process_start": "1"}

    def started(tags):
        return instance.add_run(
            dg.DagsterRun(job_name="j", status=dg.DagsterRunStatus.STARTED, tags=tags)
        )

    live = started(process_tags())  # this very process: alive
    retry = started({**gone, "dam/claimed_by_run": "another-run"})  # a retry's copied tags
    orphan = started(gone)
    marked = {r.run_id for r in mark_dead_runs_failed(instance)}
    assert marked == {orphan.run_id}
    assert instance.get_run_by_id(live.run_id).status == dg.DagsterRunStatus.STARTED
    assert instance.get_run_by_id(retry.run_id).status == dg.DagsterRunStatus.STARTED


def test_an_oserror_without_errno_is_the_files_own():
    import errno

    from dam_dagster.core.failures import os_error_is_transient

    assert not os_error_is_transient(OSError("Invalid data stream"))  # a decoder's complaint
    assert not os_error_is_transient(PermissionError(errno.EACCES, "denied"))
    assert os_error_is_transient(OSError(errno.EIO, "Input/output error"))
