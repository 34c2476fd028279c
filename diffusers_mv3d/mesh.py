"""Post-processing (paper §3.5): generated views -> coloured mesh, feed-forward.

The paper turns the final views into a mesh with a SparseNeuS variant in one forward pass, without
per-object optimisation. Here that is three small steps, each usable on its own:

1. :func:`mesh_from_neus`: the zero level set of a :class:`LatentSparseNeuS` SDF, given a context
   encoded from the final (clean, ``t = 0``) views, by marching cubes on
   :meth:`LatentSparseNeuS.sdf_grid`. The pipeline passes its ``neus`` or its optional
   ``reconstructor`` (a LatentSparseNeuS trained on clean views at full resolution), and the views'
   foreground masks: :func:`carve_to_silhouettes` empties what falls outside a view's silhouette
   before meshing (the feed-forward SDF alone meshes shapes fatter than the object).
   :func:`visual_hull_mesh` meshes the carving alone (no SDF), the baseline a reconstructor is scored
   against.
2. :func:`color_vertices`: vertex colours taken from the final views. Every vertex is projected into
   every view; a view counts for a vertex only when the vertex is not hidden from it (a ray cast from
   the camera centre towards the vertex must not hit the mesh before it); colours are bilinearly
   sampled and averaged, weighted by ``|cos|`` between the vertex normal and the view direction.
3. :func:`export_mesh`, :func:`turntable_frames`, :func:`save_turntable_gif`: files to look at.

Cameras follow the one convention of :mod:`diffusers_mv3d.cameras` (world +z up, OpenCV cameras,
pixel centres at ``j + 0.5``). Ray casting uses trimesh's embree intersector (``embreex``); without
it trimesh falls back to pure Python, about 1000x slower.
"""

import os
from typing import List, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
import trimesh

from .cameras import DEFAULT_FOV, DEFAULT_RADIUS, Cameras
from .io_utils import atomic_write
from .models.latent_sparse_neus import LatentSparseNeuS, NeuSContext

MESH_SUFFIXES = (".glb", ".obj", ".ply")
AMBIENT = 0.4  # turntable shade = AMBIENT + (1 - AMBIENT) * max(0, n . l)
LIGHT_CAMERA = np.array([-0.5, -0.6, -1.0]) / np.linalg.norm([-0.5, -0.6, -1.0])  # towards the light, camera axes
DEFAULT_GREY = np.array([0.7, 0.7, 0.7])  # surface colour of a mesh without vertex colours
CARVE_DEPTH = 0.1  # carve_to_silhouettes: the carved SDF rises by this much (world units) from mask 1 to 0
CARVE_CONTOUR = 0.9  # carve_to_silhouettes: the interpolated mask value the carved surface follows

ImagesLike = Union[Sequence[PIL.Image.Image], torch.Tensor, np.ndarray]


# ---------------------------------------------------------------------------------------- 1. SDF -> mesh
def mesh_from_neus(
    neus: LatentSparseNeuS,
    context: NeuSContext,
    resolution: int = 64,
    object_index: int = 0,
    level: Optional[float] = None,
    masks: Optional[torch.Tensor] = None,
    cameras: Optional[Cameras] = None,
    carve_contour: float = CARVE_CONTOUR,
) -> trimesh.Trimesh:
    """Marching cubes on a level set of one object's SDF, the model's ``mesh_level`` by default (world
    coordinates, outward faces), carved to the views' silhouettes when ``masks`` are given.

    Args:
        neus: the pipeline's ``neus`` or ``reconstructor``.
        context: from ``neus.encode(views [B, V, C, H, W], t, cameras)`` of the final views.
        resolution: grid side R; the SDF MLP runs on R^3 points (the cost: ~8x a doubling).
        object_index: which of the context's B objects to mesh.
        level: the SDF value meshed (0: the surface the NeuS renders; below 0 shrinks it); ``None``:
            ``neus.config.mesh_level`` (0 unless the model was saved with another).
        masks: ``[V, H, W]`` foreground masks (bool, or floats in [0, 1]) of this object's views, for
            :func:`carve_to_silhouettes`; ``None`` meshes the SDF as it is.
        cameras: the masks' cameras, batch shape ``[V]`` (default: the context's, when their size
            matches the masks').
        carve_contour: the mask value the carved surface follows (:func:`carve_to_silhouettes`).

    Raises:
        ValueError: when ``object_index`` is out of range, the masks do not match the cameras, or the
            SDF has no surface in the bounds.
    """
    batch = context.features.shape[0]
    if not 0 <= object_index < batch:
        raise ValueError(f"object_index must be in [0, {batch}), got {object_index}")
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    sdf = neus.sdf_grid(context, resolution, object_index).float()  # R R R, x y z order
    if masks is not None:
        if cameras is None:
            cameras = context.cameras[object_index]  # [V]
        sdf = carve_to_silhouettes(sdf, neus.config.bound_radius, masks, cameras, contour=carve_contour)
    return mesh_from_sdf_grid(sdf, neus.config.bound_radius, neus.config.mesh_level if level is None else level)


def mesh_from_sdf_grid(sdf: torch.Tensor, bound: float, level: float = 0.0) -> trimesh.Trimesh:
    """Marching cubes on the ``level`` set of an SDF grid ``[R, R, R]`` (indexed x, y, z) sampled on the
    cube ``[-bound, bound]^3`` (grid corners on the cube's corners, as ``LatentSparseNeuS.sdf_grid``
    samples it); world coordinates, outward faces.

    Raises:
        ValueError: when the SDF does not cross ``level`` inside the grid (no surface).
    """
    from skimage.measure import marching_cubes

    sdf = sdf.float().cpu().numpy()
    if not (sdf.min() < level < sdf.max()):
        raise ValueError(f"the SDF does not cross {level} inside the bounds: no surface to mesh")
    vertices, faces, _, _ = marching_cubes(sdf, level=level)  # grid indices
    vertices = vertices / (sdf.shape[0] - 1) * 2 * bound - bound  # grid -> world cube [-bound, bound]^3
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False)


def visual_hull_mesh(masks: torch.Tensor, cameras: Cameras, resolution: int = 64, bound: float = 1.0,
                     contour: float = CARVE_CONTOUR) -> trimesh.Trimesh:
    """The views' visual hull as a mesh: an SDF negative everywhere in ``[-bound, bound]^3``, carved to
    the ``masks [V, H, W]`` (:func:`carve_to_silhouettes`) and meshed. The surface the pipeline's carving
    leaves wherever its SDF puts the object: a baseline that says what a reconstructor adds to carving.

    Raises:
        ValueError: when the masks leave nothing (no surface), or as :func:`carve_to_silhouettes`.
    """
    inside = torch.full((resolution, resolution, resolution), -1.0)
    carved = carve_to_silhouettes(inside, bound, masks, cameras, contour=contour)
    return mesh_from_sdf_grid(carved, bound)


def carve_to_silhouettes(sdf: torch.Tensor, bound: float, masks: torch.Tensor, cameras: Cameras,
                         depth: float = CARVE_DEPTH, contour: float = CARVE_CONTOUR) -> torch.Tensor:
    """Space carving of an SDF grid: what a view sees as background is outside the object.

    ``sdf [R, R, R]`` samples the cube ``[-bound, bound]^3`` as :meth:`LatentSparseNeuS.sdf_grid` does
    (corners included). With ``m_v(x)`` the mask of view ``v`` sampled bilinearly at the projection
    of grid point ``x`` (0 beyond the image)::

        sdf'(x) = max(sdf(x), max_v depth * (contour - m_v(x)))

    so a point outside any silhouette (``m_v < contour``) is outside the surface, and inside every
    silhouette the surface stays the SDF's: the mesh's silhouettes never exceed the masks' (the
    visual hull bounds the object), and the zero crossing follows the masks' edges with sub-pixel
    interpolation. Feed-forward SDFs of few low-resolution views err outwards, into space some view
    saw empty; this removes that part.

    ``contour`` places the edge between a foreground pixel's centre (1) and a background one's (0).
    The pipeline's masks are coverage masks (a pixel the object covers even partly is foreground,
    :func:`~diffusers_mv3d.evaluation.consistency.foreground_masks`), so the object's true edge lies
    inside the outermost foreground pixels, about half a pixel inside the midway contour 1/2; the
    default 0.9 follows it (measured on unseen objects, docs/results.md "Silhouette carving").

    Args:
        sdf: the grid to carve (not modified).
        bound: the cube's half side (the NeuS's ``bound_radius``).
        masks: ``[V, H, W]`` foreground masks, bool or floats in [0, 1] (moved to ``sdf``'s device).
        cameras: their cameras, batch shape ``[V]`` (any image size: masks are resized to it; moved to
            ``sdf``'s device and dtype).
        depth: the carved SDF's slope in mask units; far outside a silhouette it is ``depth * contour``.
        contour: the mask value, in (0, 1), the carved surface follows.
    """
    if not 0.0 < contour < 1.0:
        raise ValueError(f"contour must be in (0, 1), got {contour}")
    if masks.dim() != 3 or masks.shape[0] != len(cameras):
        raise ValueError(f"masks must be [V, H, W] with V = {len(cameras)} (the cameras), got {tuple(masks.shape)}")
    resolution = sdf.shape[0]
    masks = masks.to(sdf.device).float()[:, None]
    cameras = cameras.to(device=sdf.device, dtype=sdf.dtype)
    if masks.shape[-2:] != (cameras.height, cameras.width):
        masks = F.interpolate(masks, size=(cameras.height, cameras.width), mode="area")
    axis = torch.linspace(-bound, bound, resolution, device=sdf.device)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    uv, _ = cameras.project(points.to(cameras.world_to_camera).expand(len(cameras), -1, -1))  # [V, N, 2]
    size = torch.tensor([cameras.width, cameras.height], dtype=uv.dtype, device=uv.device)
    grid = (2.0 * uv / size - 1.0)[:, :, None]  # [V, N, 1, 2], pixel centres as in _sample_views
    inside = F.grid_sample(masks.to(uv.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    carved = (depth * (contour - inside[:, 0, :, 0])).amax(dim=0).reshape(sdf.shape)  # [R, R, R]
    return torch.maximum(sdf, carved.to(sdf.dtype))


# ---------------------------------------------------------------------------------------- 2. colours
def images_to_array(images: ImagesLike) -> np.ndarray:
    """The pipeline's output images as ``[V, H, W, 3]`` float32 in 0..1.

    Accepts what ``TuneMV3DPipeline`` returns for each ``output_type``:

    * ``"pil"``: a list of V PIL images (any mode; converted to RGB);
    * ``"pt"``: a tensor ``[V, 3, H, W]`` in 0..1 (channels first, as diffusers);
    * ``"np"``: an array ``[V, H, W, 3]`` in 0..1 (channels last, as diffusers).

    A tensor with channels last or an array with channels first is recognised by its shape; uint8
    input is divided by 255; a fourth (alpha) channel is dropped.
    """
    if isinstance(images, torch.Tensor):
        array = images.detach().cpu().float().numpy()
        channels_first = array.ndim == 4 and array.shape[1] in (1, 3, 4)
    elif isinstance(images, np.ndarray):
        array = images
        channels_first = array.ndim == 4 and array.shape[-1] not in (1, 3, 4) and array.shape[1] in (1, 3, 4)
    else:
        array = np.stack([np.asarray(_to_rgb(image)) for image in images])
        channels_first = False
    if array.ndim != 4:
        raise ValueError(f"images must be [V, 3, H, W] (pt), [V, H, W, 3] (np) or a list of PIL images; got shape {array.shape}")
    if channels_first:
        array = array.transpose(0, 2, 3, 1)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    array = array[..., :3]
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return np.clip(array.astype(np.float32), 0.0, 1.0)


def _to_rgb(image) -> np.ndarray:
    """One PIL image (or array ``[H, W, C]``) as an RGB array."""
    if isinstance(image, PIL.Image.Image):
        return np.asarray(image.convert("RGB"))
    return np.asarray(image)


def vertex_visibility(mesh: trimesh.Trimesh, cameras: Cameras, tolerance: Optional[float] = None) -> np.ndarray:
    """``[V, N]`` bool: vertex n is seen by camera v.

    One ray per (camera, vertex), from the camera centre towards the vertex; the vertex is visible
    when the first hit on the mesh is no closer than ``distance - tolerance`` (the hit of an unoccluded
    vertex is the vertex itself), and it lies in front of the camera inside the image.

    Args:
        mesh: the mesh, world coordinates.
        cameras: batch shape ``[V]``.
        tolerance: world units; defaults to half the mean edge length.
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float64)  # [N, 3]
    if tolerance is None:
        tolerance = 0.5 * float(mesh.edges_unique_length.mean()) if len(mesh.edges_unique) else 1e-4
    centres = cameras.centers.double().numpy()  # [V, 3]
    offsets = vertices[None] - centres[:, None]  # [V, N, 3]
    distance = np.linalg.norm(offsets, axis=-1)  # [V, N]
    directions = offsets / np.maximum(distance, 1e-12)[..., None]
    origins = np.broadcast_to(centres[:, None], offsets.shape)
    hit_distance = _first_hit_distance(mesh, origins.reshape(-1, 3), directions.reshape(-1, 3)).reshape(distance.shape)
    unoccluded = hit_distance >= distance - tolerance
    uv, depth = cameras.project(torch.from_numpy(vertices).to(cameras.world_to_camera))  # [V, N, 2], [V, N]
    uv, depth = uv.double().numpy(), depth.double().numpy()
    inside = (depth > 1e-6) & (uv[..., 0] >= 0) & (uv[..., 0] <= cameras.width) & (uv[..., 1] >= 0) & (uv[..., 1] <= cameras.height)
    return unoccluded & inside


def _first_hit_distance(mesh: trimesh.Trimesh, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Distance along unit rays ``[M, 3]`` to the first hit on ``mesh``, ``inf`` on a miss."""
    distance = np.full(len(origins), np.inf)
    _, rays, locations = mesh.ray.intersects_id(origins, directions, multiple_hits=False, return_locations=True)
    distance[rays] = np.linalg.norm(locations - origins[rays], axis=-1)
    return distance


def color_vertices(
    mesh: trimesh.Trimesh, images: ImagesLike, cameras: Cameras, tolerance: Optional[float] = None
) -> trimesh.Trimesh:
    """A copy of ``mesh`` with RGBA uint8 vertex colours taken from the views.

    Each vertex takes the ``|cos|``-weighted mean (vertex normal . direction to the camera) of the
    bilinearly sampled colours of the views that see it (:func:`vertex_visibility`); vertices that
    no view sees take the mean colour of the others. Batched over views and vertices.

    Args:
        mesh: world coordinates (as :func:`mesh_from_neus` gives).
        images: V views, as :func:`images_to_array` accepts (PIL list, pt ``[V, 3, H, W]``, np
            ``[V, H, W, 3]``, values in 0..1).
        cameras: batch shape ``[V]`` (or ``[1, V]``); rescaled to the images' size when it differs.
        tolerance: occlusion tolerance in world units (see :func:`vertex_visibility`).
    """
    array = images_to_array(images)  # [V, H, W, 3]
    num_views, height, width = array.shape[:3]
    if tuple(cameras.batch_shape) == (1, num_views):  # one object's cameras from a NeuSContext
        cameras = Cameras(cameras.world_to_camera[0], cameras.intrinsics[0], cameras.height, cameras.width)
    if tuple(cameras.batch_shape) != (num_views,):
        raise ValueError(f"cameras must have batch shape [V]=({num_views},) to match the images, got {tuple(cameras.batch_shape)}")
    if (cameras.height, cameras.width) != (height, width):
        cameras = cameras.rescale(height, width)
    cameras = cameras.to(torch.float64)
    visible = vertex_visibility(mesh, cameras, tolerance)  # [V, N]
    weights = visible * np.maximum(np.abs(_view_cosines(mesh, cameras)), 1e-3)  # [V, N]
    samples = _sample_views(array, cameras, np.asarray(mesh.vertices))  # [V, N, 3]
    total = weights.sum(0)  # [N]
    seen = total > 0
    rgb = np.empty((len(mesh.vertices), 3))
    rgb[seen] = (weights[..., None] * samples).sum(0)[seen] / total[seen, None]
    rgb[~seen] = rgb[seen].mean(0) if seen.any() else array.reshape(-1, 3).mean(0)
    coloured = mesh.copy()
    alpha = np.ones((len(rgb), 1))
    coloured.visual = trimesh.visual.ColorVisuals(coloured, vertex_colors=_to_uint8(np.concatenate([rgb, alpha], 1)))
    return coloured


def _view_cosines(mesh: trimesh.Trimesh, cameras: Cameras) -> np.ndarray:
    """``[V, N]`` cosine between each vertex normal and the unit direction from the vertex to camera v."""
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    to_camera = cameras.centers.double().numpy()[:, None] - vertices[None]  # [V, N, 3]
    to_camera /= np.maximum(np.linalg.norm(to_camera, axis=-1, keepdims=True), 1e-12)
    return np.einsum("vnc,nc->vn", to_camera, np.asarray(mesh.vertex_normals, dtype=np.float64))


def _sample_views(array: np.ndarray, cameras: Cameras, points: np.ndarray) -> np.ndarray:
    """Bilinear samples ``[V, N, 3]`` of views ``[V, H, W, 3]`` at the projections of ``points [N, 3]``.

    ``grid_sample(align_corners=False)`` with ``grid = 2 uv / (W, H) - 1`` is the pixel-centre
    convention of :mod:`diffusers_mv3d.cameras`; samples beyond the border repeat the edge pixel.
    """
    uv, _ = cameras.project(torch.from_numpy(points).to(cameras.world_to_camera))  # [V, N, 2]
    size = torch.tensor([cameras.width, cameras.height], dtype=uv.dtype)
    grid = (2.0 * uv / size - 1.0)[:, :, None]  # [V, N, 1, 2]
    views = torch.from_numpy(array).to(uv.dtype).permute(0, 3, 1, 2)  # [V, 3, H, W]
    sampled = F.grid_sample(views, grid, mode="bilinear", padding_mode="border", align_corners=False)  # [V, 3, N, 1]
    return sampled[..., 0].permute(0, 2, 1).numpy()


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------- 3. files
def export_mesh(mesh: trimesh.Trimesh, path: Union[str, os.PathLike]) -> str:
    """Write ``mesh`` (with its vertex colours) to ``path``: .glb, .obj or .ply by suffix, atomically.

    A .glb is written +y up, as the glTF specification says (viewers then show the object upright;
    :func:`~diffusers_mv3d.data.render.load_mesh` turns it back to the world's +z up); .obj and .ply
    keep the world's coordinates (+z up). Returns the path. Raises ``ValueError`` naming the path for
    any other suffix.
    """
    from .data.render import to_gltf_axes

    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in MESH_SUFFIXES:
        raise ValueError(f"cannot export a mesh to {os.fspath(path)!r}: the suffix must be one of {MESH_SUFFIXES}")
    if suffix == ".glb":
        mesh = to_gltf_axes(mesh)
    return atomic_write(path, lambda temporary: mesh.export(temporary, file_type=suffix[1:]))


def turntable_frames(
    mesh: trimesh.Trimesh,
    num_frames: int = 24,
    resolution: int = 128,
    elevation: float = 20.0,
    radius: float = DEFAULT_RADIUS,
    fov: float = DEFAULT_FOV,
) -> List[PIL.Image.Image]:
    """``num_frames`` RGB renders ``resolution x resolution`` of ``mesh`` on an orbit, white background.

    Cameras: :meth:`Cameras.orbit` at ``elevation``, azimuths evenly spaced from 0. One ray per
    pixel centre (:meth:`Cameras.rays`), all frames in one embree call; the surface colour is the hit
    face's vertex colours interpolated barycentrically (grey without colours), Lambert-shaded by a
    light fixed to the camera (upper left front) plus ambient, with interpolated vertex normals.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    cameras = Cameras.orbit(elevation, torch.arange(num_frames) * (360.0 / num_frames), radius, fov, height=resolution)
    origins, directions = cameras.rays()  # [F, P, 3] each, P = resolution^2 row-major
    origins = origins.double().reshape(-1, 3).numpy()
    directions = directions.double().reshape(-1, 3).numpy()
    frame = np.repeat(np.arange(num_frames), resolution * resolution)  # [F * P]
    faces, rays, locations = mesh.ray.intersects_id(origins, directions, multiple_hits=False, return_locations=True)
    light = cameras.world_to_camera[:, :3, :3].double().numpy().transpose(0, 2, 1) @ LIGHT_CAMERA  # [F, 3]: R^T l
    rgb = np.ones((len(origins), 3))  # white background
    rgb[rays] = _shade(mesh, faces, locations, directions[rays], light[frame[rays]])
    pixels = _to_uint8(rgb).reshape(num_frames, resolution, resolution, 3)
    return [PIL.Image.fromarray(image) for image in pixels]


def _shade(mesh: trimesh.Trimesh, faces: np.ndarray, points: np.ndarray, directions: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Lambert + ambient RGB ``[M, 3]`` of hits ``points [M, 3]`` on ``faces [M]`` (rays ``directions``, lights ``light`` [M, 3])."""
    bary = np.clip(trimesh.triangles.points_to_barycentric(mesh.triangles[faces], points), 0.0, 1.0)  # [M, 3]
    corners = mesh.faces[faces]  # [M, 3]
    normals = np.einsum("mk,mkc->mc", bary, mesh.vertex_normals[corners])
    normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
    normals *= -np.sign(np.einsum("mc,mc->m", normals, directions))[:, None]  # turn towards the camera
    lambert = np.clip(np.einsum("mc,mc->m", normals, light), 0.0, None)
    return _surface_rgb(mesh, faces, corners, bary) * (AMBIENT + (1.0 - AMBIENT) * lambert)[:, None]


def _surface_rgb(mesh: trimesh.Trimesh, faces: np.ndarray, corners: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Colour in 0..1 ``[M, 3]`` at hits: vertex colours interpolated, else face colours, else grey."""
    kind = getattr(mesh.visual, "kind", None)
    if kind == "vertex":
        colours = mesh.visual.vertex_colors[corners, :3].astype(np.float64) / 255.0  # [M, 3 corners, 3]
        return np.einsum("mk,mkc->mc", bary, colours)
    if kind == "face":
        return mesh.visual.face_colors[faces, :3].astype(np.float64) / 255.0
    return np.broadcast_to(DEFAULT_GREY, (len(faces), 3))


def save_turntable_gif(frames: Sequence[PIL.Image.Image], path: Union[str, os.PathLike], fps: int = 12) -> str:
    """Write ``frames`` as a looping GIF at ``fps`` frames a second, atomically. Returns the path."""
    if not frames:
        raise ValueError("save_turntable_gif needs at least one frame")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    images = [frame.convert("RGB") for frame in frames]

    def write(temporary: str) -> None:
        images[0].save(temporary, format="GIF", save_all=True, append_images=images[1:],
                       duration=int(round(1000 / fps)), loop=0)

    return atomic_write(path, write)


__all__ = [
    "mesh_from_neus",
    "images_to_array",
    "vertex_visibility",
    "color_vertices",
    "export_mesh",
    "turntable_frames",
    "save_turntable_gif",
]
