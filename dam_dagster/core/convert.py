"""Converting a catalogue file written by a DuckDB this release cannot read.

dam_dagster used DuckDB 2 until the PostgreSQL catalogue pinned DuckDB 1.5.5 (the version
DuckDB's postgres extension is published for). DuckDB files are readable by newer DuckDBs,
not older ones, so a catalogue written by DuckDB 2 has to be exported by a DuckDB 2 (in a
virtual environment of its own, made here with pip) and imported by this one. The original
file is kept beside the new one, renamed; nothing is deleted.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import duckdb

from .catalogue_errors import CatalogueError

OLD_DUCKDB = "duckdb>=2,<3"  # what wrote the catalogues of earlier releases

_EXPORT = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
con.execute("EXPORT DATABASE '" + sys.argv[2].replace("'", "''") + "' (FORMAT parquet)")
"""


def storage_version(path: Path) -> int | None:
    """The storage version in a DuckDB file's header (None: not a DuckDB file)."""
    with open(path, "rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[8:12] != b"DUCK":
        return None
    return struct.unpack("<Q", head[12:20])[0]


def readable(path: Path) -> bool:
    try:
        duckdb.connect(str(path), read_only=True).close()
    except duckdb.IOException as exc:
        if "database file with version number" in str(exc):
            return False
        raise
    return True


def old_duckdb_python(workdir: Path, spec: str, log: Callable[[str], None]) -> Path:
    """A Python with `spec` installed, in a virtual environment under `workdir`."""
    venv = workdir / "old-duckdb"
    log(f"making a virtual environment with {spec} (pip) in {venv}")
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:  # Debian without python3-venv, say
        raise CatalogueError(
            f"could not make a virtual environment for {spec}: {made.stderr.strip()[-300:]} "
            "(or give one whose Python has it: dam convert-catalogue --python PATH)"
        )
    python = venv / "bin" / "python"
    out = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", spec], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise CatalogueError(f"could not install {spec} with pip: {out.stderr.strip()[-500:]}")
    return python


def convert(
    path: Path,
    lock: Callable[[], object],
    python: Path | None = None,
    spec: str = OLD_DUCKDB,
    log: Callable[[str], None] = print,
) -> Path | None:
    """Convert the catalogue file at `path` in place; returns where the original now is, or
    None when there was nothing to convert. `lock()` is a context manager holding the
    catalogue's lock for the swap; `python` a Python whose duckdb reads the file (default: a
    virtual environment made with `spec`)."""
    if not path.exists():
        raise CatalogueError(f"there is no catalogue at {path}")
    if readable(path):
        return None
    version = storage_version(path)
    with tempfile.TemporaryDirectory(prefix="dam-convert-", dir=path.parent) as tmp:
        work = Path(tmp)
        python = python or old_duckdb_python(work, spec, log)
        export = work / "export"
        with lock():
            log(f"exporting {path} (storage version {version}) with {python}")
            out = subprocess.run(
                [str(python), "-c", _EXPORT, str(path), str(export)],
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                raise CatalogueError(f"the export failed: {out.stderr.strip()[-800:]}")
            new = work / "dam.duckdb"
            log(f"importing it with DuckDB {duckdb.__version__}")
            con = duckdb.connect(str(new))
            try:
                con.execute(f"IMPORT DATABASE '{str(export).replace(chr(39), chr(39) * 2)}'")
                con.execute("CHECKPOINT")
            finally:
                con.close()
            kept = path.with_name(f"{path.name}.storage-{version}")
            n = 1
            while kept.exists():
                n += 1
                kept = path.with_name(f"{path.name}.storage-{version}.{n}")
            # never a moment without a catalogue file: the original gets a second name, its
            # WAL (if a writer left one) moves beside it, and the new file takes the name in
            # one rename (the same folder)
            try:
                os.link(path, kept)
            except OSError:  # a file system without hard links
                shutil.copy2(path, kept)
            wal = path.with_name(path.name + ".wal")
            if wal.exists():
                os.replace(wal, kept.with_name(kept.name + ".wal"))
            os.replace(new, path)
    return kept
