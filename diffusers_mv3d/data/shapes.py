"""Coloured primitives the procedural generators build objects from.

Each helper returns a ``trimesh.Trimesh`` whose faces all carry one palette colour. Lengths are in
the object's own units (about a metre for furniture); :func:`assemble` concatenates the parts
(no boolean union: overlapping parts render correctly with ray casting) and normalises the result
with :func:`normalise`.
"""

from typing import Optional, Sequence

import numpy as np
import trimesh

from .palette import rgba

# Every normalised object fits inside the sphere of this radius around the origin, hence inside
# the cube [-0.9, 0.9]^3: a default orbit camera (radius 2.5, fov 50) sees up to radius ~1.05.
OBJECT_RADIUS = 0.9
_SECTIONS = 20  # facets around round primitives


def _paint(mesh: trimesh.Trimesh, colour: str) -> trimesh.Trimesh:
    """Set every face of ``mesh`` to the palette colour ``colour``."""
    mesh.visual.face_colors = np.tile(rgba(colour), (len(mesh.faces), 1))
    return mesh


def box(size: Sequence[float], center: Sequence[float], colour: str) -> trimesh.Trimesh:
    """An axis-aligned box of extents ``size`` (x, y, z) centred at ``center``."""
    mesh = trimesh.creation.box(extents=size)
    mesh.apply_translation(center)
    return _paint(mesh, colour)


def cylinder(radius: float, start: Sequence[float], end: Sequence[float], colour: str, sections: int = _SECTIONS):
    """A capped cylinder from point ``start`` to point ``end``."""
    mesh = trimesh.creation.cylinder(radius=radius, segment=np.array([start, end], dtype=float), sections=sections)
    return _paint(mesh, colour)


def disc(radius: float, height: float, center: Sequence[float], colour: str, sections: int = _SECTIONS):
    """A vertical cylinder (axis +z) of ``height`` centred at ``center``."""
    c = np.asarray(center, dtype=float)
    return cylinder(radius, c - [0, 0, height / 2], c + [0, 0, height / 2], colour, sections)


def cone(radius: float, height: float, base: Sequence[float], colour: str, sections: int = _SECTIONS):
    """A cone pointing up +z whose base disc is centred at ``base``."""
    mesh = trimesh.creation.cone(radius=radius, height=height, sections=sections)
    mesh.apply_translation(base)
    return _paint(mesh, colour)


def frustum(r_bottom: float, r_top: float, z_bottom: float, z_top: float, colour: str, sections: int = _SECTIONS):
    """A truncated cone around the z axis from height ``z_bottom`` (radius ``r_bottom``) to ``z_top``."""
    angles = np.linspace(0, 2 * np.pi, sections, endpoint=False)
    ring = np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles)], axis=1)
    points = np.concatenate([ring * r_bottom + [0, 0, z_bottom], ring * r_top + [0, 0, z_top]])
    return hull(points, colour)


def sphere(radius: float, center: Sequence[float], colour: str, scale: Optional[Sequence[float]] = None):
    """An icosphere (320 faces), optionally stretched along the axes by ``scale``."""
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=radius)
    if scale is not None:
        mesh.apply_scale(np.asarray(scale, dtype=float))
    mesh.apply_translation(center)
    return _paint(mesh, colour)


def torus(major: float, minor: float, center: Sequence[float], colour: str, axis: str = "z"):
    """A torus around ``axis`` ('x', 'y' or 'z') centred at ``center``."""
    mesh = trimesh.creation.torus(major_radius=major, minor_radius=minor, major_sections=24, minor_sections=10)
    if axis == "x":
        mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
    elif axis == "y":
        mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    elif axis != "z":
        raise ValueError(f"axis must be 'x', 'y' or 'z', got {axis!r}")
    mesh.apply_translation(center)
    return _paint(mesh, colour)


def hull(points: Sequence[Sequence[float]], colour: str) -> trimesh.Trimesh:
    """The convex hull of ``points`` (wedges, roofs, fins)."""
    mesh = trimesh.convex.convex_hull(np.asarray(points, dtype=float))
    return _paint(mesh, colour)


def normalise(mesh: trimesh.Trimesh, radius: float = OBJECT_RADIUS) -> trimesh.Trimesh:
    """Centre ``mesh`` on its bounding-box centre and scale it so its farthest vertex lies at ``radius``.

    The result lies inside the sphere of ``radius`` and so inside the cube ``[-radius, radius]^3``.
    Modifies and returns ``mesh``.
    """
    if len(mesh.vertices) == 0:
        raise ValueError("mesh has no vertices")
    mesh.apply_translation(-mesh.bounds.mean(axis=0))
    extent = float(np.linalg.norm(mesh.vertices, axis=1).max())
    if extent <= 0:
        raise ValueError("mesh is a single point and cannot be normalised")
    mesh.apply_scale(radius / extent)
    return mesh


def assemble(parts: Sequence[trimesh.Trimesh]) -> trimesh.Trimesh:
    """Concatenate coloured parts into one normalised mesh (face colours kept).

    Plain numpy stacking: ``trimesh.util.concatenate`` does the same 5-10x slower.
    """
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    vertices = np.concatenate([p.vertices for p in parts])
    faces = np.concatenate([p.faces + offset for p, offset in zip(parts, offsets)])
    colours = np.concatenate([p.visual.face_colors for p in parts])
    return normalise(trimesh.Trimesh(vertices, faces, face_colors=colours, process=False))
