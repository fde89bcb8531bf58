"""The renderer's data types: what the caller asks for and what it gets back.

Plain dataclasses and constants, importable anywhere (the Dagster process included) without
pulling in numpy, trimesh, OpenGL or pyrender.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Slicer outputs: their thumbnail is the preview the slicer embedded (G-code comments, or
# binary G-code thumbnail blocks), and they carry print facts (core/render/slicer.py).
SLICED_EXTENSIONS: frozenset[str] = frozenset({".gcode", ".gco", ".bgcode"})

# What the renderer handles as a model (lower case, with the dot): everything trimesh can load
# as 3D geometry (STEP through `cascadio`, a main dependency; if it is missing STEP files get
# status 'unsupported' until it is installed) and the slicer outputs. 2D drawings (DXF, SVG)
# and archives (ZIP) are deliberately not models.
MESH_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".stl",
        ".3mf",
        ".obj",
        ".ply",
        ".off",
        ".glb",
        ".gltf",
        ".dae",
        ".zae",
        ".step",
        ".stp",
        ".3dxml",
        ".xaml",
        ".xyz",
    }
)
MODEL_EXTENSIONS: frozenset[str] = MESH_EXTENSIONS | SLICED_EXTENSIONS
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp"})

# Formats drawn Z-up, as slicers show them (STEP too: trimesh's cascadio path keeps the CAD
# axes). glTF is Y-up by its specification; COLLADA says which in its <up_axis>; OBJ has a
# rule of its own (loaders.obj_is_y_up, docs/MODELS.md).
Z_UP_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".stl",
        ".3mf",
        ".ply",
        ".off",
        ".3dxml",
        ".xaml",
        ".xyz",
        ".step",
        ".stp",
    }
)

STATUSES = ("ok", "failed", "timeout", "memory", "unsupported")
SOURCES = ("render", "embedded", "image", "cache")

# Test-only hooks (see worker.py), read by render_files from the environment: a worker sleeps
# forever on a file whose name ends with the first suffix (to exercise the per-file timeout),
# and dies of SIGSEGV on one ending with the second (to exercise crash handling).
TEST_HANG_ENV = "DAM_RENDER_TEST_HANG_SUFFIX"
TEST_CRASH_ENV = "DAM_RENDER_TEST_CRASH_SUFFIX"


@dataclass(frozen=True)
class RenderConfig:
    size: int = 256  # pixels, square (DAM_THUMBNAIL_SIZE)
    background: str = "transparent"  # or "#rrggbb" (DAM_THUMBNAIL_BACKGROUND)
    workers: int = 2  # worker processes (DAM_FAST_WORKERS / DAM_SLOW_WORKERS)
    timeout_s: float = 120.0  # per-file timeout; the hung worker is killed and replaced
    memory_mb: int = 4096  # per-worker memory cap (DAM_RENDER_MEMORY_MB)
    max_files_per_worker: int = 500  # recycle a worker after this many files
    prefer_embedded: bool = True  # use a 3MF's embedded preview instead of rendering
    # Threads Mesa's llvmpipe may use inside one worker (LP_NUM_THREADS); None: CPUs / workers.
    gl_threads: int | None = None
    # Render even when thumbs_dir/ab/<md5>.png exists (the cache is keyed by content only:
    # after a change of size, background or prefer_embedded, existing PNGs are otherwise reused).
    overwrite: bool = False
    # Measure every model parsed (geometry facts, fingerprint, print facts) in the same pass.
    # The catalogue always wants them; bench/render_bench.py turns them off to measure their
    # cost.
    facts: bool = True

    def __post_init__(self) -> None:
        if not 16 <= int(self.size) <= 4096:
            raise ValueError(f"thumbnail size must be between 16 and 4096 pixels, not {self.size}")
        parse_background(self.background)  # raises ValueError with a clear message
        if int(self.workers) < 1:
            raise ValueError(f"workers must be at least 1, not {self.workers}")
        if not float(self.timeout_s) > 0:
            raise ValueError(f"timeout_s must be positive, not {self.timeout_s}")
        if int(self.memory_mb) < 256:
            raise ValueError(f"memory_mb must be at least 256, not {self.memory_mb}")
        if int(self.max_files_per_worker) < 1:
            raise ValueError(
                f"max_files_per_worker must be at least 1, not {self.max_files_per_worker}"
            )


@dataclass(frozen=True)
class RenderTask:
    key: object  # the caller's id (a file_id); returned untouched in the outcome
    path: str  # filesystem path as Python str (may hold surrogate escapes)
    size_bytes: int
    # Render even when thumbs_dir/ab/<md5>.png exists: that PNG was made by older code or
    # settings (RenderConfig.overwrite does the same for every task).
    rerender: bool = False
    # Parse the model for its facts (geometry, fingerprint, print facts) even when its PNG
    # exists and is reused. A render always computes them.
    need_facts: bool = False


@dataclass(frozen=True)
class RenderOutcome:
    key: object
    status: str  # 'ok' | 'failed' | 'timeout' | 'memory' | 'unsupported'
    source: str | None  # 'render' | 'embedded' | 'image' | 'cache'
    content_md5: str | None  # MD5 hex of the file's bytes
    thumbnail_relpath: str | None  # 'ab/<md5>.png', relative to thumbs_dir, when status == 'ok'
    error_class: str | None
    error_message: str | None
    seconds: float  # wall time spent on this file
    transient: bool  # True when a retry could succeed
    # What the same pass learnt about the model (core/render/facts.py, slicer.py): geometry
    # facts and fingerprint, print facts of slicer projects and G-code; None when not parsed.
    facts: dict | None = None
    # (error class, message) when the model could not be measured although it was read.
    facts_error: tuple[str, str] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def parse_background(value: str) -> tuple[float, float, float, float]:
    """'transparent' or '#rrggbb' (also 'rrggbb', '#rgb') as RGBA floats in 0..1."""
    text = str(value).strip().lower()
    if text in ("transparent", "none", ""):
        return (0.0, 0.0, 0.0, 0.0)
    hexpart = text[1:] if text.startswith("#") else text
    if len(hexpart) == 3:
        hexpart = "".join(c * 2 for c in hexpart)
    try:
        if len(hexpart) != 6:
            raise ValueError
        r, g, b = (int(hexpart[i : i + 2], 16) / 255.0 for i in (0, 2, 4))
    except ValueError:
        raise ValueError(
            f"thumbnail background must be 'transparent' or a colour like '#rrggbb', not {value!r}"
        ) from None
    return (r, g, b, 1.0)


def extension_of(path: str) -> str:
    """Lower-case extension with its dot ('' when none); works on surrogate-escaped names."""
    return os.path.splitext(path)[1].lower()


def thumbnail_relpath(md5_hex: str) -> str:
    return f"{md5_hex[:2]}/{md5_hex}.png"
