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
    a copy across roots, a broken and an empty model, an embedded preview, a text file; the
    pair's mesh once more as an OBJ (same model, different file) and a sliced G-code."""
    import trimesh

    from .slicer_files import prusa_gcode

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
    box_obj = trimesh.load(corpus / "box.STL").export(file_type="obj")
    (main / "models" / "box.obj").write_text(box_obj)
    (main / "models" / "bracket.gcode").write_bytes(prusa_gcode())
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


# --- a real server and a real browser -----------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`dam serve` as a person starts it, on a free port of 127.0.0.1."""

    def __init__(self, data: Path, cwd: Path, env: dict | None = None):
        import time

        import requests

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(cwd / f"dam-serve-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [str(BIN / "dam"), "serve", "--port", str(self.port)],
            cwd=cwd,
            env={
                **os.environ,
                "DAM_DATA_DIR": str(data),
                "DAGSTER_HOME": str(data / "dagster_home"),
                **(env or {}),
            },
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).json()["replica_ready"]:
                    return
            except (requests.ConnectionError, ValueError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"dam serve did not come up: {(cwd / self.log.name).read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def chromium(download_dir: Path, profile_dir: Path, size=(1280, 900), dark: bool = False):
    """Debian's chromium driven by Selenium through Debian's chromedriver, or None (with the
    reason) when either is missing."""
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        return None, (
            "chromium and chromedriver are needed for the browser tests: "
            "apt-get install chromium chromium-driver (make install does it as root)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None, "selenium is not installed (it is in the test extra: make install)"
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.add_argument(f"--window-size={size[0]},{size[1]}")
    if dark:
        options.add_argument("--force-dark-mode")
        options.add_argument("--blink-settings=preferredColorScheme=0")
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(download_dir),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)}
    )
    return browser, None


ALL_IMAGES_LOADED = """
return Array.from(document.images).map(function (img) {
  return [img.getAttribute('src'), img.complete, img.naturalWidth];
});
"""
