"""Where the camera goes: a three-quarter view from above the front, framed on the model.

World space is Z up, the model's front faces -Y (as a slicer shows a build plate). The camera
sits front-right and above, at a distance set by the bounding sphere (so every point is in
front of it, with a mild perspective); the projection is then fitted exactly to the projected
points, so the whole model fills most of the square whatever its shape, and nothing is clipped.
Pure numpy: testable without OpenGL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

AZIMUTH_DEG = 35.0  # to the right of the front
ELEVATION_DEG = 28.0  # above the horizon
FOV_DEG = 30.0  # sets the perspective's strength (distance = R / sin(fov / 2))
MARGIN = 0.05  # of the square, on the limiting side


@dataclass(frozen=True)
class CameraSetup:
    pose: np.ndarray  # 4x4 camera-to-world (OpenGL convention: looks down its -Z)
    view: np.ndarray  # 4x4 world-to-camera
    projection: np.ndarray  # 4x4 OpenGL projection (off-centre, fitted to the model)
    znear: float
    zfar: float


def view_direction(
    azimuth_deg: float = AZIMUTH_DEG, elevation_deg: float = ELEVATION_DEG
) -> np.ndarray:
    """Unit vector from the model towards the camera."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])


def frame(
    points_list,
    size: int,
    azimuth_deg: float = AZIMUTH_DEG,
    elevation_deg: float = ELEVATION_DEG,
    fov_deg: float = FOV_DEG,
    margin: float = MARGIN,
) -> CameraSetup:
    """Camera for the points (a list of (n, 3) arrays, world space) in a size x size image."""
    points_list = [p for p in points_list if len(p)]
    # per-column reductions: numpy's min(axis=0) on (n, 3) arrays is ~80x slower
    lo = np.array([min(float(p[:, k].min()) for p in points_list) for k in range(3)])
    hi = np.array([max(float(p[:, k].max()) for p in points_list) for k in range(3)])
    center = (lo + hi) / 2.0
    radius = float(np.linalg.norm(hi - lo)) / 2.0
    if not radius > 0.0 or not math.isfinite(radius):
        radius = max(1.0, float(np.abs(center).max()) * 1e-3)

    z_axis = view_direction(azimuth_deg, elevation_deg)
    x_axis = np.cross([0.0, 0.0, 1.0], z_axis)
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(z_axis, x_axis)
    distance = radius / math.sin(math.radians(fov_deg) / 2.0)
    eye = center + z_axis * distance

    rot = np.stack([x_axis, y_axis, z_axis])  # rows: world -> camera axes
    # camera coordinates of p: rot @ (p - eye) = rot @ (p - center) + rot @ (center - eye);
    # projected: u = x / depth, v = y / depth with depth = -z (> radius * (1/sin - 1) > 0)
    offset = rot @ (center - eye)
    rot32 = rot.T.astype(np.float32)
    center32 = center.astype(np.float32)
    u_lo = v_lo = d_lo = math.inf
    u_hi = v_hi = d_hi = -math.inf
    floor = radius * 1e-6
    for pts in points_list:
        for start in range(0, len(pts), 1 << 20):
            cam = (pts[start : start + (1 << 20)] - center32) @ rot32
            depth = np.maximum(-(cam[:, 2] + np.float32(offset[2])), np.float32(floor))
            u = (cam[:, 0] + np.float32(offset[0])) / depth
            v = (cam[:, 1] + np.float32(offset[1])) / depth
            u_lo, u_hi = min(u_lo, float(u.min())), max(u_hi, float(u.max()))
            v_lo, v_hi = min(v_lo, float(v.min())), max(v_hi, float(v.max()))
            d_lo, d_hi = min(d_lo, float(depth.min())), max(d_hi, float(depth.max()))

    extent = max(u_hi - u_lo, v_hi - v_lo)
    if not extent > 1e-9:
        extent = 2.0 * math.tan(math.radians(fov_deg) / 2.0)
    f = size * (1.0 - 2.0 * margin) / extent
    cx = size / 2.0 - f * (u_lo + u_hi) / 2.0
    cy = size / 2.0 + f * (v_lo + v_hi) / 2.0
    znear = max(d_lo * 0.97, radius * 1e-4)
    zfar = max(d_hi * 1.03, znear * 1.01)

    proj = np.zeros((4, 4))
    proj[0, 0] = 2.0 * f / size
    proj[1, 1] = 2.0 * f / size
    proj[0, 2] = 1.0 - 2.0 * cx / size
    proj[1, 2] = 2.0 * cy / size - 1.0
    proj[2, 2] = (zfar + znear) / (znear - zfar)
    proj[2, 3] = 2.0 * zfar * znear / (znear - zfar)
    proj[3, 2] = -1.0

    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x_axis, y_axis, z_axis, eye
    view = np.eye(4)
    view[:3, :3] = rot
    view[:3, 3] = -rot @ eye
    return CameraSetup(pose=pose, view=view, projection=proj, znear=znear, zfar=zfar)
