"""The `dam` command, run as a person runs it: a subprocess with the environment as config."""

import csv
import io
import json
import os
import subprocess
import sys
import time

from dam_dagster.core.store import Catalogue

from .conftest import BIN, brute_force_groups


def dam(*args, env=None, cwd=None, timeout=300):
    return subprocess.run(
        [str(BIN / "dam"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
    )


def test_run_status_and_duplicates(hard_library, tmp_path):
    env = {"DAM_LIBRARY_ROOTS": str(hard_library), "DAM_DATA_DIR": str(tmp_path / "data")}
    run = dam("run", env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "partial_hashes: first 4 KiB:" in run.stderr  # progress on the terminal
    assert "duplicate groups" in run.stdout  # and a summary

    expected = brute_force_groups(hard_library)
    status = json.loads(dam("status", "--json", env=env, cwd=tmp_path).stdout)
    assert {
        "files",
        "models",
        "duplicate_groups",
        "duplicate_files",
        "reclaimable_bytes",
        "thumbnails_ok",
        "thumbnails_failed",
    } <= set(status)
    assert status["files"] == sum(1 for p in hard_library.rglob("*") if p.is_file())
    assert status["duplicate_groups"] == len(expected)
    assert status["duplicate_files"] == sum(len(v) - 1 for v in expected.values())

    groups = json.loads(dam("duplicates", "--format", "json", env=env, cwd=tmp_path).stdout)
    assert {g["full_hash"]: sorted([g["original"], *g["duplicates"]]) for g in groups} == expected
    for g in groups:  # the original is the first-seen (lowest id) member, paths are absolute
        assert os.path.isabs(g["original"]) and g["size_bytes"] == os.path.getsize(g["original"])

    rows = list(
        csv.DictReader(
            io.StringIO(dam("duplicates", "--format", "csv", env=env, cwd=tmp_path).stdout)
        )
    )
    assert len(rows) == sum(len(v) for v in expected.values())
    assert {r["role"] for r in rows} == {"original", "duplicate"}
    table = dam("duplicates", env=env, cwd=tmp_path).stdout
    assert f"{len(expected)} groups" in table


def test_env_files_configure_the_command(hard_library, tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME")  # its default is under the data folder
    (tmp_path / ".env").write_text("DAM_LIBRARY_ROOTS=/nonexistent\nDAM_DATA_DIR=data\n")
    (tmp_path / ".env.local").write_text(f"DAM_LIBRARY_ROOTS={hard_library}\n")
    run = dam("run", cwd=tmp_path)  # .env.local wins over .env
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "data" / "dam.duckdb").exists()
    assert (tmp_path / "data" / "dagster_home" / "dagster.yaml").exists()


def test_missing_or_unset_root_exits_nonzero_with_a_clear_message(tmp_path):
    missing = dam(
        "run",
        env={"DAM_LIBRARY_ROOTS": str(tmp_path / "nas"), "DAM_DATA_DIR": str(tmp_path / "data")},
        cwd=tmp_path,
    )
    assert missing.returncode == 2
    assert "does not exist (is the share mounted?)" in missing.stderr
    unset = dam("run", env={"DAM_DATA_DIR": str(tmp_path / "data")}, cwd=tmp_path)
    assert unset.returncode == 2 and "DAM_LIBRARY_ROOTS is not set" in unset.stderr


def test_data_folder_inside_a_library_is_refused(hard_library, tmp_path):
    proc = dam(
        "run",
        env={"DAM_LIBRARY_ROOTS": str(hard_library), "DAM_DATA_DIR": str(hard_library / "data")},
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "never writes into a library" in proc.stderr
    assert not (hard_library / "data").exists()


def test_status_waits_politely_for_a_writing_run(tmp_path):
    data = tmp_path / "data"
    with Catalogue(data).connect():
        pass
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import time
from dam_dagster.core.store import Catalogue
with Catalogue({str(data)!r}, who='a test run').connect():
    print('holding', flush=True)
    time.sleep(2)
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "holding"
    started = time.monotonic()
    status = dam("status", "--json", env={"DAM_DATA_DIR": str(data)}, cwd=tmp_path)
    assert status.returncode == 0
    assert "waiting for the catalogue: pid" in status.stderr and "a test run" in status.stderr
    assert time.monotonic() - started > 1 and json.loads(status.stdout)["files"] == 0
    holder.wait(timeout=10)


def test_sample_library_run(tmp_path):
    run = dam("run", "--sample", env={"DAM_DATA_DIR": str(tmp_path / "data")}, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    status = json.loads(
        dam("status", "--json", env={"DAM_DATA_DIR": str(tmp_path / "data")}, cwd=tmp_path).stdout
    )
    # the duplicate pair is found; the same-size stranger is not mistaken for a copy
    assert status["duplicate_groups"] == 1 and status["duplicate_files"] == 1
    assert status["models"] >= 8
    # every model measured is desk-sized, in mm (the glTF one in metres, as glTF says)
    found = dam("find", "--format", "json", env={"DAM_DATA_DIR": str(tmp_path / "data")})
    sizes = {os.path.basename(r["path"]): r["size_z_mm"] for r in json.loads(found.stdout)}
    assert round(sizes["red_cone.glb"], 3) == 30.0 and round(sizes["cube_20mm.stl"], 3) == 20.0
    assert len(sizes) >= 8 and all(5 <= z <= 60 for z in sizes.values())


def test_find_similar_and_retry(corpus, tmp_path):
    """The model commands on one real run: `dam find` by geometry facts, `dam similar` for
    the same mesh in other files, `dam retry` for files that failed for good."""
    import shutil

    import trimesh

    from . import slicer_files as sf

    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("box.STL", "torus.STL", "busted.STL", "pyramids.3mf", "featuretype.STEP"):
        shutil.copy(corpus / name, lib / name)
    trimesh.load(corpus / "box.STL").export(lib / "box.obj")
    (lib / "box copy.STL").write_bytes((corpus / "box.STL").read_bytes())
    (lib / "slicer.gcode").write_bytes(sf.cura_gcode())  # no preview: 'unsupported'
    env = {
        "DAM_LIBRARY_ROOTS": str(lib),
        "DAM_DATA_DIR": str(tmp_path / "data"),
        "DAM_PRINTERS": "Mini=180x180x180, Plate=300x200x100",
    }
    run = dam("run", env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    status = json.loads(dam("status", "--json", env=env, cwd=tmp_path).stdout)
    assert status["models_measured"] == 8 and status["similar_groups"] == 1  # every file

    found = json.loads(
        dam("find", "--max-x", "180", "--watertight", "--format", "json", env=env).stdout
    )
    names = sorted(os.path.basename(r["path"]) for r in found)
    # pyramids.3mf is 347 mm long; the STEP part is 127 mm; the rest are small
    assert names == sorted(
        ["box.STL", "box copy.STL", "box.obj", "torus.STL", "busted.STL", "featuretype.STEP"]
    )
    assert all(r["size_x_mm"] <= 180 and r["watertight"] for r in found)
    plate = json.loads(dam("find", "--fits", "Plate", "--format", "json", env=env).stdout)
    assert "pyramids.3mf" not in {os.path.basename(r["path"]) for r in plate}  # 347 x 163 mm
    inches = dam("find", "--probably-inches", "--format", "csv", env=env).stdout
    assert "box.STL" in inches and "featuretype.STEP" not in inches
    bad = dam("find", "--fits", "Nope", env=env)
    assert bad.returncode == 2 and "no printer 'Nope'" in bad.stderr

    similar = json.loads(dam("similar", "--format", "json", env=env).stdout)
    assert [sorted(os.path.basename(p) for p in g["members"]) for g in similar] == [
        ["box copy.STL", "box.STL", "box.obj"]
    ]
    assert all(os.path.isabs(p) for p in similar[0]["members"])
    assert sorted(os.path.basename(p) for p in similar[0]["exact_duplicates"][0]) == [
        "box copy.STL",
        "box.STL",
    ]
    assert "copy of above" in dam("similar", env=env).stdout

    retried = dam("retry", "--status", "unsupported", "--bucket", "<1MB", env=env, cwd=tmp_path)
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert "1 file(s) asked for again (1 unsupported)" in retried.stdout
    assert "unsupported" in retried.stdout.splitlines()[-1]  # still no preview in it
    none = dam("retry", "--status", "failed", env=env, cwd=tmp_path)
    assert none.returncode == 0 and "0 file(s) asked for again" in none.stdout
    wrong = dam("retry", "--bucket", "huge", env=env, cwd=tmp_path)
    assert wrong.returncode == 2 and "no size bucket 'huge'" in wrong.stderr


def test_an_unchanged_run_launches_nothing_and_a_change_only_what_it_needs(corpus, tmp_path):
    import shutil
    import sqlite3

    lib, data = tmp_path / "lib", tmp_path / "data"
    lib.mkdir()
    for name in ("box.STL", "torus.STL"):
        shutil.copy(corpus / name, lib / name)
    env = {"DAM_LIBRARY_ROOTS": str(lib), "DAM_DATA_DIR": str(data)}
    home = tmp_path / "home"
    env["DAGSTER_HOME"] = str(home)

    def runs() -> list[tuple[str, str]]:
        with sqlite3.connect(home / "history" / "runs.db") as con:
            return con.execute("SELECT pipeline_name, partition FROM runs ORDER BY id").fetchall()

    first = dam("run", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    # the chain, the one partition with models (the empty ones are not run), the grouping
    lanes = [("dedup", None), ("thumbnails_fast_job", "<1MB"), ("similar_models_job", None)]
    assert runs() == lanes
    assert "up to date, not run: 1-5MB, 5-30MB, 30-100MB" in first.stderr
    again = dam("run", env=env, cwd=tmp_path)
    assert again.returncode == 0 and "nothing changed since the last run" in again.stderr
    assert len(runs()) == 3 and "duplicate groups" in again.stdout  # the figures all the same
    shutil.copy(corpus / "box.STL", lib / "box copy.STL")
    third = dam("run", env=env, cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-2000:]
    assert runs()[3:] == lanes
    forced = dam("run", "--force", "--skip-thumbnails", env=env, cwd=tmp_path)
    assert forced.returncode == 0 and runs()[6:] == [("dedup", None)]


def test_an_unchanged_run_skips_with_broken_and_empty_zips_and_a_root_removed(tmp_path):
    import zipfile

    lib, old, data = tmp_path / "lib", tmp_path / "old", tmp_path / "data"
    for folder in (lib, old):
        folder.mkdir()
        (folder / "a.stl").write_bytes(b"solid a\nendsolid a\n")
    (lib / "broken.zip").write_bytes(b"PK\x03\x04 not a zip")
    with zipfile.ZipFile(lib / "empty.zip", "w"):
        pass
    with zipfile.ZipFile(lib / "folders only.zip", "w") as z:
        z.writestr("sub/", "")
    both = {"DAM_LIBRARY_ROOTS": f"{lib}:{old}", "DAM_DATA_DIR": str(data)}
    assert dam("run", "--skip-thumbnails", env=both, cwd=tmp_path).returncode == 0
    one = {**both, "DAM_LIBRARY_ROOTS": str(lib)}  # `old` is no longer a root
    changed = dam("run", "--skip-thumbnails", env=one, cwd=tmp_path)
    assert changed.returncode == 0 and "nothing changed" not in changed.stderr
    again = dam("run", "--skip-thumbnails", env=one, cwd=tmp_path)
    assert again.returncode == 0 and "nothing changed since the last run" in again.stderr


def test_a_walk_aside_cut_short_is_walked_again_not_a_crash(tmp_path, capsys):
    """`dam run`'s first run walks in a process of its own; if what it hands back is cut short
    (a signal, a debugger attached), the inventory walks itself."""
    from dam_dagster import cli
    from dam_dagster.core.inventory import take_prepared_walk

    lib = tmp_path / "lib"
    (lib / "a").mkdir(parents=True)
    (lib / "a" / "one.stl").write_bytes(b"solid x\nendsolid x\n")
    roots = [lib]
    whole = cli._start_walk_aside(roots)
    cli._take_walk_aside(whole, roots)
    path_filter, follow = cli._walk_settings()
    walk = take_prepared_walk(roots, path_filter, follow)
    assert walk is not None and len(walk) == 1  # the whole walk is handed over

    cut = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'\\x80\\x05\\x95')"],
        stdout=subprocess.PIPE,
    )
    cli._take_walk_aside(cut, roots)
    assert take_prepared_walk(roots, path_filter, follow) is None  # nothing: walk again
    assert "could not be read" in capsys.readouterr().err


def test_a_first_run_that_stops_early_leaves_no_walk_behind(tmp_path, slow_share):
    """The walk aside of a first run dies with a `dam run` that stops before taking it (here:
    a data folder that cannot be made), rather than walking on (on a share, for minutes)."""
    source = tmp_path / "source"
    for i in range(10):
        (source / f"f{i}").mkdir(parents=True)
        for j in range(20):
            (source / f"f{i}" / f"m{j}.stl").write_bytes(b"solid\n")
    share = slow_share(source, latency_ms=200)  # 210 lookups at 200 ms: a walk of seconds
    (tmp_path / "a file").write_bytes(b"")
    env = {
        "DAM_LIBRARY_ROOTS": str(share.path),
        "DAM_DATA_DIR": str(tmp_path / "a file" / "d"),
        "DAGSTER_HOME": "",  # the Dagster home in the data folder, as people have it
    }
    run = dam("run", "--skip-thumbnails", env=env, cwd=tmp_path, timeout=120)
    assert run.returncode != 0 and "outside any step" in run.stderr
    # a walk left behind walks on, then fails on its pipe (a traceback on the same stderr)
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    walkers = [
        p for p in os.listdir("/proc")
        if p.isdigit() and os.fsencode(str(share.path)).hex().encode() in _cmdline(p)
    ]  # fmt: skip
    assert walkers == []


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
