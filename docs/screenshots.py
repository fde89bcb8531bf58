"""The screenshots of docs/screenshots/ and the README: a real chromium on a real `dam serve`
over a small library made from the shared model corpus (or the sample library without it).

    .venv/bin/python docs/screenshots.py [--out docs/screenshots]     (make screenshots)

It makes the library under a temporary folder, runs `dam run` on it, reviews one duplicate
group (so the Duplicates page shows a choice), and photographs every page.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dam_dagster_tests.conftest import CORPUS  # noqa: E402
from dam_dagster_tests.conftest_web import Server, chromium, dam_run  # noqa: E402

PRINTS = {
    "prints/robotics": ["ADIS16480.STL", "idler_riser.STL", "plate_holes.STL", "angle_block.STL"],
    "prints/figures": ["bunny.ply", "suzanne.ply", "rabbit.obj", "Duck.glb", "monkey.glb"],
    "prints/mechanical": [
        "cycloidal.ply",
        "counter.unitsmm.STL",
        "octagonal_pocket.stl",
        "round.stl",
    ],
    "prints/misc": ["teapot.stl", "quadknot.obj", "fandisk.obj", "torus.STL", "box.STL"],
    "slicer": ["counterX.3MF", "P_XPM_0331_01.3mf"],
}
COPIES = {
    "backup/2024/bunny (copy).ply": "bunny.ply",
    "backup/2024/teapot.stl": "teapot.stl",
    "downloads/teapot (1).stl": "teapot.stl",
    "downloads/cycloidal.ply": "cycloidal.ply",
}


def make_library(root: Path) -> Path:
    if not CORPUS.is_dir():
        from dam_dagster.core.sample import make_sample_library

        return make_sample_library(root)
    for folder, names in PRINTS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy2(CORPUS / name, root / folder / name)
    for dest, name in COPIES.items():
        (root / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(CORPUS / name, root / dest)
    # the same bunny downloaded again, as an STL: "same model, different file"
    import trimesh

    bunny = trimesh.load(CORPUS / "bunny.ply")
    (root / "downloads" / "stanford bunny.stl").write_bytes(bunny.export(file_type="stl"))
    shutil.copy2(CORPUS / "busted.STL", root / "downloads" / "busted.STL")
    (root / "downloads" / "empty.stl").write_bytes(b"")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(HERE / "screenshots"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="dam-shots-"))
    try:
        lib = make_library(base / "models")
        data = base / "data"
        dam_run([lib], data, base)
        server = Server(data, base)
        try:
            shoot(server.url, base, out)
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def shoot(url: str, base: Path, out: Path) -> None:
    import requests
    from selenium.webdriver.common.by import By

    # One reviewed group, chosen the way a person does: the Keep button.
    groups = requests.get(url + "/api/duplicates", timeout=10).json()["groups"]
    teapot = next(g for g in groups if any("teapot" in m["name"] for m in g["members"]))
    keep = max(teapot["members"], key=lambda m: m["id"])
    requests.post(url + "/duplicates/keep", data={"file_id": keep["id"]}, timeout=10)
    deadline = time.monotonic() + 30  # the pictures show the copy caught up with that write
    while time.monotonic() < deadline:
        time.sleep(0.3)
        if not requests.get(url + "/api/status", timeout=10).json()["replica"]["stale"]:
            break
    [bunny] = requests.get(url + "/api/models", params={"q": "prints bunny"}, timeout=10).json()[
        "items"
    ]
    pages = [
        ("library", "/", (1280, 860), False),
        ("library-dark", "/", (1280, 860), True),
        ("library-phone", "/", (390, 844), False),
        ("search", "/?q=teapot&kind=all", (1280, 600), False),
        ("model", f"/models/{bunny['id']}", (1280, 2000), False),
        ("duplicates", "/duplicates", (1280, 1100), False),
        (
            "folders",
            f"/folders?root={requests.utils.quote(str(base / 'models'))}",
            (1280, 560),
            False,
        ),
        ("problems", "/problems", (1280, 900), False),
        ("status", "/status", (1280, 1100), False),
    ]
    for name, path, size, dark in pages:
        driver, why = chromium(base / "dl", base / f"profile-{name}", size=size, dark=dark)
        if driver is None:
            raise SystemExit(why)
        try:
            driver.get(url + path)
            if dark:
                driver.execute_script("document.documentElement.setAttribute('data-theme','dark')")
            for img in driver.find_elements(By.TAG_NAME, "img"):
                driver.execute_script("arguments[0].loading = 'eager'", img)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not driver.execute_script(
                "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
            ):
                time.sleep(0.1)
            driver.save_screenshot(str(out / f"{name}.png"))
            print(out / f"{name}.png")
        finally:
            driver.quit()


if __name__ == "__main__":
    os.environ.pop("DAM_LIBRARY_ROOTS", None)
    main()
