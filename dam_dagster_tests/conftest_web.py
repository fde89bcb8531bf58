"""Helpers for the library browser's tests (imported by them; pytest does not load this file by
itself): a library of real models with hostile names, catalogued by a real `dam run`, and the
app over it with Starlette's test client."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from dam_dagster.web.app import Settings, create_app

from .conftest import BIN

# Names a browser must escape and a shell plan must quote. One group of identical files.
HOSTILE = [
    "<img src=x onerror=alert(1)>.stl",
    'it\'s "quoted" & more.stl',
    "new\nline.stl",
    "$HOME and `whoami`.stl",
    "-rf leading dash.stl",
    "with space.stl",
]
BAD_UTF8 = b"bad \xff\xfe name.stl"


def make_web_library(base: Path, corpus: Path) -> dict:
    """Two roots of real models: a group of 7 identical files under hostile names, a pair,
    a copy across roots, a broken and an empty model, an embedded preview, a text file."""
    main, other = base / "main", base / "other"
    for sub in ("models", "backup/2024", "misc", "odd names"):
        (main / sub).mkdir(parents=True, exist_ok=True)
    other.mkdir(parents=True, exist_ok=True)
    torus = (corpus / "torus.STL").read_bytes()
    (main / "models" / "torus.stl").write_bytes(torus)
    for name in HOSTILE:
        (main / "odd names" / name).write_bytes(torus)
    with open(os.path.join(os.fsencode(main / "odd names"), BAD_UTF8), "wb") as fh:
        fh.write(torus)
    shutil.copy2(corpus / "box.STL", main / "models" / "box.STL")
    shutil.copy2(corpus / "box.STL", main / "backup" / "2024" / "box copy.STL")
    shutil.copy2(corpus / "Duck.glb", main / "models" / "Duck.glb")
    shutil.copy2(corpus / "Duck.glb", other / "Duck.glb")
    shutil.copy2(corpus / "counterX.3MF", main / "models" / "counterX.3MF")  # embedded preview
    shutil.copy2(corpus / "featuretype.3MF", main / "models" / "featuretype.3MF")
    (main / "misc" / "broken.stl").write_bytes(b"solid broken\nfacet normal 0 0\n")
    (main / "misc" / "empty.stl").write_bytes(b"")
    (main / "misc" / "notes.txt").write_text("print in PETG\n")
    return {"roots": [main, other], "main": main, "other": other}


def dam_run(roots: list[Path], data: Path, cwd: Path, extra_env: dict | None = None):
    env = {
        **os.environ,
        "DAM_LIBRARY_ROOTS": ":".join(str(r) for r in roots),
        "DAM_DATA_DIR": str(data),
        "DAGSTER_HOME": str(data / "dagster_home"),
        **(extra_env or {}),
    }
    proc = subprocess.run(
        [str(BIN / "dam"), "run"], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    # The broken model fails permanently: the run itself succeeds.
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def make_app(data: Path, **kw):
    settings = Settings(
        data_dir=data,
        dagster_home=data / "dagster_home",
        poll_s=kw.pop("poll_s", 0.2),
        extra_hosts=["testserver"],
        **kw,
    )
    return create_app(settings)
