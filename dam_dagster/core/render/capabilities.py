"""What made a thumbnail row, so a row is current for the code that made it.

Two strings go with every outcome row (docs/MODELS.md, "When rows are redone"):

* `renderer_version(ext)`: our own code for the file's format, e.g. ``obj/2 draw/1``. It
  changes when we change how that format is read or drawn (bump the format's number in
  `FORMATS`, or `DRAW_VERSION` for every format); every row of that format is then planned
  again, thumbnails included.
* `capabilities(ext)`: the installed libraries the format's loader needs, with their
  versions, e.g. ``trimesh 5.2.0; cascadio 0.1.1`` (``cascadio missing`` when it is not
  installed). It changes when a library is installed, removed or upgraded; the rows of that
  format that said `unsupported` or failed for good are then planned again (a thumbnail that
  was made stays).

`FACTS_VERSION` is the version of the geometry facts and the fingerprint: facts made by
another version are computed again (the thumbnail is kept).

Standard library only (importlib): the Dagster process and the sensors call it without
importing any loader. A library counts as installed when its module can be found on the
path; a worker that then fails to import it reports MissingDependency for the file.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util

DRAW_VERSION = 1  # the camera, the lights, the shaders: every format is drawn with them
FACTS_VERSION = 1  # core/render/facts.py and slicer.py: what `model_facts` rows hold

_IMAGES = ("image", 1, ("PIL",))
# extension: (loader, version of our code for it, modules it needs)
FORMATS: dict[str, tuple[str, int, tuple[str, ...]]] = {
    ".stl": ("stl", 1, ("trimesh",)),
    ".3mf": ("3mf", 1, ("trimesh", "lxml", "networkx")),
    ".obj": ("obj", 2, ("trimesh",)),  # 2: the up-axis rule (Y-up exports stand up)
    ".ply": ("ply", 2, ("trimesh",)),  # 2: colour names, opaque zero alpha, shaded points
    ".off": ("off", 1, ("trimesh",)),
    ".glb": ("gltf", 1, ("trimesh",)),
    ".gltf": ("gltf", 1, ("trimesh",)),
    ".dae": ("collada", 1, ("trimesh", "collada", "lxml")),
    ".zae": ("collada", 1, ("trimesh", "collada", "lxml")),
    ".step": ("step", 1, ("trimesh", "cascadio")),
    ".stp": ("step", 1, ("trimesh", "cascadio")),
    ".3dxml": ("3dxml", 1, ("trimesh", "lxml", "networkx")),
    ".xaml": ("xaml", 1, ("trimesh", "lxml")),
    ".xyz": ("xyz", 2, ("trimesh",)),  # 2: points shaded by depth
    ".gcode": ("gcode", 1, ("PIL",)),
    ".gco": ("gcode", 1, ("PIL",)),
    ".bgcode": ("bgcode", 1, ("PIL",)),
    ".png": _IMAGES,
    ".jpg": _IMAGES,
    ".jpeg": _IMAGES,
    ".webp": _IMAGES,
}
# module -> the distribution whose version says which code it is
_DISTRIBUTIONS = {"PIL": "pillow", "collada": "pycollada"}


def _module_version(module: str) -> str:
    if importlib.util.find_spec(module) is None:
        return f"{module} missing"
    try:
        return f"{module} {importlib.metadata.version(_DISTRIBUTIONS.get(module, module))}"
    except importlib.metadata.PackageNotFoundError:
        return f"{module} (version unknown)"


def renderer_version(ext: str) -> str:
    """Our code for the format, e.g. 'obj/2 draw/1'; 'none/0' for formats we do not draw."""
    name, version, _ = FORMATS.get(ext, ("none", 0, ()))
    return f"{name}/{version} draw/{DRAW_VERSION}"


def legacy_renderer_version(ext: str) -> str:
    """What rows written before versions were recorded were made with: version 1 of every
    format's code (the state of the code when this record began)."""
    name, _, _ = FORMATS.get(ext, ("none", 0, ()))
    return f"{name}/{1 if name != 'none' else 0} draw/1"


def capabilities_table() -> dict[str, str]:
    """extension -> the libraries its loader needs, as installed now (one look per module)."""
    importlib.invalidate_caches()  # a long-lived process (the code server) sees new installs
    modules = {m for _, _, needs in FORMATS.values() for m in needs}
    versions = {m: _module_version(m) for m in sorted(modules)}
    return {ext: "; ".join(versions[m] for m in needs) for ext, (_, _, needs) in FORMATS.items()}


def capabilities(ext: str, table: dict[str, str] | None = None) -> str:
    table = table if table is not None else capabilities_table()
    return table.get(ext, "")


def capabilities_digest() -> str:
    """A short digest of every format's renderer version and capabilities: the library sensor
    keeps it in its cursor, so installing or upgrading a loader asks for a new inventory (and
    the thumbnails that follow it re-plan exactly the files concerned)."""
    table = capabilities_table()
    text = "|".join(f"{e}={renderer_version(e)}={table[e]}" for e in sorted(table))
    return hashlib.sha1(f"{text}|facts/{FACTS_VERSION}".encode()).hexdigest()[:16]
