"""Headless CPU renderer: trimesh + embree ray casting with :class:`~diffusers_mv3d.cameras.Cameras`.

One primary ray per pixel centre (plus ``antialias x antialias`` sub-pixel rays for the colour when
asked) finds the first surface hit. From it:

* ``depth`` is the hit's camera-space z (DESIGN.md §4), 0 where the ray misses;
* ``normal`` is the hit face's world-space normal, turned towards the camera (user meshes often
  have inconsistent winding), 0 where the ray misses;
* ``rgba`` is Lambert + ambient shading of the surface colour (face colours, or vertex colours
  interpolated barycentrically) under one directional light fixed to the camera, coming from the
  upper left front. A light fixed to the camera keeps every visible side lit, so colours read the
  same from every view (CPU-FACTS.md).

Without embree (``pip install embreex``) trimesh falls back to pure-Python ray casting, about
1000x slower; :func:`render_views` warns once when that happens.
"""

import os
import warnings
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import trimesh

from ..cameras import Cameras
from .shapes import OBJECT_RADIUS, normalise

AMBIENT = 0.4  # shade = AMBIENT + (1 - AMBIENT) * max(0, n . l)
LIGHT_CAMERA = np.array([-0.5, -0.6, -1.0]) / np.linalg.norm([-0.5, -0.6, -1.0])  # towards the light, camera axes
DEFAULT_GREY = np.array([0.7, 0.7, 0.7])  # surface colour of a mesh without colours
MESH_EXTENSIONS = (".obj", ".glb", ".gltf", ".ply", ".stl", ".off")
BACKGROUNDS = ("white", "transparent")
_warned_no_embree = False


@dataclass
class RenderOutput:
    """What :func:`render_views` returns, for ``V`` cameras of ``H x W`` pixels.

    Args:
        rgba: ``[V, H, W, 4]`` float32 in 0..1. Alpha is the pixel's coverage (the mask when
            ``antialias=1``). With a white background the RGB is composited over white; with a
            transparent one it is straight (not premultiplied) colour, 0 where nothing is hit.
        depth: ``[V, H, W]`` float32 camera-space z of the surface at the pixel centre, 0 on background.
        normal: ``[V, H, W, 3]`` float32 world-space unit normals facing the camera, 0 on background.
        mask: ``[V, H, W]`` bool, True where the pixel centre's ray hits the surface.
    """

    rgba: np.ndarray
    depth: np.ndarray
    normal: np.ndarray
    mask: np.ndarray


def embree_available() -> bool:
    """Whether trimesh can use embree (the ``embreex`` package) for ray casting on this machine."""
    try:
        from trimesh.ray.ray_pyembree import RayMeshIntersector  # noqa: F401  (imports embreex)
    except ImportError:
        return False
    return True


def has_embree(mesh: trimesh.Trimesh) -> bool:
    """Whether ``mesh.ray`` is trimesh's embree intersector (and not the slow pure-Python one)."""
    try:
        from trimesh.ray.ray_pyembree import RayMeshIntersector
    except ImportError:
        return False
    return isinstance(mesh.ray, RayMeshIntersector)


def _check_embree(mesh: trimesh.Trimesh) -> None:
    """Warn once per process when ray casting will not use embree."""
    global _warned_no_embree
    if not _warned_no_embree and not has_embree(mesh):
        _warned_no_embree = True
        warnings.warn("embree is not available (pip install embreex): ray casting will be ~1000x slower")


def _surface_colours(mesh: trimesh.Trimesh, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """RGB in 0..1 of the surface at ``points`` lying on ``faces``: vertex colours interpolated, else face colours."""
    visual = mesh.visual
    if getattr(visual, "kind", None) == "vertex":
        triangles = mesh.triangles[faces]
        bary = trimesh.triangles.points_to_barycentric(triangles, points)
        colours = visual.vertex_colors[mesh.faces[faces], :3].astype(np.float64) / 255.0  # [N, 3 corners, 3]
        return np.einsum("nk,nkc->nc", np.clip(bary, 0, 1), colours)
    if getattr(visual, "kind", None) == "face":
        return visual.face_colors[faces, :3].astype(np.float64) / 255.0
    return np.broadcast_to(DEFAULT_GREY, (len(faces), 3))


def _cast(mesh: trimesh.Trimesh, origins: np.ndarray, directions: np.ndarray):
    """First hits of rays ``[N, 3]``: (hit mask [N], face index [N], location [N, 3])."""
    faces, rays, locations = mesh.ray.intersects_id(
        origins, directions, multiple_hits=False, return_locations=True
    )
    hit = np.zeros(len(origins), dtype=bool)
    hit[rays] = True
    face = np.full(len(origins), -1, dtype=np.int64)
    face[rays] = faces
    location = np.zeros_like(origins)
    location[rays] = locations
    return hit, face, location


def _shade(mesh, face, location, directions, light_world) -> np.ndarray:
    """Lambert + ambient RGB of hits (``face >= 0``); the light direction is per ray, in world space."""
    normals = mesh.face_normals[face]
    facing = np.sign(-(normals * directions).sum(axis=1))  # turn the normal towards the camera
    lambert = np.clip(facing * (normals * light_world).sum(axis=1), 0.0, None)
    return _surface_colours(mesh, face, location) * (AMBIENT + (1 - AMBIENT) * lambert)[:, None]


def _sample_uv(height: int, width: int, antialias: int) -> np.ndarray:
    """``[H * W * a * a, 2]`` sample positions ``(u, v)``: ``a x a`` evenly spaced in each pixel,
    pixel by pixel in row-major order (``a = 1`` gives the pixel centres ``(j + 0.5, i + 0.5)``)."""
    offsets = (np.arange(antialias) + 0.5) / antialias
    v, u, dv, du = np.meshgrid(np.arange(height), np.arange(width), offsets, offsets, indexing="ij")
    return np.stack([u + du, v + dv], axis=-1).reshape(-1, 2)


def camera_rays(cameras: Cameras, uv: np.ndarray):
    """Rays of ``[V]`` cameras through pixel positions ``uv [N, 2]`` (the same in every view).

    The numpy equivalent of :meth:`Cameras.rays`, about 10x faster for full images. Returns
    ``origins [V * N, 3]``, unit ``directions [V * N, 3]`` (view-major) and ``view [V * N]``.
    """
    k = cameras.intrinsics.double().numpy()  # [V, 3, 3]
    c2w = cameras.cam2world.double().numpy()  # [V, 4, 4]
    x = (uv[None, :, 0] - k[:, None, 0, 2]) / k[:, None, 0, 0]  # [V, N]
    y = (uv[None, :, 1] - k[:, None, 1, 2]) / k[:, None, 1, 1]
    p_cam = np.stack([x, y, np.ones_like(x)], axis=-1)  # [V, N, 3]
    directions = p_cam @ c2w[:, :3, :3].transpose(0, 2, 1)  # [V, N, 3]: R^T p per point
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    origins = np.broadcast_to(c2w[:, None, :3, 3], directions.shape)
    view = np.repeat(np.arange(len(k)), uv.shape[0])
    return origins.reshape(-1, 3), directions.reshape(-1, 3), view


def render_views(
    mesh: trimesh.Trimesh, cameras: Cameras, background: str = "white", antialias: int = 1
) -> RenderOutput:
    """Render ``mesh`` from every camera of ``cameras`` (batch shape ``[V]``).

    Args:
        mesh: a triangle mesh, coloured by face or vertex colours (grey when it has none).
        cameras: ``[V]`` cameras; the image size is ``cameras.height x cameras.width``.
        background: ``"white"`` (RGB composited over white) or ``"transparent"`` (straight RGB).
        antialias: ``a`` gives ``a x a`` rays a pixel for the colour and alpha; depth, normal and
            mask always come from the pixel-centre ray.

    Returns:
        a :class:`RenderOutput`.
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    if antialias < 1:
        raise ValueError(f"antialias must be >= 1, got {antialias}")
    if cameras.world_to_camera.dim() != 3:
        raise ValueError(f"cameras must have batch shape [V], got {tuple(cameras.batch_shape)}")
    _check_embree(mesh)
    num_views, height, width = len(cameras), cameras.height, cameras.width
    rotation = cameras.world_to_camera[:, :3, :3].double().numpy()  # [V, 3, 3]
    light_world = np.einsum("vij,i->vj", rotation, LIGHT_CAMERA)  # R^T l

    # 1. Cast the pixel-centre rays (depth, normal, mask) and, with antialiasing, a x a sub-pixel
    #    rays a pixel (colour and alpha) in one embree call.
    centre_uv = _sample_uv(height, width, 1)
    all_uv = centre_uv if antialias == 1 else np.concatenate([centre_uv, _sample_uv(height, width, antialias)])
    all_origins, all_directions, all_view = camera_rays(cameras, all_uv)
    all_hit, all_face, all_location = _cast(mesh, all_origins, all_directions)
    per_view = np.arange(len(all_uv)) < len(centre_uv)  # the centre rays among one view's rays
    centre = np.tile(per_view, num_views)
    origins, directions, hit, face, location = (a[centre] for a in (all_origins, all_directions, all_hit, all_face, all_location))
    forward = rotation[all_view[centre], 2]  # optical axes in world space
    depth = np.where(hit, np.einsum("nc,nc->n", location - origins, forward), 0.0)
    normal = np.zeros_like(location)
    normal[hit] = mesh.face_normals[face[hit]]
    normal[hit] *= -np.sign(np.einsum("nc,nc->n", normal[hit], directions[hit]))[:, None]

    # 2. Colour: Lambert + ambient of every colour ray, averaged over the a x a rays of a pixel.
    colour_rays = centre if antialias == 1 else ~centre
    sub_hit, sub_face, sub_location, sub_view, directions = (
        a[colour_rays] for a in (all_hit, all_face, all_location, all_view, all_directions)
    )
    rgb = np.zeros((len(sub_hit), 3))
    rgb[sub_hit] = _shade(mesh, sub_face[sub_hit], sub_location[sub_hit], directions[sub_hit], light_world[sub_view[sub_hit]])
    samples = antialias**2
    alpha = sub_hit.reshape(-1, samples).mean(axis=1)
    rgb_sum = rgb.reshape(-1, samples, 3).sum(axis=1)
    if background == "white":
        rgb = (rgb_sum + (samples - sub_hit.reshape(-1, samples).sum(axis=1))[:, None]) / samples
    else:
        rgb = rgb_sum / np.maximum(sub_hit.reshape(-1, samples).sum(axis=1), 1)[:, None]
    rgba = np.concatenate([rgb, alpha[:, None]], axis=1)
    return RenderOutput(
        rgba=rgba.reshape(num_views, height, width, 4).astype(np.float32),
        depth=depth.reshape(num_views, height, width).astype(np.float32),
        normal=normal.reshape(num_views, height, width, 3).astype(np.float32),
        mask=hit.reshape(num_views, height, width),
    )


def _as_colour_mesh(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """``mesh`` with colour visuals: textures sampled at the vertices, uncoloured meshes left plain."""
    if isinstance(mesh.visual, trimesh.visual.TextureVisuals):
        mesh.visual = mesh.visual.to_color()
    return mesh


# Rotations that take a file's up axis to the world's +z (proper rotations, det +1): new = R @ old.
UP_AXIS_ROTATIONS = {
    "+z": np.eye(3),
    "-z": np.diag([1.0, -1.0, -1.0]),  # 180 degrees about x
    "+y": np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]),  # +90 degrees about x: (x, y, z) -> (x, -z, y)
    "-y": np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]),  # -90 degrees about x: (x, y, z) -> (x, z, -y)
    "+x": np.array([[0, 0, -1.0], [0, 1.0, 0], [1.0, 0, 0]]),  # -90 degrees about y: (x, y, z) -> (-z, y, x)
    "-x": np.array([[0, 0, 1.0], [0, 1.0, 0], [-1.0, 0, 0]]),  # +90 degrees about y: (x, y, z) -> (z, y, -x)
}
UP_AXIS_CHOICES = ("auto", *UP_AXIS_ROTATIONS)
GLTF_EXTENSIONS = (".glb", ".gltf")  # +y up by the glTF 2.0 specification


def to_gltf_axes(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A copy of a world-space (+z up) ``mesh`` turned +y up, as a .glb/.gltf file holds it (the
    inverse of what :func:`load_mesh` does to glTF files)."""
    z_up_to_y_up = np.eye(4)
    z_up_to_y_up[:3, :3] = UP_AXIS_ROTATIONS["+y"].T
    turned = mesh.copy()
    turned.apply_transform(z_up_to_y_up)
    return turned


def file_up_axis(path: str, up_axis: str = "auto") -> str:
    """The up axis of a mesh file: ``up_axis`` itself, or with ``"auto"`` ``"+y"`` for glTF (.glb,
    .gltf: +y up by its spec) and ``"+z"`` for formats without a convention (kept as they are)."""
    if up_axis not in UP_AXIS_CHOICES:
        raise ValueError(f"--up-axis must be one of {UP_AXIS_CHOICES}, got {up_axis!r}")
    if up_axis != "auto":
        return up_axis
    return "+y" if path.lower().endswith(GLTF_EXTENSIONS) else "+z"


def load_mesh(path: str, radius: float = OBJECT_RADIUS, up_axis: str = "auto") -> trimesh.Trimesh:
    """Load a user mesh (.obj, .glb, .gltf, .ply, .stl, .off) as one coloured, normalised triangle mesh.

    Scenes are flattened with their node transforms. Textures become vertex colours (sampled at
    the vertices, so detail finer than the mesh is lost); a mesh without colours renders grey.
    The file's ``up_axis`` is turned to the world's +z (:func:`file_up_axis`: glTF files are +y up by
    their spec, so ``"auto"`` stands them upright; give the axis for .obj/.ply/.stl/.off files that
    are not +z up, e.g. ``"+y"`` for most .obj exports). Normalisation as for procedural objects:
    centred on its bounding-box centre and scaled so its farthest vertex lies at ``radius`` (0.9):
    inside the cube [-0.9, 0.9]^3 and the sphere of radius 0.9, which every default orbit camera
    sees whole.
    """
    rotation = UP_AXIS_ROTATIONS[file_up_axis(path, up_axis)]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mesh file not found: {path}")
    if not path.lower().endswith(MESH_EXTENSIONS):
        raise ValueError(f"path must end with one of {MESH_EXTENSIONS}, got {path!r}")
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as error:  # trimesh raises many exception types for bad files
        raise ValueError(f"{path}: cannot read mesh ({error})") from error
    if isinstance(loaded, trimesh.Scene):
        meshes = [_as_colour_mesh(m) for m in loaded.dump() if isinstance(m, trimesh.Trimesh)]
    else:
        meshes = [_as_colour_mesh(loaded)] if isinstance(loaded, trimesh.Trimesh) else []
    meshes = [m for m in meshes if len(m.faces) > 0]
    if not meshes:
        raise ValueError(f"{path}: holds no triangles")
    if len({m.visual.kind for m in meshes}) > 1:  # mixed face / vertex / no colours: use face colours
        for m in meshes:
            m.visual = trimesh.visual.ColorVisuals(m, face_colors=m.visual.face_colors)
    mesh = trimesh.util.concatenate(meshes) if len(meshes) > 1 else meshes[0]
    vertices = np.asarray(mesh.vertices)
    if not np.isfinite(vertices).all():
        raise ValueError(f"{path}: {int((~np.isfinite(vertices)).any(axis=1).sum())} vertices have NaN or infinite coordinates")
    if np.abs(vertices).max() > 1e12 or np.ptp(vertices, axis=0).max() <= 0:
        raise ValueError(f"{path}: vertex coordinates span [{vertices.min():.3g}, {vertices.max():.3g}], which cannot be "
                         "normalised (expected finite coordinates below 1e12 and a non-zero extent)")
    transform = np.eye(4)
    transform[:3, :3] = rotation
    mesh.apply_transform(transform)
    return normalise(mesh, radius)


def random_cameras(
    num_views: int,
    resolution: int,
    rng: np.random.Generator,
    elevation_range: Tuple[float, float] = (-10.0, 50.0),
) -> Cameras:
    """``num_views`` orbit cameras at random azimuth (uniform over 360 degrees) and elevation
    (uniform in ``elevation_range``), radius 2.5 and fov 50 as the default cameras."""
    elevations = rng.uniform(*elevation_range, size=num_views)
    azimuths = rng.uniform(0.0, 360.0, size=num_views)
    return Cameras.orbit(elevations.tolist(), azimuths.tolist(), height=resolution)
