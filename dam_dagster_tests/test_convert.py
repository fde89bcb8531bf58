"""A catalogue file written by DuckDB 2 (earlier releases): refused with a way out, then
converted by `dam convert-catalogue` with nothing lost and the original kept."""

import json
import os
import subprocess

import pytest

from dam_dagster.core import convert
from dam_dagster.core.catalogue_errors import CatalogueError
from dam_dagster.core.store import Catalogue

from .conftest import BIN, brute_force_groups, catalogue_groups, run_chain

_TO_OLD = """
import sys, duckdb
con = duckdb.connect(sys.argv[2])
con.execute("IMPORT DATABASE '" + sys.argv[1] + "'")
con.execute("CHECKPOINT")
"""


@pytest.mark.slow
def test_a_duckdb_2_catalogue_is_refused_then_converted(tmp_path, hard_library):
    try:
        old = convert.old_duckdb_python(tmp_path / "venv", convert.OLD_DUCKDB, lambda _m: None)
    except (CatalogueError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"DuckDB 2 could not be installed with pip here: {exc}")
    data = tmp_path / "data"
    cat = Catalogue(data, url="")
    run_chain(cat, [hard_library])
    with cat.connect() as con:  # a decision only the catalogue holds
        con.execute(
            "INSERT INTO duplicate_reviews SELECT full_hash, size_bytes, original_id, "
            "'lowest_id', NULL, current_timestamp FROM duplicates LIMIT 1"
        )
        reviews = con.execute("SELECT * FROM duplicate_reviews").fetchall()
    env = {**os.environ, "DAM_DATA_DIR": str(data), "DAM_CATALOGUE_URL": ""}

    def status():
        return subprocess.run(
            [str(BIN / "dam"), "status", "--json"], env=env, capture_output=True, text=True
        )

    before = json.loads(status().stdout)
    # the same catalogue as DuckDB 2 writes it (what an earlier release left)
    import duckdb

    duckdb.connect(str(data / "dam.duckdb"), read_only=True).execute(
        f"EXPORT DATABASE '{tmp_path / 'exported'}' (FORMAT parquet)"
    ).close()
    (data / "dam.duckdb").unlink()
    subprocess.run(
        [str(old), "-c", _TO_OLD, str(tmp_path / "exported"), str(data / "dam.duckdb")], check=True
    )
    assert not convert.readable(data / "dam.duckdb")
    written = (data / "dam.duckdb").read_bytes()

    refused = status()
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "written by a newer DuckDB" in refused.stderr
    assert "dam convert-catalogue" in refused.stderr
    # the long-running commands say it before they start anything (no traceback, no server)
    for command in (["serve", "--port", "1"], ["dev", "--port", "1"]):
        served = subprocess.run(
            [str(BIN / "dam"), *command],
            env={**env, "DAM_LIBRARY_ROOTS": str(hard_library)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert served.returncode == 2, (command, served.stderr)
        assert "written by a newer DuckDB" in served.stderr and "Traceback" not in served.stderr
    assert (data / "dam.duckdb").read_bytes() == written  # nothing was changed

    out = subprocess.run(
        [str(BIN / "dam"), "convert-catalogue", "--python", str(old)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    kept = [p for p in data.iterdir() if p.name.startswith("dam.duckdb.storage-")]
    assert len(kept) == 1 and kept[0].read_bytes() == written  # the original, untouched
    assert json.loads(status().stdout) == before
    Catalogue._migrated.clear()
    assert catalogue_groups(Catalogue(data, url="")) == brute_force_groups(hard_library)
    with Catalogue(data, url="").connect(write=False) as con:
        assert con.execute("SELECT * FROM duplicate_reviews").fetchall() == reviews
    again = subprocess.run(
        [str(BIN / "dam"), "convert-catalogue"], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0 and "nothing to convert" in again.stdout
