"""The off-screen GL renderer of one worker process: pyrender on EGL, one context for life.

Only a render worker imports this module (it imports pyrender, hence OpenGL): the worker sets
PYOPENGL_PLATFORM=egl first. One `ThumbnailRenderer` holds one EGL context, one pyrender Scene
and one camera node; each model's mesh nodes are added, drawn and removed (their GL buffers
freed at once), so nothing accumulates from file to file.

What differs from a stock `pyrender.OffscreenRenderer.render` call, for speed (measured on
llvmpipe, 14k-triangle STL, 256 px; see docs/BENCHMARKS.md):
* our own shaders (shaders.py) instead of pyrender's PBR ones: about 4x less fragment time;
* anti-aliasing by 2x2 supersampling (draw at twice the size, single-sample framebuffer, box
  filter in Pillow) instead of pyrender's 4x MSAA framebuffer: llvmpipe's MSAA path costs
  more than shading four times the pixels, for the same edges;
* back faces culled on closed surfaces (model.orient_for_culling);
* the view and projection come straight from framing.py (an off-centre projection fitted to
  the model), not from a pyrender camera;
* only the colour buffer is read back (pyrender also reads and linearises depth), straight
  into a Pillow image, bottom-up;
* the context stays current: no make-current / release per frame.
"""

from __future__ import annotations

import os

import numpy as np

from . import framing
from .model import LINES, POINTS, LoadedModel
from .shaders import SOURCES

if os.environ.get("PYOPENGL_PLATFORM") != "egl":  # pragma: no cover - the worker sets it
    os.environ["PYOPENGL_PLATFORM"] = "egl"

import pyrender  # noqa: E402
from OpenGL import GL  # noqa: E402
from pyrender.constants import RenderFlags  # noqa: E402
from pyrender.renderer import Renderer  # noqa: E402
from pyrender.shader_program import ShaderProgram, ShaderProgramCache  # noqa: E402


class _EmbeddedShaderProgram(ShaderProgram):
    """A pyrender ShaderProgram whose sources come from shaders.py instead of files."""

    def _load(self, shader_filename):
        name = os.path.basename(shader_filename)
        if name not in SOURCES:
            return super()._load(shader_filename)
        text = SOURCES[name]
        import re

        def ifdef(m):
            return "#if 1" if m.group(1) in self.defines else "#if 0"

        def ifndef(m):
            return "#if 0" if m.group(1) in self.defines else "#if 1"

        text = re.sub(r"#ifdef\s+([a-zA-Z_][a-zA-Z_0-9]*)\s*$", ifdef, text, flags=re.MULTILINE)
        text = re.sub(r"#ifndef\s+([a-zA-Z_][a-zA-Z_0-9]*)\s*$", ifndef, text, flags=re.MULTILINE)
        for define, value in self.defines.items():
            text = text.replace(define, str(value))
        return text


class _ShaderCache(ShaderProgramCache):
    def get_program(self, vertex_shader, fragment_shader, geometry_shader=None, defines=None):
        if vertex_shader != "mesh.vert" or fragment_shader != "mesh.frag":
            return super().get_program(vertex_shader, fragment_shader, geometry_shader, defines)
        defines = defines or {}
        key = ("dam", tuple(sorted(defines.items())))
        if key not in self._program_cache:
            self._program_cache[key] = _EmbeddedShaderProgram(
                vertex_shader=vertex_shader,
                fragment_shader=fragment_shader,
                geometry_shader=None,
                defines=defines,
            )
        return self._program_cache[key]


class _ThumbRenderer(Renderer):
    """pyrender's Renderer with given camera matrices and a colour-only read-back."""

    view: np.ndarray
    projection: np.ndarray

    def __init__(self, width, height):
        super().__init__(width, height)
        self._program_cache = _ShaderCache()

    def _get_camera_matrices(self, scene):
        return self.view, self.projection

    def _configure_main_framebuffer(self):
        """One single-sample colour + depth framebuffer (pyrender's 4x MSAA one is slower on
        llvmpipe than supersampling); it stands for both of pyrender's framebuffers."""
        dims = (self.viewport_width, self.viewport_height)
        if self._main_fb is not None and self._main_fb_dims == dims:
            return
        self._delete_main_framebuffer()
        color, depth = GL.glGenRenderbuffers(2)
        GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, color)
        GL.glRenderbufferStorage(GL.GL_RENDERBUFFER, GL.GL_RGBA8, *dims)
        GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, depth)
        GL.glRenderbufferStorage(GL.GL_RENDERBUFFER, GL.GL_DEPTH_COMPONENT24, *dims)
        fb = GL.glGenFramebuffers(1)
        GL.glBindFramebuffer(GL.GL_DRAW_FRAMEBUFFER, fb)
        GL.glFramebufferRenderbuffer(
            GL.GL_DRAW_FRAMEBUFFER, GL.GL_COLOR_ATTACHMENT0, GL.GL_RENDERBUFFER, color
        )
        GL.glFramebufferRenderbuffer(
            GL.GL_DRAW_FRAMEBUFFER, GL.GL_DEPTH_ATTACHMENT, GL.GL_RENDERBUFFER, depth
        )
        self._main_fb = self._main_fb_ms = fb
        self._main_cb = self._main_cb_ms = color
        self._main_db = self._main_db_ms = depth
        self._main_fb_dims = dims

    def _delete_main_framebuffer(self):
        if self._main_fb is not None:
            GL.glDeleteFramebuffers(1, [self._main_fb])
            GL.glDeleteRenderbuffers(2, [self._main_cb, self._main_db])
        self._main_fb = self._main_fb_ms = None
        self._main_cb = self._main_cb_ms = None
        self._main_db = self._main_db_ms = None
        self._main_fb_dims = (None, None)

    def _read_main_framebuffer(self, scene, flags):
        width, height = self._main_fb_dims
        GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, self._main_fb)
        GL.glPixelStorei(GL.GL_PACK_ALIGNMENT, 1)
        buf = GL.glReadPixels(0, 0, width, height, GL.GL_RGBA, GL.GL_UNSIGNED_BYTE)
        return buf, None


class _Primitive(pyrender.Primitive):
    """pyrender keeps indices as float32, exact only below 2**24 vertices: keep them uint32."""

    @property
    def indices(self):
        return self._indices

    @indices.setter
    def indices(self, value):
        self._indices = None if value is None else np.ascontiguousarray(value, dtype=np.uint32)


class RendererUnavailable(RuntimeError):
    """No usable off-screen GL here (EGL or Mesa missing, no device)."""


class ThumbnailRenderer:
    """One EGL context, one scene; `render(model)` gives a Pillow image (RGBA, or RGB on an
    opaque background) of size x size pixels."""

    def __init__(self, size: int, background: tuple[float, float, float, float]):
        self.size = int(size)
        self.supersample = 2 if self.size <= 2048 else 1
        self.background = tuple(background)
        self.transparent = self.background[3] < 1.0
        full = self.size * self.supersample
        try:
            self._offscreen = pyrender.OffscreenRenderer(full, full)
        except Exception as exc:  # EGL missing, no device, driver refused
            raise RendererUnavailable(
                f"cannot create an off-screen EGL context ({exc}); Mesa's EGL is needed: "
                "make system-deps, or apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri "
                "libgbm1"
            ) from exc
        self._renderer = _ThumbRenderer(full, full)
        old, self._offscreen._renderer = self._offscreen._renderer, self._renderer
        old.delete()
        self._platform = self._offscreen._platform
        self._platform.make_current()
        self.scene = pyrender.Scene(bg_color=list(self.background), ambient_light=[0.0, 0.0, 0.0])
        self._camera_node = self.scene.add(pyrender.PerspectiveCamera(yfov=0.5))
        self.gl_renderer = GL.glGetString(GL.GL_RENDERER).decode("ascii", "replace")

    def close(self) -> None:
        try:
            self._offscreen.delete()
        except Exception:
            pass

    def render(self, model: LoadedModel):
        from PIL import Image

        drawables = model.drawables
        point_size = self._point_size(model)
        # points are drawn as squares around their centre: keep them inside the margin too
        margin = framing.MARGIN + (point_size / 2.0 if point_size > 1.0 else 0.0) / self.size
        camera = framing.frame([d.positions for d in drawables], self.size, margin=margin)
        mesh = pyrender.Mesh([self._primitive(d) for d in drawables])
        node = self.scene.add(mesh)
        self.scene.set_pose(self._camera_node, camera.pose)
        r = self._renderer
        r.view, r.projection = camera.view, camera.projection
        r.point_size = point_size * self.supersample
        try:
            buf, _ = r.render(self.scene, RenderFlags.RGBA | RenderFlags.OFFSCREEN)
        finally:
            self.scene.remove_node(node)
            self._free(mesh)
        full = self.size * self.supersample
        image = Image.frombuffer("RGBA", (full, full), buf, "raw", "RGBA", 0, -1)
        if self.supersample > 1:
            image = image.reduce(self.supersample)  # box filter, alpha-weighted by Pillow
        return image if self.transparent else image.convert("RGB")

    def _primitive(self, d) -> pyrender.Primitive:
        material = pyrender.MetallicRoughnessMaterial(
            baseColorFactor=list(d.base_color),
            baseColorTexture=d.texture,
            metallicFactor=0.0,
            roughnessFactor=0.7,
            doubleSided=d.double_sided,
            alphaMode="BLEND" if d.blend else "OPAQUE",
        )
        return _Primitive(
            positions=d.positions,
            normals=d.normals,
            texcoord_0=d.uv,
            color_0=d.colors,
            indices=d.indices,
            material=material,
            mode=d.mode,
        )

    def _point_size(self, model: LoadedModel) -> float:
        points = sum(len(d.positions) for d in model.drawables if d.mode == POINTS)
        if not points:
            return 1.0
        return float(np.clip(self.size * 0.6 / np.sqrt(points), 2.0, self.size / 24.0))

    def _free(self, mesh) -> None:
        """Release the mesh's GL buffers and textures now rather than at the next frame."""
        r = self._renderer
        for p in mesh.primitives:
            p.delete()
            for texture in p.material.textures:
                texture.delete()
                r._mesh_textures.discard(texture)
        r._meshes.discard(mesh)


__all__ = ["ThumbnailRenderer", "RendererUnavailable", "LINES", "POINTS"]
