"""Thumbnails of 3D models: a pool of off-screen render processes (pyrender on EGL).

The public API, importable from the Dagster process (this package's top level imports only the
standard library; numpy, trimesh, pyrender and OpenGL are loaded in the worker processes):

    render_files(tasks, thumbs_dir, config, on_outcome=None, stats=None) -> list[RenderOutcome]
    make_contact_sheet(png_paths, max_bytes=60_000) -> bytes | None
    make_contact_sheet_data_uri(png_paths, max_chars=60_000) -> str | None

Modules: api (types), pool (parent side: processes, timeouts, memory caps), worker (one file:
read, hash, cache, image / embedded preview / render), loaders (bytes -> drawables), framing
(camera), gl (pyrender renderer, one EGL context per worker), shaders (GLSL), images (Pillow).
"""

from .api import (
    IMAGE_EXTENSIONS,
    MODEL_EXTENSIONS,
    SOURCES,
    STATUSES,
    TEST_CRASH_ENV,
    TEST_HANG_ENV,
    RenderConfig,
    RenderOutcome,
    RenderTask,
    parse_background,
    thumbnail_relpath,
)
from .images import make_contact_sheet, make_contact_sheet_data_uri
from .pool import render_files

__all__ = [
    "IMAGE_EXTENSIONS",
    "MODEL_EXTENSIONS",
    "SOURCES",
    "STATUSES",
    "TEST_CRASH_ENV",
    "TEST_HANG_ENV",
    "RenderConfig",
    "RenderOutcome",
    "RenderTask",
    "make_contact_sheet",
    "make_contact_sheet_data_uri",
    "parse_background",
    "render_files",
    "thumbnail_relpath",
]
