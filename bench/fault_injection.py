"""Fault injection: attack a real `dam` the way issue 8's author did, then check the answer by
brute force.

    make bench-faults                     # 15-25 minutes on 2 CPUs; prints its seed
    .venv/bin/python bench/fault_injection.py [--seed N] [--kills 40] [--concurrent-runs 6]
        [--readers 4] [--phases concurrent,kills,disk-full] [--keep] [--out bench/out]

It builds a library under a temp folder (outside the repository): the hard duplicate cases of
the test suite, real models copied from the shared corpus (some twice, under other names), a
43 MB model for the slow lane, and bad inputs of every kind a real library holds or a careless
user makes (`build_library`: 41 of them, each with what the catalogue must say). Every `dam`
command is the installed one, in a subprocess, with root's permission override dropped (as
the tests' run_unprivileged does), so unreadable files and folders are unreadable to it.

1. concurrent: from an EMPTY data folder, several `dam run` at once and readers (`dam status`,
   `dam duplicates`) in a loop, while files vanish and change in one folder of the library.
   Every process must end with exit 0 or a clear `dam:` line (never a traceback); then one
   more `dam run` must succeed and give the right answer.
2. kills: dozens of `dam run` killed with SIGKILL (the whole process group: render workers
   and fork server too) at seeded random moments, from start-up (the first one on an empty
   data folder) to the slow lane, each followed sometimes by another kill, sometimes by a
   clean run and a check of the answer; sometimes a second run is left to finish beside the
   one killed. Between runs the library changes as a user changes it.
3. disk-full: a small tmpfs (mounted here, as root) as DAM_DATA_DIR, filled at several
   moments: `dam run` must fail with one clear line, cause first; reading must still work;
   after freeing the space a run must give the right answer.

A check (after every clean run) compares: the duplicate groups of `dam duplicates --format
json` with a brute-force MD5 of every file, read whole by a process with the same (dropped)
permissions; `dam status --json` with those groups; every model's thumbnail row with the file
(an `ok` row's PNG exists, is a PNG of the configured size, and is named by the MD5 of the
file as it is now); the library with the state the bench left it in (paths, modes, owners,
sizes, mtimes, ctimes, MD5 of every file: nothing in a library root may change); no `*.tmp` in
thumbnails/; no run in progress and none without a process; one alembic head in every SQLite
database of the Dagster home. Figures: printed as a table, and written to
bench/out/fault_injection.json.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
BIN = Path(sys.executable).parent
DAM = BIN / "dam"
sys.path.insert(0, str(PROJECT))

MIB = 1 << 20
THUMB_SIZE = 256

# Run as root, every `dam` (and the brute force) gets this trampoline: it drops
# CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, then execs, so root meets
# permission bits as anyone else (as dam_dagster_tests/conftest.py's run_unprivileged does,
# without a preexec_fn, which is unsafe beside threads).
TRAMPOLINE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for cap in (1, 2):
    if libc.prctl(24, cap, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_CAPBSET_DROP, {cap}) failed: errno {ctypes.get_errno()}")
os.execv(sys.argv[1], sys.argv[1:])
"""
PRIVILEGED = os.geteuid() == 0
TRACE_FRAME = re.compile(r'^\s+File "', re.M)  # a line of a Python stack trace


def unprivileged(argv: list[str]) -> list[str]:
    return [sys.executable, "-c", TRAMPOLINE, *argv] if PRIVILEGED else argv


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def display(raw: bytes) -> str:
    """The path as people (and `dam`) show it: bytes that are not UTF-8 as \\xNN."""
    return raw.decode("utf-8", "backslashreplace")


# --- running dam ---------------------------------------------------------------------------
@dataclass
class Outcome:
    args: list[str]
    code: int | None
    stdout: str
    stderr: str
    seconds: float
    killed: bool = False
    lines: list[tuple[float, str]] = field(default_factory=list)  # stderr, with times

    @property
    def verdict(self) -> str:
        """'killed', 'ok', 'clear error' (exit 1 or 2 with a `dam:` line), or 'unclear'
        (a traceback, a signal we did not send, a hang, no message)."""
        if self.killed:
            return "killed"
        if self.code is None or "Traceback" in self.stderr or TRACE_FRAME.search(self.stderr):
            return "unclear"
        if self.code == 0:
            return "ok"
        if self.code in (1, 2) and self.error_lines:
            return "clear error"
        return "unclear"

    @property
    def error_lines(self) -> list[str]:
        return [
            line
            for line in self.stderr.splitlines()
            if line.startswith("dam:") and " by a process that is gone" not in line
        ]


class DamProcess:
    """One `dam` command in its own session (so a kill takes its whole process group), its
    stderr read line by line with the time each line came."""

    counter = 0
    alive = 0
    max_alive = 0
    guard = threading.Lock()

    def __init__(self, env: dict, cwd: Path, *args: str):
        with DamProcess.guard:
            DamProcess.counter += 1
            self.tag = f"{os.getpid()}-{DamProcess.counter}"
            DamProcess.alive += 1
            DamProcess.max_alive = max(DamProcess.max_alive, DamProcess.alive)
        self.args = list(args)
        self.started = time.monotonic()
        self.lines: list[tuple[float, str]] = []
        self.killed = False
        self._counted = True
        self.proc = subprocess.Popen(
            unprivileged([str(DAM), *args]),
            env={**env, "DAM_FAULT_TAG": self.tag},
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._out: list[bytes] = []
        self._readers = [
            threading.Thread(target=self._read_err, daemon=True),
            threading.Thread(target=lambda: self._out.append(self.proc.stdout.read()), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read_err(self) -> None:
        for raw in iter(self.proc.stderr.readline, b""):
            self.lines.append((time.monotonic() - self.started, raw.decode("utf-8", "replace")))

    def seen(self, marker: str) -> float | None:
        """When a stderr line containing `marker` came (seconds after the start), if it did."""
        for t, line in list(self.lines):
            if marker in line:
                return t
        return None

    def kill(self) -> bool:
        """SIGKILL the whole process group; True when the command was still running."""
        if self.proc.poll() is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.killed = True
        return True

    def wait(self, timeout: float = 900) -> Outcome:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # a hang: an unclear failure, and we end it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            code = None
        for t in self._readers:
            t.join(timeout=10)
        with DamProcess.guard:
            if self._counted:
                DamProcess.alive -= 1
                self._counted = False
        stderr = "".join(line for _, line in self.lines)
        return Outcome(
            self.args,
            code,
            b"".join(self._out).decode("utf-8", "replace"),
            stderr,
            time.monotonic() - self.started,
            self.killed,
            list(self.lines),
        )


def tagged_processes(tag: str) -> list[int]:
    """Live (not zombie) processes whose environment carries DAM_FAULT_TAG=tag."""
    needle = f"DAM_FAULT_TAG={tag}\0".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read() + b"\0":
                    continue
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in (b"Z", b"X"):
            found.append(int(entry))
    return found


# --- the library ---------------------------------------------------------------------------
# Real models from the shared corpus, copied (a spread of formats; some are broken on
# purpose: their rows say so, permanently).
CORPUS_MODELS = [
    "20mm-xyz-cube.stl", "7_8ths_cube.stl", "angle_block.STL", "box.STL", "torus.STL",
    "teapot.stl", "idler_riser.STL", "plate_holes.STL", "octagonal_pocket.stl", "featuretype.STL",
    "ADIS16480.STL", "1002_tray_bottom.STL", "counter.unitsmm.STL", "busted.STL", "round.stl",
    "soup.stl", "multibody.stl", "unit_sphere.STL", "bunny.ply", "cycloidal.ply", "fixed_top.ply",
    "suzanne.ply", "quadknot.obj", "fandisk.obj", "capsule.obj", "capsule.mtl", "capsule0.jpg",
    "ballA.off", "comments.off", "Duck.glb", "BoxTextured.glb", "monkey.glb",
    "P_XPM_0331_01.3mf", "featuretype.3MF", "pyramids.3mf", "duck.dae", "blocks.3dxml",
    "featuretype.STEP", "points_agisoft.xyz", "fuze.zip",
]  # fmt: skip
COPIED_TWICE = ["torus.STL", "bunny.ply", "Duck.glb", "featuretype.3MF", "ADIS16480.STL"]
# Binary STLs whose header can be changed to make new content of the same mesh.
VARIANT_SOURCES = {
    "small": ["box.STL", "torus.STL", "featuretype.STL", "angle_block.STL"],
    "mid": ["counter.unitsmm.STL"],  # 4.2 MB; and box.STL tiled four times, 1.8 MB
}


def binary_stl(data: bytes) -> bool:
    return len(data) >= 84 and len(data) == 84 + 50 * struct.unpack_from("<I", data, 80)[0]


def retag(stl: bytes, tag: str) -> bytes:
    """The same binary STL mesh with another 80-byte header: other bytes, same model."""
    return f"dam fault bench {tag}".encode().ljust(80, b" ")[:80] + stl[80:]


def tiled_stl(stl: bytes, copies: int, tag: str) -> bytes:
    """A big binary STL: `copies` translated copies of a real mesh in a grid."""
    import numpy as np

    n = struct.unpack_from("<I", stl, 80)[0]
    rec = np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")])
    tris = np.frombuffer(stl, rec, n, 84)
    span = float(np.ptp(tris["v"].reshape(-1, 3), axis=0).max()) * 1.2
    side = int(np.ceil(np.sqrt(copies)))
    parts = []
    for i in range(copies):
        t = tris.copy()
        t["v"] += np.array([span * (i % side), span * (i // side), 0], np.float32)
        parts.append(t)
    body = np.concatenate(parts)
    head = f"dam fault bench big {tag}".encode().ljust(80, b" ")[:80]
    return head + struct.pack("<I", len(body)) + body.tobytes()


def zip_bomb_3mf(path: Path, declared_mb: int) -> None:
    """A 3MF whose model part inflates from a few MB to `declared_mb` MB of spaces."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        with z.open("3D/3dmodel.model", "w", force_zip64=True) as part:
            chunk = b" " * (4 * MIB)
            for _ in range(declared_mb // 4):
                part.write(chunk)


@dataclass
class BadInput:
    kind: str
    path: bytes  # absolute, exact bytes
    expect: tuple  # ("issue", kind) | ("thumb", statuses) | ("hash_error", class) | ...
    note: str = ""


def _put(path: bytes | Path, data: bytes) -> bytes:
    path = os.fsencode(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def build_library(root: Path, corpus: Path, rng: random.Random) -> tuple[list[BadInput], dict]:
    """The library: hard cases, real models, a slow-lane model, bad inputs. Returns the bad
    inputs with what the catalogue must say about each, and the mesh sources for variants."""
    from dam_dagster_tests.conftest import make_hard_cases

    make_hard_cases(root / "hard")
    models = root / "models"
    models.mkdir()
    for name in CORPUS_MODELS:
        shutil.copyfile(corpus / name, models / name)
    for i, name in enumerate(COPIED_TWICE):  # duplicates under other names, other folders
        dest = root / "backup" / f"set {i}" / f"copy of {name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus / name, dest)
    sources = {k: [(corpus / n).read_bytes() for n in v] for k, v in VARIANT_SOURCES.items()}
    for group in sources.values():
        assert all(binary_stl(s) for s in group)
    sources["mid"].append(tiled_stl(sources["small"][0], 4, "mid"))
    torus = (corpus / "torus.STL").read_bytes()
    sources["big"] = torus
    _put(root / "big" / "torus grid.stl", tiled_stl(torus, 100, "0"))  # 43 MB: the slow lane

    b = os.fsencode(root / "bad")
    box = sources["small"][0]
    bad: list[BadInput] = []

    def add(kind, rel: bytes, data: bytes | None, expect, note=""):
        path = os.path.join(b, rel)
        if data is not None:
            _put(path, data)
        bad.append(BadInput(kind, path, expect, note))
        return path

    add("empty file", b"empty.stl", b"", ("empty",))
    add(
        "truncated binary STL",
        b"truncated.stl",
        box[: 84 + 50 * 7 + 13],
        ("thumb", {"failed"}, False),
    )
    add("random bytes named .stl", b"noise.stl", rng.randbytes(5000), ("thumb", {"failed"}, False))
    add(
        "ASCII STL of nonsense",
        b"nonsense.stl",
        b"solid x\nfacet normal nan nan nan\nendsolid",
        ("thumb", {"failed"}, False),
    )
    bomb = os.path.join(b, b"bomb.3mf")
    os.makedirs(b, exist_ok=True)
    zip_bomb_3mf(Path(os.fsdecode(bomb)), 1024)
    add("zip bomb 3MF (1 GB part)", b"bomb.3mf", None, ("thumb_class", "ArchiveBomb"))
    add(
        "3MF that is not a zip", b"not a zip.3mf", rng.randbytes(3000), ("thumb", {"failed"}, False)
    )
    add(
        "GLB with a broken body",
        b"broken.glb",
        b"glTF" + struct.pack("<II", 2, 400) + rng.randbytes(380),
        ("thumb", {"failed"}, False),
    )
    png = (corpus / "capsule0.jpg").read_bytes()
    add("truncated JPEG", b"cut.jpg", png[: len(png) // 3], ("thumb", {"failed"}, False))
    gltf = (corpus / "Mesh_PrimitiveMode_04.gltf").read_bytes()
    add("glTF whose .bin buffer is missing", b"no buffer.gltf", gltf, ("thumb", {"failed"}, False))
    obj = (corpus / "fuze.obj").read_bytes()
    add("OBJ whose .mtl is missing", b"no material.obj", obj, ("thumb", {"ok"}, False))
    add("undecodable name (raw 0xFF)", b"bad\xff.stl", box, ("issue", "undecodable_name"))
    add(
        "name displaying like the raw one",
        b"bad\\xff.stl",
        box,
        ("thumb", {"ok"}, False),
        "a backslash, x, f, f: shows as the raw 0xFF name does; same content: one group",
    )
    nfc = unicodedata.normalize("NFC", "café.stl").encode()
    nfd = unicodedata.normalize("NFD", "café.stl").encode()
    add("NFC name", nfc, retag(box, "cafe"), ("thumb", {"ok"}, False))
    add("NFD name, same look", nfd, retag(box, "cafe"), ("thumb", {"ok"}, False))
    add("newline in the name", b"new\nline.stl", retag(box, "nl"), ("thumb", {"ok"}, False))
    add(
        "quotes in the name", b'it\'s "quoted" & <b>.stl', retag(box, "q"), ("thumb", {"ok"}, False)
    )
    add("leading dashes", b"--help.stl", retag(box, "dash"), ("thumb", {"ok"}, False))
    add("leading dash, rm-like", b"-rf .stl", retag(box, "dash"), ("thumb", {"ok"}, False))
    add(
        "terminal escape in the name",
        b"\x1b[31mred\x1b[0m\t.stl",
        retag(box, "esc"),
        ("thumb", {"ok"}, False),
    )
    add("255-byte name", b"n" * 251 + b".stl", retag(box, "long"), ("thumb", {"ok"}, False))
    fifo = os.path.join(b, b"pipe.stl")
    os.mkfifo(fifo)
    add("FIFO named .stl", b"pipe.stl", None, ("issue", "special_file"))
    subprocess.run(
        [sys.executable, "-c", "import socket; socket.socket(socket.AF_UNIX).bind('socket.stl')"],
        cwd=b,
        check=True,
    )
    add("socket", b"socket.stl", None, ("issue", "special_file"))
    try:
        os.mknod(os.path.join(b, b"device.stl"), 0o644 | stat.S_IFCHR, os.makedev(1, 3))
        add("character device", b"device.stl", None, ("issue", "special_file"))
    except OSError:
        pass  # not root: no device
    os.symlink(b"/nonexistent/model.stl", os.path.join(b, b"broken link.stl"))
    add("broken symlink", b"broken link.stl", None, ("issue", "broken_symlink"))
    os.symlink(b"loop b.stl", os.path.join(b, b"loop a.stl"))
    os.symlink(b"loop a.stl", os.path.join(b, b"loop b.stl"))
    add("symlink loop", b"loop a.stl", None, ("issue", "symlink_loop"))
    os.symlink(b"..", os.path.join(b, b"up"))
    add("symlink to an ancestor", b"up", None, ("issue", "symlink_skipped"))
    os.symlink(str(models / "box.STL").encode(), os.path.join(b, b"link to box.stl"))
    add("symlink to a model", b"link to box.stl", None, ("issue", "symlink_skipped"))
    os.mkdir(os.path.join(b, b"folder.stl"))
    _put(os.path.join(b, b"folder.stl", b"inside.stl"), retag(box, "inside"))
    add("folder named .stl", b"folder.stl/inside.stl", None, ("thumb", {"ok"}, False))
    # unreadable: a file whose twin is readable (a candidate: read in full, and refused)
    _put(os.path.join(b, b"locked twin.stl"), retag(box, "locked"))
    locked = add(
        "unreadable file (mode 000)",
        b"locked.stl",
        retag(box, "locked"),
        ("hash_error", "PermissionError"),
    )
    os.chmod(locked, 0)
    for rel, mode, kind in (
        (b"sealed", 0, "unreadable folder (mode 000)"),
        (b"unlistable", 0o311, "folder without read (mode 311)"),
    ):
        folder = os.path.join(b, rel)
        _put(os.path.join(folder, b"hidden twin.stl"), box)
        add(kind, rel, None, ("issue", "permission_denied"))
        os.chmod(folder, mode)
    nox = os.path.join(b, b"no search")
    _put(os.path.join(nox, b"unstattable.stl"), box)
    os.chmod(nox, 0o644)  # listable, but its entries cannot be examined
    add(
        "folder without search (mode 644)",
        b"no search/unstattable.stl",
        None,
        ("issue", "permission_denied"),
    )
    # hard links: two names, one inode, one content: a group of two
    _put(os.path.join(b, b"hardlink a.stl"), retag(box, "hard"))
    os.link(os.path.join(b, b"hardlink a.stl"), os.path.join(b, b"hardlink b.stl"))
    add("hard link", b"hardlink b.stl", None, ("thumb", {"ok"}, False))
    # NAS and OS litter, identical in two folders: excluded, never a group
    for where in (b"", b"folder.stl/"):
        _put(os.path.join(b, where + b".DS_Store"), b"\0\0\0\1Bud1" + b"\0" * 2000)
        _put(os.path.join(b, where + b"._inside.stl"), b"\0\5\26\7" + b"\0" * 4000)
    add("macOS litter (.DS_Store, ._*)", b".DS_Store", None, ("absent",))
    # times out of the ordinary
    for rel, ns in (
        (b"year 2100.stl", 4102444800 * 10**9),
        (b"epoch.stl", 0),
        (b"before 1970.stl", -(10**18)),
    ):
        p = _put(os.path.join(b, rel), retag(box, rel.decode()))
        os.utime(p, ns=(ns, ns))
    add("mtime in 2100", b"year 2100.stl", None, ("thumb", {"ok"}, False))
    add("mtime at the epoch", b"epoch.stl", None, ("thumb", {"ok"}, False))
    add("mtime before 1970", b"before 1970.stl", None, ("thumb", {"ok"}, False))
    # a deep tree (within PATH_MAX) whose bottom holds a duplicate, and one deeper than PATH_MAX
    deep = os.path.join(b, *[b"d%03d" % i for i in range(150)])
    _put(os.path.join(deep, b"deep twin.stl"), sources["small"][1])
    add(
        "150 folders deep",
        os.path.relpath(os.path.join(deep, b"deep twin.stl"), b),
        None,
        ("thumb", {"ok"}, False),
    )
    too_long = _deeper_than_path_max(os.path.join(b, b"too long"))
    add("a path longer than PATH_MAX", os.path.relpath(too_long, b), None, ("issue_under", "error"))
    # huge sparse files: two identical 512 MiB + 1 blobs (read in full: a group) and a
    # 520 MiB sparse "STL" for the >=500MB slow-lane partition
    huge = root / "huge"
    huge.mkdir()
    for name, size in (
        ("sparse.bin", 512 * MIB + 1),
        ("sparse copy.bin", 512 * MIB + 1),
        ("sparse.stl", 520 * MIB),
    ):
        with open(huge / name, "wb") as f:
            f.truncate(size)
    bad.append(
        BadInput(
            "huge sparse STL (520 MiB of holes)",
            os.fsencode(huge / "sparse.stl"),
            ("thumb", {"failed"}, False),
        )
    )
    bad.append(
        BadInput(
            "huge sparse twins (512 MiB)", os.fsencode(huge / "sparse copy.bin"), ("catalogued",)
        )
    )

    # zip archives: their members are files of the catalogue (listed, never extracted)
    def zip_with(rel: bytes, entries: list[tuple[str, bytes]]) -> bytes:
        path = os.path.join(b, rel)
        with zipfile.ZipFile(os.fsdecode(path), "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in entries:
                z.writestr(zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0)), data)
        return path

    twin = (models / "torus.STL").read_bytes()
    kit = zip_with(
        b"kit.zip",
        [
            ("parts/torus.stl", twin),
            ("../escape.stl", retag(box, "slip")),
            ("__MACOSX/parts/._torus.stl", b"\0" * 4000),
            ("readme.txt", b"print at 0.2 mm\n"),
        ],
    )
    bad.append(
        BadInput(
            "zip member equal to a loose model",
            kit + b"!/parts/torus.stl",
            ("thumb", {"ok"}, False),
            "grouped with models/torus.STL",
        )
    )
    bad.append(
        BadInput(
            "zip member named ../escape.stl",
            kit + b"!/../escape.stl",
            ("catalogued",),
            "nothing is extracted anywhere",
        )
    )
    bad.append(
        BadInput("__MACOSX litter in a zip", kit + b"!/__MACOSX/parts/._torus.stl", ("absent",))
    )
    inner = zip_with(b"inner.zip", [("box.stl", box)])
    with open(inner, "rb") as f:
        outer = zip_with(b"outer.zip", [("inner.zip", f.read())])
    os.unlink(inner)
    bad.append(BadInput("zip inside a zip", outer + b"!/inner.zip", ("catalogued",)))
    bad.append(
        BadInput(
            "member of a zip inside a zip",
            outer + b"!/inner.zip!/box.stl",
            ("absent",),
            "archives inside archives are members, not opened",
        )
    )
    bomb_zip = os.path.join(b, b"bomb.zip")
    with zipfile.ZipFile(os.fsdecode(bomb_zip), "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("huge.stl", "w", force_zip64=True) as part:
            for _ in range(64):
                part.write(b" " * (4 * MIB))
    bad.append(
        BadInput(
            "zip bomb member (256 MB of spaces)",
            bomb_zip + b"!/huge.stl",
            ("thumb_class", "ArchiveBomb"),
        )
    )
    add("random bytes named .zip", b"noise.zip", rng.randbytes(4000), ("issue", "broken_archive"))
    with open(kit, "rb") as f:
        half = f.read()
    add("zip cut in half", b"cut.zip", half[: len(half) // 2], ("issue", "broken_archive"))
    # what the bench changes while and between runs
    (root / "churn").mkdir()
    for i in range(8):
        _put(root / "churn" / f"c{i}.stl", retag(box, f"churn{i}"))
    for name in ("a.stl", "b.stl"):  # same size, same mtime, content rewritten between runs
        _put(root / "sneaky" / name, retag(box, "sneaky"))
    _put(root / "perm" / "toggle.stl", retag(box, "toggle"))  # made unreadable now and then
    _put(root / "perm" / "partner.stl", retag(box, "toggle"))
    return bad, sources


def _deeper_than_path_max(top: bytes) -> bytes:
    """Folders nested past PATH_MAX (4096), made through directory file descriptors; a file at
    the bottom. Returns its path (longer than any path call accepts)."""
    os.makedirs(top)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    name = b"x" * 200
    path = top
    try:
        for _ in range(22):  # 22 x 201 bytes: past 4096
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            path = os.path.join(path, name)
        leaf = os.open(b"bottom.stl", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"unreachable by path")
        os.close(leaf)
    finally:
        os.close(fd)
    return os.path.join(path, b"bottom.stl")


# --- the state of the library, and what the bench itself changed ------------------------------
class Library:
    """The library root and the state it must be in. The bench records which paths it changes
    (`touch`); once no `dam` runs, `settle` takes their new state into the expectation. Any
    other difference between `snapshot()` and the expectation is a change made by `dam`.

    Contents are hashed by a root process, cached per (path, inode, size, mtime, ctime): a write
    through the kernel always moves ctime, which no user call can set back. `full_check`
    reads every byte again, without the cache."""

    def __init__(self, root: Path):
        self.root = os.fsencode(root)
        self.churn = os.path.join(self.root, b"churn")
        self._cache: dict[tuple, str] = {}
        self.dirty: set[bytes] = set()  # trees the bench changed
        self.dirty_entries: set[bytes] = set()  # folders whose own entry changed
        self.expected = self.snapshot()

    def _digest(self, name: bytes, dir_fd: int, st: os.stat_result, path: bytes, cache: bool):
        key = (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if cache and key in self._cache:
            return self._cache[key]
        h = hashlib.md5()
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            while chunk := os.read(fd, 4 * MIB):
                h.update(chunk)
        finally:
            os.close(fd)
        self._cache[key] = h.hexdigest()
        return self._cache[key]

    def _entry(self, name: bytes, dir_fd: int, path: bytes, cache: bool = True):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        extra = None
        if stat.S_ISREG(st.st_mode):
            extra = self._digest(name, dir_fd, st, path, cache)
        elif stat.S_ISLNK(st.st_mode):
            extra = os.readlink(name, dir_fd=dir_fd)
        size = st.st_size if not stat.S_ISDIR(st.st_mode) else None
        return (st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, st.st_ctime_ns, extra)

    def snapshot(
        self, top: bytes | None = None, cache: bool = True, tree: bool = True
    ) -> dict[bytes, tuple]:
        """Every entry under `top` (default: the root), through directory descriptors, so
        folders deeper than PATH_MAX are included."""
        top = top or self.root
        state = {}
        if not os.path.lexists(top):
            return state
        parent_fd = os.open(os.path.dirname(top), os.O_RDONLY | os.O_DIRECTORY)
        try:
            state[top] = self._entry(os.path.basename(top), parent_fd, top, cache)
        finally:
            os.close(parent_fd)
        if not tree or not stat.S_ISDIR(state[top][0]):
            return state
        for dirpath, dirs, files, dfd in os.fwalk(top):
            for name in dirs + files:
                path = os.path.join(dirpath, name)
                with contextlib.suppress(FileNotFoundError):
                    state[path] = self._entry(name, dfd, path, cache)
        return state

    def touch(self, *paths: bytes | str | Path) -> None:
        """The bench changed (made, rewrote, removed) these paths: each path's whole tree,
        and the entries (not the trees) of the folders above it, whose mtime moved."""
        for p in paths:
            p = os.fsencode(p)
            self.dirty.add(p)
            up = os.path.dirname(p)
            while len(up) >= len(self.root):
                self.dirty_entries.add(up)
                up = os.path.dirname(up)

    def settle(self, churn: bool = False) -> None:
        """Take the new state of what the bench changed (and of churn/, when files churned
        beside a run) into the expectation. Call only when no `dam` runs."""
        for top in self.dirty | ({self.churn} if churn else set()):
            prefix = top + b"/"
            for p in [p for p in self.expected if p == top or p.startswith(prefix)]:
                del self.expected[p]
            self.expected.update(self.snapshot(top))
        for entry in self.dirty_entries:
            self.expected.pop(entry, None)
            self.expected.update(self.snapshot(entry, tree=False))
        self.dirty.clear()
        self.dirty_entries.clear()

    def changes(self, cache: bool = True) -> list[str]:
        now = self.snapshot(cache=cache)
        out = []
        for p in sorted(set(now) | set(self.expected)):
            if now.get(p) != self.expected.get(p):
                what = (
                    "appeared"
                    if p not in self.expected
                    else "vanished"
                    if p not in now
                    else ("changed")
                )
                out.append(f"{what}: {display(p)} {self.expected.get(p)} -> {now.get(p)}")
        return out


# --- the brute force ----------------------------------------------------------------------
def member_md5s(path: bytes, excluded) -> dict[bytes, str]:
    """MD5 of every non-empty member of a zip, inflated whole (archives inside are members,
    not opened): {archive path bytes + b"!/" + member name: md5}. Unreadable members (an
    encrypted one, a broken archive) have none."""
    out = {}
    try:
        with zipfile.ZipFile(os.fsdecode(path)) as z:
            for info in z.infolist():
                name = info.filename.lstrip("/")
                if info.is_dir() or not name or info.file_size == 0 or info.flag_bits & 1:
                    continue
                if any(excluded(part) for part in name.split("/")):
                    continue
                h = hashlib.md5()
                with z.open(info) as member:
                    while chunk := member.read(4 * MIB):
                        h.update(chunk)
                out[path + b"!/" + name.encode()] = h.hexdigest()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, zlib.error):
        return {}
    return out


def brute_force_main(root: str) -> None:
    """Child mode (run with the same dropped permissions as dam): MD5 of every non-empty
    regular file reachable by path from `root`, read whole, and of every member of its zips;
    default-excluded names skipped. Prints {hex(path bytes): md5}."""
    import fnmatch

    from dam_dagster.core.config import DEFAULT_EXCLUDES

    rx = re.compile("|".join(fnmatch.translate(p) for p in DEFAULT_EXCLUDES), re.I | re.S)
    out = {}
    for dirpath, dirs, files in os.walk(os.fsencode(root)):
        dirs[:] = [d for d in dirs if not rx.match(display(d))]
        for name in files:
            if rx.match(display(name)):
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                    continue
                h = hashlib.md5()
                with open(path, "rb") as f:
                    while chunk := f.read(4 * MIB):
                        h.update(chunk)
            except OSError:
                continue  # unreadable to dam's user: it cannot be hashed by dam either
            out[path.hex()] = h.hexdigest()
            if name.lower().endswith(b".zip"):
                members = member_md5s(path, lambda part: rx.match(part))
                out.update({k.hex(): v for k, v in members.items()})
    json.dump(out, sys.stdout)


def brute_force(root: Path) -> dict[bytes, str]:
    proc = subprocess.run(
        unprivileged([sys.executable, __file__, "--brute-force", str(root)]),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the brute force failed: {proc.stderr[-2000:]}")
    return {bytes.fromhex(k): v for k, v in json.loads(proc.stdout).items()}


def expected_groups(md5s: dict[bytes, str]) -> list[list[str]]:
    by = {}
    for path, digest in md5s.items():
        by.setdefault(digest, []).append(display(path))
    return sorted(sorted(v) for v in by.values() if len(v) > 1)


# --- the bench ----------------------------------------------------------------------------
@dataclass
class Figures:
    runs: int = 0
    kills: int = 0
    readers: int = 0
    faults: Counter = field(default_factory=Counter)
    survived: Counter = field(default_factory=Counter)
    wrong_answers: int = 0
    library_changes: int = 0
    unclear: list[dict] = field(default_factory=list)
    verifications: list[dict] = field(default_factory=list)
    errors_seen: Counter = field(default_factory=Counter)  # distinct clear error lines


class Bench:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = Path(tempfile.mkdtemp(prefix=f"dam-faults-{args.seed}-"))
        self.root = self.work / "library"
        self.fig = Figures()
        self.pending: Counter = Counter()  # faults since the last check
        self.tag_n = 0
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("DAM_")}
        self.base_env.pop("DAGSTER_HOME", None)
        self.base_env["DAM_LIBRARY_ROOTS"] = str(self.root)
        self.report: dict = {"seed": args.seed, "phases": {}}
        self.sources: dict = {}
        self.bad: list[BadInput] = []
        self.last_clean_s = 12.0
        self.extra_env: dict[str, str] = {}  # e.g. DAGSTER_HOME on another disk

    # -- processes --------------------------------------------------------------------------
    def env(self, data: Path) -> dict:
        return {**self.base_env, "DAM_DATA_DIR": str(data), **self.extra_env}

    def start(self, data: Path, *args: str) -> DamProcess:
        if args and args[0] == "run":
            self.fig.runs += 1
        else:
            self.fig.readers += 1
        return DamProcess(self.env(data), self.work, *args)

    def note(self, outcome: Outcome, where: str) -> str:
        """Record an outcome's verdict; an unclear one is a failure of the project."""
        verdict = outcome.verdict
        for line in outcome.error_lines:
            self.fig.errors_seen[re.sub(r"\d+", "N", line)[:160]] += 1
        if verdict == "unclear":
            self.fig.unclear.append(
                {
                    "where": where,
                    "args": outcome.args,
                    "code": outcome.code,
                    "stderr": outcome.stderr[-3000:],
                }
            )
            log(
                f"UNCLEAR ({where}): dam {' '.join(outcome.args)} -> {outcome.code}\n"
                f"{outcome.stderr[-1500:]}"
            )
        return verdict

    def dam(self, data: Path, *args: str, where: str = "") -> Outcome:
        outcome = self.start(data, *args).wait()
        self.note(outcome, where or " ".join(args))
        return outcome

    # -- the user's changes -----------------------------------------------------------------
    def new_name(self, prefix: str) -> str:
        self.tag_n += 1
        return f"{prefix}{self.tag_n:04d}"

    def perturb(self, lib: Library, slow: bool = False, mid: bool = False) -> list[str]:
        """Change the library as a user does between runs; the bench records what it did."""
        rng, root, done = self.rng, self.root, []
        for _ in range(rng.randint(1, 3)):  # new models: the fast lane has work
            src = rng.choice(self.sources["small"])
            tag = self.new_name("new")
            p = _put(root / "new" / f"{tag}.stl", retag(src, tag))
            lib.touch(p)
        done.append("new models")
        if mid or rng.random() < 0.3:
            tag = self.new_name("mid")
            p = _put(root / "new" / f"{tag}.stl", retag(rng.choice(self.sources["mid"]), tag))
            lib.touch(p)
            done.append("new 1-5MB model")
        if slow or rng.random() < 0.35:  # the slow lane has work
            p = root / "big" / "torus grid.stl"
            _put(p, retag(p.read_bytes(), self.new_name("big")))
            lib.touch(p)
            done.append("slow-lane model rewritten")
        if rng.random() < 0.4:  # a copy: a new duplicate
            candidates = sorted((root / "models").glob("*.*")) + sorted((root / "new").glob("*"))
            src = rng.choice(candidates)
            dest = root / "copies" / f"{self.new_name('copy')} {src.name}"
            dest.parent.mkdir(exist_ok=True)
            shutil.copyfile(src, dest)
            lib.touch(dest)
            done.append("file copied")
        for folder, why in (("new", "file deleted"), ("copies", "copy deleted")):
            files = sorted((root / folder).glob("*")) if (root / folder).is_dir() else []
            if files and rng.random() < 0.35:
                victim = rng.choice(files)
                victim.unlink()
                lib.touch(victim)
                done.append(why)
        files = sorted((root / "new").glob("*")) if (root / "new").is_dir() else []
        if files and rng.random() < 0.3:
            src = rng.choice(files)
            dest = root / "moved" / src.name
            dest.parent.mkdir(exist_ok=True)
            os.rename(src, dest)
            lib.touch(src, dest)
            done.append("file moved")
        if rng.random() < 0.35:  # same size, same mtime, other content (or the twin's again)
            a, target = root / "sneaky" / "a.stl", root / "sneaky" / "b.stl"
            before = os.stat(target)
            data = a.read_bytes()
            if rng.random() < 0.5:
                data = retag(data, f"sneak{self.tag_n}")
            target.write_bytes(data)
            os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
            lib.touch(target)
            self.pending["same size+mtime, new content"] += 1
            done.append("same size+mtime rewrite")
        if rng.random() < 0.2:
            toggle = root / "perm" / "toggle.stl"
            mode = stat.S_IMODE(os.stat(toggle).st_mode)
            os.chmod(toggle, 0o644 if mode == 0 else 0)
            lib.touch(toggle)
            self.pending["permission changed"] += 1
            done.append("permissions toggled")
        if rng.random() < 0.2:  # touched: new mtime, same content
            p = rng.choice(sorted((root / "models").glob("*.*")))
            os.utime(p)
            lib.touch(p)
            done.append("file touched")
        return done

    def churn(self, lib: Library, stop: threading.Event, events: Counter) -> None:
        """Files vanishing, appearing, changing, turning into FIFOs or folders, in churn/,
        while a run walks and reads them."""
        rng = random.Random(self.rng.random())
        churn = Path(os.fsdecode(lib.churn))
        box = self.sources["small"][0]
        while not stop.is_set():
            names = sorted(p.name for p in churn.iterdir())
            action = rng.choice(
                ["create", "copy", "delete", "rewrite", "rewrite", "rename", "fifo", "folder"]
            )
            try:
                if action == "create" or not names:
                    (churn / f"c{rng.randrange(10**6)}.stl").write_bytes(
                        retag(box, f"churn{rng.randrange(10**9)}")
                    )
                else:
                    victim = churn / rng.choice(names)
                    if action == "copy" and victim.is_file():
                        shutil.copyfile(victim, churn / f"c{rng.randrange(10**6)}.stl")
                    elif victim.is_dir() and not victim.is_symlink():
                        shutil.rmtree(victim)
                    elif action == "delete" or not victim.is_file():
                        victim.unlink()
                    elif action == "rewrite":
                        with open(victim, "r+b") as f:  # in place, as an editor saving
                            f.truncate(0)
                            f.write(
                                retag(box, f"churn{rng.randrange(10**9)}")[
                                    : rng.randrange(100, len(box))
                                ]
                            )
                    elif action == "rename":
                        victim.rename(churn / f"r{rng.randrange(10**6)}.stl")
                    elif action == "fifo":
                        victim.unlink()
                        os.mkfifo(victim)
                    elif action == "folder":
                        victim.unlink()
                        victim.mkdir()
                events[action] += 1
            except OSError:
                pass
            stop.wait(rng.uniform(0.01, 0.25))

    @contextlib.contextmanager
    def churning(self, lib: Library, on: bool = True):
        stop, events = threading.Event(), Counter()
        thread = threading.Thread(target=self.churn, args=(lib, stop, events), daemon=True)
        if on:
            thread.start()
        try:
            yield events
        finally:
            stop.set()
            if on:
                thread.join()
                self.pending["file vanished or changed during a run"] += sum(events.values())

    # -- the check --------------------------------------------------------------------------
    def verify(self, lib: Library, data: Path, label: str, run: Outcome) -> dict:
        """After a clean run: compare everything with the brute force and the bench's state."""
        started = time.monotonic()
        problems: list[str] = []
        if run.verdict != "ok":
            problems.append(
                f"the clean run ended {run.verdict} (exit {run.code}): {run.stderr[-800:]}"
            )
        swept = sum(" was left in progress " in line for line in run.stderr.splitlines())
        unstarted = sum(" was left unstarted " in line for line in run.stderr.splitlines())
        md5s = brute_force(self.root)
        expected = expected_groups(md5s)
        dup = self.dam(data, "duplicates", "--format", "json", where=f"{label}: duplicates")
        got = []
        if dup.code == 0:
            got = sorted(sorted([g["original"], *g["duplicates"]]) for g in json.loads(dup.stdout))
        else:
            problems.append(f"dam duplicates failed: {dup.stderr[-500:]}")
        wrong = got != expected
        if wrong:
            missing = [g for g in expected if g not in got]
            extra = [g for g in got if g not in expected]
            problems.append(f"duplicate groups differ: missing {missing[:5]}, extra {extra[:5]}")
        status = self.dam(data, "status", "--json", where=f"{label}: status")
        figures = json.loads(status.stdout) if status.code == 0 else {}
        if not figures:
            problems.append(f"dam status --json failed: {status.stderr[-500:]}")
        else:
            want = {
                "duplicate_groups": len(expected),
                "duplicate_files": sum(len(g) - 1 for g in expected),
                "runs_in_progress": 0,
                "runs_without_process": 0,
            }
            for key, value in want.items():
                if figures.get(key) != value:
                    problems.append(f"status {key} = {figures.get(key)}, expected {value}")
                    wrong = wrong or key.startswith("duplicate")
        thumb_problems = self.check_thumbnails(lib, data)
        problems += thumb_problems
        wrong = wrong or bool(thumb_problems)
        tmp = list((data / "thumbnails").rglob("*.tmp"))
        if tmp:
            problems.append(f"{len(tmp)} .tmp file(s) left in thumbnails/: {tmp[:3]}")
        heads = alembic_heads(data / "dagster_home")
        odd = {db: n for db, n in heads.items() if n != 1}
        if odd:
            problems.append(f"alembic heads other than one: {odd}")
        changed = lib.changes()
        if changed:
            problems.append(f"{len(changed)} change(s) in the library: {changed[:5]}")
            self.fig.library_changes += len(changed)
        self.fig.wrong_answers += int(wrong)
        ok = not problems
        for fault, n in self.pending.items():
            self.fig.faults[fault] += n
            if ok:
                self.fig.survived[fault] += n
        self.pending.clear()
        record = {
            "label": label,
            "ok": ok,
            "groups": len(expected),
            "files_hashed_by_brute_force": len(md5s),
            "runs_swept": swept,
            "unstarted_runs_swept": unstarted,
            "run_seconds": round(run.seconds, 1),
            "check_seconds": round(time.monotonic() - started, 1),
            "problems": problems,
        }
        self.fig.verifications.append(record)
        log(
            f"check {label}: {'OK' if ok else 'FAILED'}: {len(expected)} groups, "
            f"{len(md5s)} files, {swept} dead run(s) and {unstarted} unstarted swept"
            + ("".join(f"\n    - {p}" for p in problems))
        )
        return record

    def check_thumbnails(self, lib: Library, data: Path) -> list[str]:
        """Every present model has a current row; an ok row's PNG exists, is a PNG of the
        configured size, and is named by the MD5 of the file as it is now."""
        from PIL import Image

        from dam_dagster.core.store import Catalogue
        from dam_dagster.core.thumbnails import RENDERABLE_EXTENSIONS

        exts = ", ".join(f"'{e}'" for e in sorted(RENDERABLE_EXTENSIONS))
        with Catalogue(data, who="fault bench check").connect(write=False) as con:
            rows = con.execute(f"""
                SELECT f.path, f.raw_path, t.status, t.transient, t.content_md5,
                       t.thumbnail_relpath, a.path, a.raw_path
                FROM present_files f LEFT JOIN current_thumbnails t USING (file_id)
                LEFT JOIN file_inventory a ON a.file_id = f.archive_id
                WHERE f.extension IN ({exts})""").fetchall()
        snap = lib.snapshot()
        members: dict[bytes, str] = {}  # MD5 of each member of the zips met so far
        listed: set[bytes] = set()
        problems = []
        for path, raw, status, transient, md5, rel, archive, archive_raw in rows:
            fs = bytes(raw) if raw is not None else os.fsencode(path)
            shown = display(fs)
            if archive is not None:  # a member: its own bytes, inflated from the archive now
                zip_path = bytes(archive_raw) if archive_raw is not None else os.fsencode(archive)
                if zip_path not in listed:
                    members.update(member_md5s(zip_path, lambda part: False))
                    listed.add(zip_path)
                now = members.get(fs)
            else:
                now = snap[fs][-1] if fs in snap else None
            if status is None:
                problems.append(f"no current thumbnail row for {shown}")
            elif transient:
                problems.append(f"a transient {status} row after a clean run: {shown}")
            elif status == "ok":
                if now != md5:
                    problems.append(f"stale thumbnail for {shown}: {md5}, the file is {now}")
                png = data / "thumbnails" / rel
                try:
                    with Image.open(png) as im:
                        if im.format != "PNG" or im.size != (THUMB_SIZE, THUMB_SIZE):
                            problems.append(f"{png}: {im.format} {im.size}")
                except OSError as exc:
                    problems.append(f"thumbnail of {shown} unreadable: {exc}")
        return problems

    def check_bad_inputs(self, data: Path) -> list[dict]:
        """What the catalogue says about each bad input, against what it must say."""
        from dam_dagster.core.store import Catalogue

        with Catalogue(data, who="fault bench check").connect(write=False) as con:
            inventory = {
                (bytes(r[1]) if r[1] is not None else os.fsencode(r[0])): r[2]
                for r in con.execute(
                    "SELECT path, raw_path, present FROM file_inventory"
                ).fetchall()
            }
            issues = con.execute("SELECT path, kind FROM walk_issues").fetchall()
            thumbs = {
                (bytes(r[1]) if r[1] is not None else os.fsencode(r[0])): r[2:]
                for r in con.execute("""
                    SELECT f.path, f.raw_path, t.status, t.error_class, t.transient
                    FROM current_thumbnails t JOIN file_inventory f USING (file_id)""").fetchall()
            }
            hash_errors = {
                (bytes(r[1]) if r[1] is not None else os.fsencode(r[0])): r[2:]
                for r in con.execute("""
                    SELECT f.path, f.raw_path, h.error_class, h.transient
                    FROM (SELECT file_id, error_class, transient FROM current_partial_hashes
                          UNION ALL
                          SELECT file_id, error_class, transient FROM current_full_hashes) h
                    JOIN file_inventory f USING (file_id)
                    WHERE h.error_class IS NOT NULL""").fetchall()
            }
            empty = {
                (bytes(r[1]) if r[1] is not None else os.fsencode(r[0]))
                for r in con.execute("""SELECT f.path, f.raw_path FROM empty_files e
                                        JOIN file_inventory f ON f.file_id = e.id""").fetchall()
            }
        results = []
        for item in self.bad:
            what, *args = item.expect
            shown = display(item.path)
            if what == "issue":
                ok = (shown, args[0]) in issues
                said = [k for p, k in issues if p == shown]
            elif what == "issue_under":
                hits = [(p, k) for p, k in issues if shown.startswith(p) or p.startswith(shown)]
                ok, said = any(k == args[0] for _, k in hits), sorted({k for _, k in hits})
            elif what == "thumb":
                row = thumbs.get(item.path)
                ok = row is not None and row[0] in args[0] and bool(row[2]) == args[1]
                said = row
            elif what == "thumb_class":
                row = thumbs.get(item.path)
                ok, said = row is not None and row[1] == args[0] and not row[2], row
            elif what == "hash_error":
                row = hash_errors.get(item.path)
                ok, said = row is not None and row[0] == args[0] and not row[1], row
            elif what == "empty":
                ok, said = item.path in empty, item.path in empty
            elif what == "catalogued":
                ok, said = inventory.get(item.path) is True, inventory.get(item.path)
            elif what == "absent":
                ok, said = item.path not in inventory, item.path in inventory
            else:
                raise ValueError(what)
            results.append(
                {
                    "kind": item.kind,
                    "path": shown,
                    "expect": list(map(str, item.expect)),
                    "catalogue": str(said),
                    "ok": bool(ok),
                    **({"note": item.note} if item.note else {}),
                }
            )
        return results

    def clean_run(self, lib: Library, data: Path, label: str) -> dict:
        lib.settle()
        run = self.dam(data, "run", where=f"{label}: clean run")
        self.last_clean_s = run.seconds
        return self.verify(lib, data, label, run)

    # -- phase 1 ----------------------------------------------------------------------------
    def phase_concurrent(self, lib: Library) -> dict:
        n, readers = self.args.concurrent_runs, self.args.readers
        log(
            f"phase 1: {n} `dam run` at once from an empty data folder, {readers} reader loops, "
            "files churning"
        )
        data = self.work / "data-concurrent"
        started = time.monotonic()
        DamProcess.max_alive = DamProcess.alive
        outcomes: list[tuple[str, Outcome]] = []
        guard = threading.Lock()
        stop = threading.Event()

        def reader(i: int) -> None:
            rng = random.Random(f"{self.args.seed}-reader-{i}")
            commands = [
                ("status", "--json"),
                ("duplicates", "--format", "json"),
                ("status",),
                ("duplicates", "--format", "csv"),
            ]
            while not stop.is_set():
                args = rng.choice(commands)
                outcome = self.start(data, *args).wait(timeout=300)
                if outcome.code == 0 and "json" in args:
                    try:
                        json.loads(outcome.stdout)
                    except ValueError:
                        outcome.stderr += "\nTraceback: the JSON does not parse"
                with guard:
                    outcomes.append(("reader", outcome))
                time.sleep(rng.uniform(0, 0.3))

        with self.churning(lib) as churned:
            threads = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
            for t in threads:
                t.start()
            runs = []
            for _ in range(n):
                runs.append(self.start(data, "run"))
                time.sleep(self.rng.uniform(0, 0.7))
            for proc in runs:
                outcomes.append(("run", proc.wait()))
            stop.set()
            for t in threads:
                t.join()
        lib.settle(churn=True)
        verdicts = Counter()
        for kind, outcome in outcomes:
            verdict = self.note(outcome, f"phase 1 {kind}")
            verdicts[f"{kind}: {verdict}"] += 1
        self.pending["concurrent processes on one empty data folder"] += len(outcomes)
        seconds = time.monotonic() - started
        max_alive = DamProcess.max_alive
        record = self.clean_run(lib, data, "after the concurrent runs")
        bad = self.check_bad_inputs(data)
        self.report["bad_inputs"] = bad
        self.pending["bad input kinds"] += len(bad)
        failed = [b for b in bad if not b["ok"]]
        for b in failed:
            log(f"bad input not recorded as expected: {b}")
        return {
            "runs": n,
            "reader_commands": sum(1 for k, _ in outcomes if k == "reader"),
            "max_dam_processes_at_once": max_alive,
            "verdicts": dict(verdicts),
            "run_exit_codes": dict(Counter(o.code for k, o in outcomes if k == "run")),
            "churn_events": dict(churned),
            "seconds": round(seconds, 1),
            "check": record["ok"],
            "bad_inputs_as_expected": f"{len(bad) - len(failed)}/{len(bad)}",
        }

    # -- phase 2 ----------------------------------------------------------------------------
    MARKERS = [
        "file_inventory:",
        "partial_hashes:",
        "collision_candidates:",
        "full_hashes: whole files",
        "duplicates:",
        "thumbnails_fast [<1MB]: ",
        "thumbnails_fast [1-5MB]: ",
        "thumbnails_slow [30-100MB]: ",
    ]

    @staticmethod
    def landed(proc: DamProcess, history_before: int, data: Path) -> str:
        """Where a kill landed, from the last progress line (and, before any, whether the
        first Dagster run had started)."""
        lines = [line for _, line in proc.lines if not line.startswith("dam: run ")]
        if lines and lines[-1].startswith("dam:"):
            return "the summary, after the lanes"
        if lines and lines[-1].startswith("thumbnails: "):  # "up to date, not run: ..."
            return "after duplicates"
        if not lines:
            home = data / "dagster_home"
            if home.is_dir() and not (home / ".dam-prepared").exists():
                return "start-up (Dagster home being prepared)"
            runs = home / "history" / "runs"
            started = len(list(runs.glob("*-*.db"))) if runs.is_dir() else 0
            return "file_inventory" if started > history_before else "start-up"
        last = lines[-1]
        if last.startswith("thumbnails_"):
            where = last.split("]:")[0] + "]"
            return where + (" rendering" if "files in the bucket" in last else " done")
        step = last.split(":")[0]
        nxt = {
            "file_inventory": "partial_hashes",
            "partial_hashes": "partial_hashes",
            "collision_candidates": "full_hashes",
            "full_hashes": "full_hashes",
            "duplicates": "after duplicates",
        }
        return nxt.get(step, step)

    def phase_kills(self, lib: Library) -> dict:
        target = self.args.kills
        log(f"phase 2: {target} `dam run` killed with SIGKILL (process group) at random moments")
        data = self.work / "data-kills"
        started = time.monotonic()
        kills, attempts, finished_first, streak, max_streak = 0, 0, 0, 0, 0
        landed, tmp_left, leftovers, twins = Counter(), 0, 0, Counter()
        checks = []
        while kills < target and attempts < target * 3:
            attempts += 1
            mode = self.rng.choices(["start-up", "marker", "uniform"], [0.2, 0.55, 0.25])[0]
            if attempts <= 3:  # the first runs on the empty data folder: kill them early
                mode = "start-up"
            marker = self.rng.choice(self.MARKERS) if mode == "marker" else None
            self.perturb(lib, slow=bool(marker and "slow" in marker),
                         mid=bool(marker and "1-5MB" in marker))  # fmt: skip
            lib.settle()
            churn = self.rng.random() < 0.3
            twin = self.rng.random() < 0.15  # a second run beside the one killed
            runs_dir = data / "dagster_home" / "history" / "runs"
            before = len(list(runs_dir.glob("*-*.db"))) if runs_dir.is_dir() else 0
            with self.churning(lib, on=churn):
                proc = self.start(data, "run")
                other = self.start(data, "run") if twin else None
                if mode == "start-up":
                    moment = self.rng.uniform(0.1, 3.0)
                elif mode == "uniform":
                    moment = self.rng.uniform(0.1, max(1.0, self.last_clean_s))
                else:
                    moment = None
                delay = self.rng.uniform(0, 0.8)
                while proc.proc.poll() is None:
                    now = time.monotonic() - proc.started
                    if moment is None:
                        seen = proc.seen(marker)
                        if seen is not None:
                            moment = seen + delay
                    if moment is not None and now >= moment:
                        break
                    time.sleep(0.02)
                where = self.landed(proc, before, data)
                hit = proc.kill()
                outcome = proc.wait()
                if other is not None:
                    twin_outcome = other.wait()
                    twins[self.note(twin_outcome, "phase 2: the run beside a killed one")] += 1
            if not hit:
                finished_first += 1
                self.note(outcome, "phase 2: a run that finished before its kill")
                lib.settle(churn=churn)
                continue
            kills += 1
            self.fig.kills += 1
            self.pending["SIGKILL"] += 1
            landed[where] += 1
            time.sleep(0.3)
            alive = tagged_processes(proc.tag)
            if alive:  # processes that escaped the group kill: a finding; end them
                leftovers += len(alive)
                log(f"processes left after killing run {proc.tag}: {alive}")
                for pid in alive:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            tmp_left += len(list((data / "thumbnails").rglob("*.tmp")))
            lib.settle(churn=churn)
            streak += 1
            max_streak = max(max_streak, streak)
            log(
                f"kill {kills}/{target}: at {outcome.seconds:.1f} s, in {where}"
                + (" (a second run beside it)" if twin else "")
                + (" (files churning)" if churn else "")
            )
            if self.rng.random() < 0.45 or kills == target:
                checks.append(self.clean_run(lib, data, f"after kill {kills}")["ok"])
                streak = 0
        if streak:
            checks.append(self.clean_run(lib, data, f"after kill {kills}")["ok"])
        return {
            "kills": kills,
            "attempts": attempts,
            "runs_that_finished_before_their_kill": finished_first,
            "landed": dict(landed),
            "landed_by_stage": dict(Counter(stage_of(where) for where in landed.elements())),
            "longest_streak_of_kills": max_streak,
            "clean_runs_checked": len(checks),
            "checks_ok": sum(checks),
            "tmp_files_left_by_kills": tmp_left,
            "processes_left_after_a_group_kill": leftovers,
            "runs_beside_a_killed_one": dict(twins),
            "seconds": round(time.monotonic() - started, 1),
        }

    # -- phase 3 ----------------------------------------------------------------------------
    def phase_disk_full(self, lib: Library) -> dict:
        if not PRIVILEGED:
            return {"skipped": "mounting a tmpfs needs root"}
        mount = self.work / "small-disk"
        mount.mkdir()
        size = self.args.tmpfs_mb
        made = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}m", "tmpfs", str(mount)],
            capture_output=True,
            text=True,
        )
        if made.returncode != 0:
            return {"skipped": f"cannot mount a tmpfs: {made.stderr.strip()}"}
        log(f"phase 3: the data folder on a {size} MB tmpfs, filled at several moments")
        started = time.monotonic()
        try:
            return {
                "scenarios": self._disk_full(lib, mount),
                "tmpfs_mb": size,
                "seconds": round(time.monotonic() - started, 1),
            }
        finally:
            subprocess.run(["umount", "-l", str(mount)], check=False)

    def _disk_full(self, lib: Library, mount: Path) -> list[dict]:
        data = mount / "data"
        filler = mount / "filler"
        elsewhere = {"DAGSTER_HOME": str(self.work / "dagster-home-on-another-disk")}
        scenarios = [
            ("full before the first run (no data folder yet)", None, 0, {}),
            ("full between two runs", None, 0, {}),
            ("fills during hashing", "file_inventory:", 0, {}),
            ("fills as the fast lane renders", "thumbnails_fast [<1MB]: ", 0, {}),
            ("fills as the slow lane renders", "thumbnails_slow [30-100MB]: ", 0, {}),
            ("almost full: 256 KiB left", None, 256 * 1024, {}),
            # the run history on another disk: the catalogue and the PNGs meet the full disk
            ("fills during hashing, Dagster home elsewhere", "file_inventory:", 0, elsewhere),
            ("fills as the fast lane renders, Dagster home elsewhere",
             "thumbnails_fast [<1MB]: ", 0, elsewhere),
            ("full between two runs, Dagster home elsewhere", None, 0, elsewhere),
        ]  # fmt: skip
        results = []
        for name, marker, leave, extra in scenarios:
            self.extra_env = extra
            self.perturb(lib, slow=bool(marker and "slow" in marker))
            lib.settle()
            reads_before = None
            if data.exists():
                before = self.dam(data, "status", "--json", where=f"{name}: status before")
                reads_before = json.loads(before.stdout) if before.code == 0 else None
            if marker is None:
                fill(filler, leave)
                proc = self.start(data, "run")
            else:
                proc = self.start(data, "run")
                while proc.proc.poll() is None and proc.seen(marker) is None:
                    time.sleep(0.02)
                time.sleep(self.rng.uniform(0, 0.5))
                fill(filler, leave)
            run = proc.wait()
            self.note(run, f"disk full: {name}")
            self.pending["disk full"] += 1
            lines = [x for x in run.error_lines if "No space left" in x or "is full" in x]
            # the cause first: the disk is named at the head of the line, not after a stack
            cause_first = any(re.match(DISK_FULL_FIRST, x) for x in lines)
            reads = {}
            for args in (("status",), ("status", "--json"), ("duplicates", "--format", "json")):
                out = self.dam(data, *args, where=f"disk full: {name}: {' '.join(args)}")
                reads[" ".join(args)] = out.verdict if out.code != 0 else "ok"
            succeeded_while_full = None
            if run.code == 0:  # it said it succeeded on a full disk: its answer must be right
                label = f"{name}: a run that succeeded on the full disk"
                succeeded_while_full = self.verify(lib, data, label, run)["ok"]
            readable = None
            if reads_before is not None:
                now = self.dam(data, "status", "--json", where=f"{name}: status while full")
                readable = now.code == 0 and bool(json.loads(now.stdout))
            filler.unlink()
            record = self.clean_run(lib, data, f"after: {name}")
            results.append(
                {
                    "scenario": name,
                    "run_exit": run.code,
                    "run_verdict": run.verdict,
                    "disk_full_lines": lines[:4],
                    "cause_first": cause_first,
                    "reads_while_full": reads,
                    "catalogue_readable_while_full": readable,
                    "check_of_a_success_on_the_full_disk": succeeded_while_full,
                    "check_after_freeing": record["ok"],
                }
            )
            self.extra_env = {}
            log(
                f"disk full, {name}: run exit {run.code} ({run.verdict}); "
                f"{lines[0] if lines else 'no disk-full line'}; reads {reads}"
            )
        return results

    # -- all of it --------------------------------------------------------------------------
    def run(self) -> dict:
        t0 = time.monotonic()
        from dam_dagster_tests.conftest import CORPUS

        corpus = Path(self.args.corpus) if self.args.corpus else CORPUS
        if not corpus.is_dir():
            sys.exit(f"the model corpus is not at {corpus} (use --corpus)")
        log(f"seed {self.args.seed}; work folder {self.work}")
        self.bad, self.sources = build_library(self.root, corpus, self.rng)
        lib = Library(self.root)
        files = [p for p, e in lib.expected.items() if stat.S_ISREG(e[0])]
        self.report["load_average_at_start"] = os.getloadavg()
        self.report["library"] = {
            "entries": len(lib.expected),
            "regular_files": len(files),
            "apparent_bytes": sum(lib.expected[p][3] for p in files),
            "bad_input_kinds": len(self.bad),
            "seconds_to_build": round(time.monotonic() - t0, 1),
        }
        log(f"library: {self.report['library']}")
        phases = self.args.phases.split(",")
        if "concurrent" in phases:
            self.report["phases"]["concurrent"] = self.phase_concurrent(lib)
        if "kills" in phases:
            self.report["phases"]["kills"] = self.phase_kills(lib)
        if "disk-full" in phases:
            self.report["phases"]["disk_full"] = self.phase_disk_full(lib)
        final = lib.changes(cache=False)  # every byte read again, no cache
        self.fig.library_changes += len(final)
        if final:
            log(f"library changed (full read): {final[:10]}")
        total_faults = sum(self.fig.faults.values())
        self.report["totals"] = {
            "dam_runs": self.fig.runs,
            "reader_commands": self.fig.readers,
            "kills": self.fig.kills,
            "max_dam_processes_at_once": DamProcess.max_alive,
            "faults": total_faults,
            "faults_survived": sum(self.fig.survived.values()),
            "faults_by_kind": {
                k: f"{self.fig.survived[k]}/{v}" for k, v in self.fig.faults.items()
            },
            "checks": len(self.fig.verifications),
            "checks_failed": sum(not v["ok"] for v in self.fig.verifications),
            "wrong_answers": self.fig.wrong_answers,
            "library_changes": self.fig.library_changes,
            "unclear_failures": len(self.fig.unclear),
            "seconds": round(time.monotonic() - t0, 1),
        }
        self.report["load_average_at_end"] = os.getloadavg()
        self.report["verifications"] = self.fig.verifications
        self.report["unclear_failures"] = self.fig.unclear
        self.report["clear_error_lines"] = dict(self.fig.errors_seen.most_common(40))
        return self.report

    def cleanup(self) -> None:
        subprocess.run(
            ["chmod", "-R", "u+rwx", str(self.work)], check=False, stderr=subprocess.DEVNULL
        )
        shutil.rmtree(self.work, ignore_errors=True)
        if self.work.exists():  # folders past PATH_MAX: rm copes with those
            subprocess.run(["rm", "-rf", str(self.work)], check=False)


DISK_FULL_FIRST = re.compile(
    r"dam: ([\w.]+( \[[^\]]+\])? failed: )?(the disk holding the data folder|No space left)"
)


def stage_of(where: str) -> str:
    """The coarse stage of a kill's landing place."""
    if where.startswith("thumbnails_fast"):
        return "fast lane"
    if where.startswith("thumbnails_slow"):
        return "slow lane"
    return {
        "start-up": "start-up",
        "start-up (Dagster home being prepared)": "start-up",
        "file_inventory": "inventory",
        "partial_hashes": "hashing",
        "full_hashes": "hashing",
        "after duplicates": "between the chain and the lanes",
    }.get(where, "the summary")


def fill(path: Path, leave: int = 0) -> None:
    """Fill the filesystem holding `path` with one file, then give back `leave` bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (MIB, 64 * 1024, 4096, 512, 1):
            block = b"\0" * chunk
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    break
    finally:
        os.close(fd)
    if leave:
        os.truncate(path, max(0, os.path.getsize(path) - leave))


def alembic_heads(home: Path) -> dict[str, int]:
    """Rows of alembic_version in every SQLite database of the Dagster home."""
    heads = {}
    for db in sorted(home.rglob("*.db")):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
                rows = con.execute("SELECT version_num FROM alembic_version").fetchall()
        except sqlite3.Error:
            continue  # a per-run event database has no alembic table
        heads[str(db.relative_to(home))] = len(rows)
    return heads


def table(report: dict) -> str:
    t = report["totals"]
    rows = [
        ("seed", report["seed"]),
        ("dam runs", t["dam_runs"]),
        ("reading commands (status, duplicates)", t["reader_commands"]),
        ("runs killed with SIGKILL", t["kills"]),
        ("dam processes at once (most)", t["max_dam_processes_at_once"]),
        ("bad input kinds", report.get("library", {}).get("bad_input_kinds")),
        ("faults survived", f"{t['faults_survived']} of {t['faults']}"),
        ("checks against the brute force", f"{t['checks'] - t['checks_failed']}/{t['checks']} ok"),
        ("wrong answers (must be 0)", t["wrong_answers"]),
        ("library changes (must be 0)", t["library_changes"]),
        ("unclear failures (tracebacks, hangs)", t["unclear_failures"]),
        ("time taken", f"{t['seconds'] / 60:.1f} min"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {name:<{width}} | {value} |" for name, value in rows]
    for kind, value in t["faults_by_kind"].items():
        lines.append(f"|   {kind} | {value} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=None, help="default: from the clock, printed")
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--concurrent-runs", type=int, default=6)
    ap.add_argument("--readers", type=int, default=4, help="reader loops during phase 1")
    ap.add_argument("--tmpfs-mb", type=int, default=64)
    ap.add_argument("--phases", default="concurrent,kills,disk-full")
    ap.add_argument("--corpus", default=None, help="default: the test suite's corpus")
    ap.add_argument("--out", default=str(HERE / "out"))
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    ap.add_argument("--brute-force", metavar="ROOT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.brute_force:
        brute_force_main(args.brute_force)
        return
    if args.seed is None:
        args.seed = int(time.time()) % 100_000
    bench = Bench(args)
    try:
        report = bench.run()
    finally:
        if not args.keep:
            bench.cleanup()
        else:
            log(f"kept {bench.work}")
    report["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    report["host"] = {"cpus": os.cpu_count(), "hostname": socket.gethostname()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fault_injection.json").write_text(json.dumps(report, indent=2, default=str))
    print()
    print(table(report))
    print(f"\nseed {args.seed}; figures in {out / 'fault_injection.json'}")
    t = report["totals"]
    if t["wrong_answers"] or t["library_changes"] or t["unclear_failures"] or t["checks_failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
