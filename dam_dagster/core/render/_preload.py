"""Imported once by the pool's fork server so that every worker forked from it starts with
numpy, Pillow, trimesh and pyrender already loaded. Never creates a GL context (that happens
in each worker, after the fork). Import failures are swallowed here: the worker meets them
again, on its own, and reports them per file."""

from . import worker  # noqa: F401  (sets PYOPENGL_PLATFORM=egl before anything imports OpenGL)

try:
    import PIL.Image  # noqa: F401
    import PIL.PngImagePlugin  # noqa: F401
    import pyarrow  # noqa: F401  (vertex ids in facts.py)
    import scipy.sparse.csgraph  # noqa: F401  (bodies in facts.py)
    import trimesh  # noqa: F401
    import trimesh.exchange.load  # noqa: F401

    from . import facts, gl, images, loaders, slicer  # noqa: F401
except Exception:  # pragma: no cover - depends on the machine
    pass
