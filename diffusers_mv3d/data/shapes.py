"""Coloured primitives the procedural generators build objects from.

Each helper returns a :class:`Part`: plain vertex and face arrays with one palette colour, made by
scaling and moving a cached unit primitive (building a ``trimesh.Trimesh`` per primitive costs ten
times more, and the 2D foundation data needs tens of thousands of objects). Lengths are in the
object's own units (about a metre for furniture); :func:`assemble` stacks the parts into one
face-coloured ``trimesh.Trimesh`` (no boolean union: overlapping parts render correctly with ray
casting) and normalises it with :func:`normalise`; :func:`inside_mesh` tells which points such a union
holds.
"""

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence, Tuple

import numpy as np
import trimesh
from scipy.spatial import ConvexHull

from .palette import rgba

# Every normalised object fits inside the sphere of this radius around the origin, hence inside
# the cube [-0.9, 0.9]^3: a default orbit camera (radius 2.5, fov 50) sees up to radius ~1.05.
OBJECT_RADIUS = 0.9
_SECTIONS = 20  # facets around round primitives


@dataclass
class Part:
    """One single-coloured piece of an object: ``vertices [N, 3]``, outward-wound ``faces [F, 3]``, a palette colour."""

    vertices: np.ndarray
    faces: np.ndarray
    colour: str


@lru_cache(maxsize=None)
def _unit(kind: str, sections: int = _SECTIONS) -> Tuple[np.ndarray, np.ndarray]:
    """Cached (vertices, faces) of a unit primitive: ``box`` (extents 1), ``cylinder`` (radius 1,
    z in [-0.5, 0.5]), ``cone`` (radius 1, base at z = 0, apex at z = 1), ``sphere`` (radius 1)."""
    if kind == "box":
        mesh = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    elif kind == "cylinder":
        mesh = trimesh.creation.cylinder(radius=1.0, height=1.0, sections=sections)
    elif kind == "cone":
        mesh = trimesh.creation.cone(radius=1.0, height=1.0, sections=sections)
    elif kind == "sphere":
        mesh = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
    else:
        raise ValueError(f"kind must be box, cylinder, cone or sphere, got {kind!r}")
    vertices, faces = np.array(mesh.vertices), np.array(mesh.faces)
    vertices.flags.writeable = faces.flags.writeable = False
    return vertices, faces


def _rotation_z_to(direction: np.ndarray) -> np.ndarray:
    """A 3x3 rotation taking +z to the unit vector ``direction``."""
    return trimesh.geometry.align_vectors([0.0, 0.0, 1.0], direction)[:3, :3]


def box(size: Sequence[float], center: Sequence[float], colour: str) -> Part:
    """An axis-aligned box of extents ``size`` (x, y, z) centred at ``center``."""
    vertices, faces = _unit("box")
    return Part(vertices * np.asarray(size, dtype=float) + np.asarray(center, dtype=float), faces, colour)


def frustum(r_bottom: float, r_top: float, z_bottom: float, z_top: float, colour: str, sections: int = _SECTIONS) -> Part:
    """A truncated cone around the z axis from height ``z_bottom`` (radius ``r_bottom``) to ``z_top`` (``r_top``)."""
    vertices, faces = _unit("cylinder", sections)
    t = vertices[:, 2:] + 0.5  # 0 at the bottom, 1 at the top
    xy = vertices[:, :2] * (r_bottom + t * (r_top - r_bottom))
    return Part(np.concatenate([xy, z_bottom + t * (z_top - z_bottom)], axis=1), faces, colour)


def cylinder(radius: float, start: Sequence[float], end: Sequence[float], colour: str, sections: int = _SECTIONS) -> Part:
    """A capped cylinder from point ``start`` to point ``end``."""
    start, end = np.asarray(start, dtype=float), np.asarray(end, dtype=float)
    axis = end - start
    length = float(np.linalg.norm(axis))
    if length <= 0:
        raise ValueError(f"cylinder start and end must differ, got {start.tolist()} twice")
    vertices, faces = _unit("cylinder", sections)
    scaled = vertices * [radius, radius, length]
    return Part(scaled @ _rotation_z_to(axis / length).T + (start + end) / 2, faces, colour)


def disc(radius: float, height: float, center: Sequence[float], colour: str, sections: int = _SECTIONS) -> Part:
    """A vertical cylinder (axis +z) of ``height`` centred at ``center``."""
    vertices, faces = _unit("cylinder", sections)
    return Part(vertices * [radius, radius, height] + np.asarray(center, dtype=float), faces, colour)


def cone(radius: float, height: float, base: Sequence[float], colour: str, sections: int = _SECTIONS,
         axis: Sequence[float] = (0.0, 0.0, 1.0)) -> Part:
    """A cone whose base disc is centred at ``base``, pointing ``height`` along the unit ``axis``."""
    vertices, faces = _unit("cone", sections)
    scaled = vertices * [radius, radius, height]
    return Part(scaled @ _rotation_z_to(np.asarray(axis, dtype=float)).T + np.asarray(base, dtype=float), faces, colour)


def sphere(radius: float, center: Sequence[float], colour: str, scale: Optional[Sequence[float]] = None) -> Part:
    """An icosphere (320 faces), optionally stretched along the axes by ``scale``."""
    vertices, faces = _unit("sphere")
    stretch = radius * (np.ones(3) if scale is None else np.asarray(scale, dtype=float))
    return Part(vertices * stretch + np.asarray(center, dtype=float), faces, colour)


def torus(major: float, minor: float, center: Sequence[float], colour: str, axis: str = "z") -> Part:
    """A torus around ``axis`` ('x', 'y' or 'z') centred at ``center``."""
    if axis not in ("x", "y", "z"):
        raise ValueError(f"axis must be 'x', 'y' or 'z', got {axis!r}")
    mesh = trimesh.creation.torus(major_radius=major, minor_radius=minor, major_sections=24, minor_sections=10)
    direction = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}[axis]
    vertices = np.asarray(mesh.vertices) @ _rotation_z_to(np.array(direction)).T + np.asarray(center, dtype=float)
    return Part(vertices, np.asarray(mesh.faces), colour)


def hull(points: Sequence[Sequence[float]], colour: str) -> Part:
    """The convex hull of ``points`` (wedges, roofs, fins), faces wound outwards."""
    points = np.asarray(points, dtype=float)
    simplices = ConvexHull(points).simplices
    triangles = points[simplices]
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    inward = (normals * (triangles.mean(axis=1) - points.mean(axis=0))).sum(axis=1) < 0
    simplices[inward] = simplices[inward][:, ::-1]
    used, faces = np.unique(simplices, return_inverse=True)
    return Part(points[used], faces.reshape(-1, 3), colour)


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


def assemble(parts: Sequence[Part]) -> trimesh.Trimesh:
    """Stack coloured parts into one normalised, face-coloured mesh."""
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    vertices = np.concatenate([p.vertices for p in parts])
    faces = np.concatenate([p.faces + offset for p, offset in zip(parts, offsets)])
    colours = np.concatenate([np.tile(rgba(p.colour), (len(p.faces), 1)) for p in parts])
    return normalise(trimesh.Trimesh(vertices, faces, face_colors=colours, process=False))


def inside_mesh(mesh, points: np.ndarray) -> np.ndarray:
    """Which of ``points [N, 3]`` lie inside ``mesh`` (``[N]`` bool; all False for ``None`` or an empty mesh).

    A point is inside when it is inside some connected component (``trimesh``'s ray-parity
    ``contains``, component by component: procedural objects are unions of overlapping closed parts,
    where parity over the whole mesh would call the overlaps outside). Only points in a component's
    bounding box are tested.
    """
    points = np.asarray(points, dtype=np.float64)
    inside = np.zeros(len(points), dtype=bool)
    if mesh is not None and len(mesh.faces):
        for part in mesh.split(only_watertight=False):
            low, high = part.bounds
            in_box = np.all((points >= low) & (points <= high), axis=1)
            if in_box.any():
                inside[in_box] |= part.contains(points[in_box])
    return inside
