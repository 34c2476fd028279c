"""Training-free multi-view consistency metrics (DESIGN.md §6), independent of any model.

All three take the V views of *one* object with their :class:`~diffusers_mv3d.cameras.Cameras`:

* :func:`visual_hull_iou`: carve a voxel hull of the cube ``[-1, 1]^3`` from every view's
  foreground mask, re-render the hull's silhouette in every view, mean IoU with the masks.
* :func:`photo_consistency`: colour agreement of the hull's surface voxels across the views that
  see them, as a PSNR-like figure in dB.
* :func:`reconstruction_psnr`: fit a dense RGB + density voxel field to all views but the held-out
  ones, render the held-out views, PSNR against them (3DiM's "3D consistency score").

Conventions (shared by every function here):

* ``images`` are ``[V, 3, H, W]`` in ``[-1, 1]`` (the project's image tensors) on a plain
  background (white for renders); ``masks`` are ``[V, H, W]`` (bool, or float read as ``> 0.5``), e.g. from
  :func:`foreground_masks`; ``H x W`` must be the cameras' ``height x width``.
* Voxel ``(i, j, k)`` of a grid of resolution ``R`` has its centre at
  ``-1 + (i + 0.5, j + 0.5, k + 0.5) * 2 / R`` (x, y, z), so ``F.grid_sample(..., align_corners=False)``
  on a volume stored ``[z, y, x]`` reads the grid at world coordinates directly.
* Image lookups use the pixel convention of ``cameras.py``: ``grid = 2 * uv / (W, H) - 1``; masks
  and colours are read at the pixel containing the projection (nearest), not interpolated.
* A voxel that projects **outside** an image (or behind its camera) counts as background in that
  view and is carved: views are assumed to frame the whole object, as generated views do.

Reference figures (DESIGN.md §6, ground-truth renders, 8 orbit views, 32-64 px): VH-IoU chair
0.967, bunny 0.996, airplane 0.87, ant 0.78; swapped neighbouring views 0.42 / 0.71 / 0.36; two
different objects 0.45-0.73. Reconstruction PSNR (6 views fit, 2 held out): 21.7 / 24.4 / 29.0 dB,
swapped views 14.2 / 14.5 / 21.6 dB. The metrics depend on the shape: always report the
ground-truth renders' figure beside a generated one.

What each metric cannot see: VH-IoU reads silhouettes only, so views whose every pixel is
foreground (pure noise, no white background) are trivially consistent (the hull fills every
view's frustum) and score ~0.95: read it beside ``coverage`` and the two colour metrics.
Photo-consistency reads colours only on the hull, so swapped views of a one-coloured object keep
their ground-truth figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..cameras import Cameras
from ..threads import torch_threads

MIN_MSE = 1e-10  # the mean squared error's floor: identical images score MAX_PSNR, not inf
MAX_PSNR = -10.0 * math.log10(MIN_MSE)  # 100 dB

__all__ = [
    "foreground_masks",
    "voxel_centers",
    "carve_visual_hull",
    "render_occupancy",
    "mask_iou",
    "visual_hull_iou",
    "photo_consistency",
    "reconstruction_psnr",
    "view_psnr",
    "MAX_PSNR",
    "VoxelField",
    "VisualHullOutput",
    "PhotoConsistencyOutput",
    "ReconstructionOutput",
]


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def _check_views(cameras: Cameras, masks: Optional[torch.Tensor] = None, images: Optional[torch.Tensor] = None):
    """Raise ``ValueError`` unless the cameras are ``[V]`` and masks / images match them."""
    if cameras.world_to_camera.dim() != 3:
        raise ValueError(f"cameras must have batch shape [V] (one object), got {tuple(cameras.batch_shape)}")
    v, h, w = len(cameras), cameras.height, cameras.width
    if masks is not None and tuple(masks.shape) != (v, h, w):
        raise ValueError(f"masks must be [V, H, W] = {(v, h, w)} to match the cameras, got {tuple(masks.shape)}")
    if images is not None and tuple(images.shape) != (v, 3, h, w):
        raise ValueError(f"images must be [V, 3, H, W] = {(v, 3, h, w)} to match the cameras, got {tuple(images.shape)}")


def _as_bool_masks(masks: torch.Tensor) -> torch.Tensor:
    """Bool or float masks ``[V, H, W]`` -> bool (floats read as ``> 0.5``)."""
    return masks if masks.dtype == torch.bool else masks > 0.5


def voxel_centers(resolution: int) -> torch.Tensor:
    """Centres ``[R, R, R, 3]`` (indexed x, y, z) of a voxel grid over ``[-1, 1]^3``."""
    axis = -1.0 + (torch.arange(resolution, dtype=torch.float32) + 0.5) * (2.0 / resolution)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)


def _sample_images(maps: torch.Tensor, uv: torch.Tensor, height: int, width: int, mode: str = "nearest") -> torch.Tensor:
    """Read ``maps [V, C, H, W]`` at pixel coordinates ``uv [V, N, 2]`` -> ``[V, N, C]`` (zeros outside)."""
    scale = torch.tensor([2.0 / width, 2.0 / height], dtype=uv.dtype)
    grid = (uv * scale - 1.0).unsqueeze(1)  # [V, 1, N, 2]
    out = F.grid_sample(maps, grid, mode=mode, padding_mode="zeros", align_corners=False)  # [V, C, 1, N]
    return out[:, :, 0].transpose(1, 2)


def _inside(uv: torch.Tensor, depth: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[V, N]``: the points project in front of the camera and inside the image."""
    u, v = uv[..., 0], uv[..., 1]
    return (depth > 1e-6) & (u >= 0) & (u < width) & (v >= 0) & (v < height)


def _ray_cube_interval(origins: torch.Tensor, directions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Slab test against ``[-1, 1]^3``: entry / exit distances ``[...]`` (``near >= far`` on a miss)."""
    safe = torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0, t1 = (-1.0 - origins) / safe, (1.0 - origins) / safe
    near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    return near, far


def _ray_samples(
    origins: torch.Tensor, directions: torch.Tensor, samples_per_ray: int, jitter: Optional[torch.Generator] = None
):
    """``S`` samples along rays ``[..., 3]`` between their entry into and exit from ``[-1, 1]^3``.

    Sample ``s`` sits at ``t_s = near + (s + u_s) (far - near) / S`` with ``u_s = 0.5`` (midpoints)
    or, with ``jitter``, uniform in ``[0, 1)`` (stratified). Returns ``points [..., S, 3]``,
    ``t [..., S]``, step lengths ``delta [..., S]`` and ``hit [...]`` (the ray meets the cube).
    """
    near, far = _ray_cube_interval(origins, directions)
    hit = far > near
    far = torch.where(hit, far, near + 1e-3)
    steps = torch.arange(samples_per_ray, dtype=torch.float32)
    if jitter is None:
        offsets = (steps + 0.5).expand(*near.shape, samples_per_ray)
    else:
        offsets = steps + torch.rand(*near.shape, samples_per_ray, generator=jitter)
    delta = ((far - near) / samples_per_ray)[..., None]  # [..., 1]
    t = near[..., None] + offsets * delta  # [..., S]
    points = origins[..., None, :] + t[..., None] * directions[..., None, :]  # [..., S, 3]
    return points, t, delta.expand_as(t), hit


def _sample_grid(grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear read of ``grid [C, R, R, R]`` (indexed x, y, z) at world ``points [..., 3]`` -> ``[..., C]``.

    Outside ``[-1, 1]^3`` the grid reads as 0 beyond the outer voxel centres.
    """
    volume = grid.permute(0, 3, 2, 1).unsqueeze(0)  # [1, C, Z, Y, X]: grid_sample's (x, y, z) = (W, H, D)
    flat = points.reshape(1, -1, 1, 1, 3)
    out = F.grid_sample(volume, flat, mode="bilinear", padding_mode="zeros", align_corners=False)  # [1, C, P, 1, 1]
    return out.reshape(grid.shape[0], -1).t().reshape(*points.shape[:-1], grid.shape[0])


# ---------------------------------------------------------------------------------------------
# masks and the visual hull
# ---------------------------------------------------------------------------------------------
def foreground_masks(images: torch.Tensor, threshold: float = 0.05, background: str = "white") -> torch.Tensor:
    """Foreground masks ``[V, H, W]`` bool of views on a plain background.

    ``images`` are ``[V, 3, H, W]`` in ``[-1, 1]``. With ``x = (images + 1) / 2`` in ``[0, 1]`` and a
    background colour ``b`` a view, a pixel is foreground when some channel differs from it by more
    than ``threshold``: ``max_c |x_c - b_c| > threshold``. ``background="white"``: ``b = 1`` (renders);
    ``"border"``: ``b`` is the per-channel median of the view's outermost pixels, for generated views
    whose background is tinted rather than white (objects are framed inside the image). On
    anti-aliased views that keeps edge pixels an object covers only partly (a coverage mask). Brightly
    lit white surfaces (the palette's white is 0.95) sit near 0.05: lower the threshold for white
    objects, raise it for speckled generated backgrounds.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [V, 3, H, W], got {tuple(images.shape)}")
    x = (images.float() + 1.0) / 2.0
    if background == "white":
        colour = torch.ones_like(x[:, :, :1, :1])
    elif background == "border":
        border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], dim=2)  # [V, 3, n]
        colour = border.median(dim=2).values[:, :, None, None]
    else:
        raise ValueError(f"background must be 'white' or 'border', got {background!r}")
    return (x - colour).abs().amax(dim=1) > threshold


def carve_visual_hull(
    masks: torch.Tensor, cameras: Cameras, grid_resolution: int = 64, outside_is_background: bool = True
) -> torch.Tensor:
    """Voxel visual hull ``[R, R, R]`` bool (indexed x, y, z) of the cube ``[-1, 1]^3``.

    A voxel survives when its centre ``p`` falls in a foreground pixel of every view:
    ``occ(p) = AND_v mask_v(pixel containing pi_v(p))``. A centre projecting outside an image (or
    behind the camera) is background there when ``outside_is_background`` (the default), else that
    view abstains.
    """
    _check_views(cameras, masks=masks)
    m = _as_bool_masks(masks).float()[:, None]  # [V, 1, H, W]
    centers = voxel_centers(grid_resolution).reshape(-1, 3)  # [N, 3]
    uv, depth = cameras.project(centers.expand(len(cameras), -1, -1))  # [V, N, 2], [V, N]
    value = _sample_images(m, uv, cameras.height, cameras.width)[..., 0]  # [V, N]
    inside = _inside(uv, depth, cameras.height, cameras.width)
    foreground = (value > 0.5) & inside
    if not outside_is_background:
        foreground = foreground | ~inside
    return foreground.all(dim=0).reshape(grid_resolution, grid_resolution, grid_resolution)


def _subpixel_uv(height: int, width: int, supersample: int) -> torch.Tensor:
    """``[H * W * s * s, 2]`` sub-pixel points ``(j + (a + 0.5) / s, i + (b + 0.5) / s)``, pixel-major."""
    offsets = (torch.arange(supersample, dtype=torch.float32) + 0.5) / supersample
    rows, cols = torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32)
    i, j, b, a = torch.meshgrid(rows, cols, offsets, offsets, indexing="ij")  # [H, W, s, s]
    return torch.stack([j + a, i + b], dim=-1).reshape(-1, 2)


def render_occupancy(
    occupancy: torch.Tensor,
    cameras: Cameras,
    samples_per_ray: Optional[int] = None,
    supersample: Optional[int] = None,
    chunk_size: int = 2**22,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Ray-march an occupancy grid ``[R, R, R]`` (x, y, z) into every camera.

    Every pixel casts ``s x s`` sub-pixel rays (``s = supersample``, default ``max(1, round(R / H))``:
    sub-rays closer together than a voxel's footprint, so that no one-voxel-thin part falls between
    them); each ray is sampled at ``S`` evenly spaced points inside the cube (default ``S = 3R``,
    steps shorter than a voxel) where the grid is read trilinearly. A ray hits where ``occ > 0.5``;
    a pixel is in the silhouette when any of its sub-rays hits (the coverage semantics of
    :func:`foreground_masks` on anti-aliased views). ``depth`` is the smallest camera
    ``z = t (d . forward)`` of a first hit among the pixel's sub-rays, 0 where none hits.
    ``chunk_size`` bounds the number of samples held at once (a memory knob).

    Returns:
        ``silhouettes [V, H, W]`` bool and ``depth [V, H, W]`` float.
    """
    _check_views(cameras)
    resolution = occupancy.shape[0]
    samples_per_ray = 3 * resolution if samples_per_ray is None else samples_per_ray
    v, h, w = len(cameras), cameras.height, cameras.width
    if supersample is None:
        supersample = max(1, round(resolution / max(h, w)))
    volume = occupancy.float()[None]  # [1, R, R, R]
    uv = _subpixel_uv(h, w, supersample)  # [P, 2], P = H W s^2
    forward = cameras.forward_axes[:, None, :]  # [V, 1, 3]
    rays_per_chunk = max(1, chunk_size // (v * samples_per_ray))
    hits, depths = [], []
    for start in range(0, uv.shape[0], rays_per_chunk):  # chunks of rays, all views at once
        origins, directions = cameras.rays(uv[start : start + rays_per_chunk].expand(v, -1, -1))  # [V, n, 3]
        points, t, _, ray_hits_cube = _ray_samples(origins, directions, samples_per_ray)  # [V, n, S, 3]
        inside = (_sample_grid(volume, points)[..., 0] > 0.5) & ray_hits_cube[..., None]  # [V, n, S]
        hit = inside.any(dim=-1)  # [V, n]
        t_first = torch.gather(t, -1, inside.float().argmax(dim=-1, keepdim=True))[..., 0]  # first sample inside
        z_first = t_first * (directions * forward).sum(-1)
        hits.append(hit)
        depths.append(torch.where(hit, z_first, torch.full_like(z_first, float("inf"))))
    hit = torch.cat(hits, 1).reshape(v, h, w, -1)  # [V, H, W, s^2]
    depth = torch.cat(depths, 1).reshape(v, h, w, -1).amin(dim=-1)  # [V, H, W]
    silhouette = hit.any(dim=-1)
    return silhouette, torch.where(silhouette, depth, torch.zeros_like(depth))


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-view IoU ``|a & b| / |a | b|`` of bool masks ``[V, H, W]`` -> ``[V]`` (1 where both are empty)."""
    inter = (a & b).flatten(1).sum(-1).float()
    union = (a | b).flatten(1).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@dataclass
class VisualHullOutput:
    """Result of :func:`visual_hull_iou` with ``return_details=True``.

    Args:
        iou: mean over views of ``per_view``.
        per_view: ``[V]`` IoU of each view's mask with the hull's re-rendered silhouette.
        coverage: ``[V]`` fraction of each view's pixels in its mask (near 1: no background, the
            IoU is then trivially high).
        occupancy: ``[R, R, R]`` bool hull (indexed x, y, z).
        silhouettes: ``[V, H, W]`` bool re-rendered hull silhouettes.
        depth: ``[V, H, W]`` camera z of the hull's first surface (0 = no hit).
    """

    iou: float
    per_view: torch.Tensor
    coverage: torch.Tensor
    occupancy: torch.Tensor
    silhouettes: torch.Tensor
    depth: torch.Tensor


@torch.no_grad()
def visual_hull_iou(
    masks: torch.Tensor,
    cameras: Cameras,
    grid_resolution: int = 64,
    samples_per_ray: Optional[int] = None,
    supersample: Optional[int] = None,
    outside_is_background: bool = True,
    return_details: bool = False,
) -> Union[float, VisualHullOutput]:
    """Visual-hull silhouette IoU (DESIGN.md §6): ``mean_v IoU(mask_v, render_v(hull))``.

    The hull is carved from all ``V`` masks (:func:`carve_visual_hull`) and re-rendered in every view
    (:func:`render_occupancy`). Consistent silhouettes score near 1 (thin parts lose a little to the
    voxel size; DESIGN.md: a ground-truth chair 0.967, an airplane 0.87); silhouettes of different
    objects carve each other away and score lower (0.42-0.73 there). Views without background
    (every pixel foreground) score high whatever they show: check ``coverage``.

    Args:
        masks: ``[V, H, W]`` foreground masks (bool, or float read as ``> 0.5``), e.g. from
            :func:`foreground_masks`.
        cameras: the ``V`` cameras of the views.
        grid_resolution: ``R``, voxels per side of ``[-1, 1]^3`` (cost grows as ``R^3 V``).
        samples_per_ray: ray-marching samples (default ``3R``).
        supersample: sub-rays per pixel side (default ``max(1, round(R / H))``).
        outside_is_background: a voxel outside a view's image is carved by it (default) or not.
        return_details: return a :class:`VisualHullOutput` instead of the mean IoU.
    """
    masks = _as_bool_masks(masks)
    occupancy = carve_visual_hull(masks, cameras, grid_resolution, outside_is_background)
    silhouettes, depth = render_occupancy(occupancy, cameras, samples_per_ray, supersample)
    per_view = mask_iou(silhouettes, masks)
    iou = float(per_view.mean())
    if return_details:
        coverage = masks.flatten(1).float().mean(-1)
        return VisualHullOutput(iou, per_view, coverage, occupancy, silhouettes, depth)
    return iou


# ---------------------------------------------------------------------------------------------
# photo-consistency
# ---------------------------------------------------------------------------------------------
@dataclass
class PhotoConsistencyOutput:
    """Result of :func:`photo_consistency` with ``return_details=True``.

    Args:
        psnr: ``10 log10(1 / mse)`` in dB (see :func:`photo_consistency`); 0.0 when no voxel is
            seen by ``min_views`` views.
        mean_std: mean over scored voxels of ``sqrt(mean_c var_c)``, colours in ``[0, 1]`` (nan
            when none is scored).
        num_voxels: surface voxels seen by at least ``min_views`` views (those scored).
        num_surface: all surface voxels of the hull.
        views_per_voxel: mean number of views seeing a scored voxel.
    """

    psnr: float
    mean_std: float
    num_voxels: int
    num_surface: int
    views_per_voxel: float


def _surface(occupancy: torch.Tensor) -> torch.Tensor:
    """Occupied voxels with an empty voxel among their 26 neighbours (outside the grid is empty)."""
    empty = F.pad((~occupancy).float()[None, None], (1, 1, 1, 1, 1, 1), value=1.0)
    return occupancy & (F.max_pool3d(empty, 3, stride=1)[0, 0] > 0)


@torch.no_grad()
def photo_consistency(
    images: torch.Tensor,
    masks: torch.Tensor,
    cameras: Cameras,
    grid_resolution: int = 64,
    depth_tolerance: Optional[float] = None,
    min_views: int = 2,
    outside_is_background: bool = True,
    return_details: bool = False,
) -> Union[float, PhotoConsistencyOutput]:
    """Photo-consistency of the visual hull's surface voxels across views (DESIGN.md §6), in dB.

    Carve the hull from ``masks`` (:func:`carve_visual_hull`); take its surface voxels ``p``
    (occupied, with an empty neighbour). Voxel ``p`` is visible in view ``v`` when it projects inside
    the image and ``z_v(p) <= D_v(pi_v(p)) + tol``, ``D_v`` the hull's own depth map in that view
    (:func:`render_occupancy`) and ``tol`` ``depth_tolerance`` (default two voxel diagonals,
    ``2 sqrt(3) 2 / R``). With ``c_v(p)`` the colour of the pixel containing ``pi_v(p)`` in
    ``(images + 1) / 2``, ``mu(p)`` its mean over the ``n(p)`` views seeing ``p``, and only voxels
    with ``n(p) >= min_views``::

        mse  = sum_p sum_{v sees p} mean_c (c_v(p) - mu(p))^2 / sum_p (n(p) - 1)
        psnr = 10 log10(1 / mse)

    ``mse`` pools the unbiased per-voxel colour variances, so views of random colours score
    ``10 log10(12) = 10.8`` dB (the variance of uniform noise is 1/12) whatever the number of views,
    and higher is more consistent. The renderer's light is fixed to the camera, so a surface point's
    shading changes with the view: ground-truth renders score ~15-18 dB at 32-64 px, not infinity.
    Colours are only compared on the hull: views of different objects in one colour, or swapped
    views of a one-coloured object, keep a high figure (the visual-hull IoU catches those).
    """
    _check_views(cameras, masks=masks, images=images)
    occupancy = carve_visual_hull(masks, cameras, grid_resolution, outside_is_background)
    surface = _surface(occupancy)
    num_surface = int(surface.sum())
    _, depth_maps = render_occupancy(occupancy, cameras)  # [V, H, W]
    if depth_tolerance is None:
        depth_tolerance = 2.0 * math.sqrt(3.0) * 2.0 / grid_resolution

    # 1. Visibility of every surface voxel in every view: in the image, not behind the hull's surface.
    points = voxel_centers(grid_resolution)[surface]  # [M, 3]
    uv, z = cameras.project(points.expand(len(cameras), -1, -1))  # [V, M, 2], [V, M]
    h, w = cameras.height, cameras.width
    surface_depth = _sample_images(depth_maps[:, None], uv, h, w)[..., 0]  # [V, M]
    visible = _inside(uv, z, h, w) & (surface_depth > 0) & (z <= surface_depth + depth_tolerance)

    # 2. Pooled colour variance of the voxels seen at least min_views times.
    colours = _sample_images((images.float() + 1.0) / 2.0, uv, h, w)  # [V, M, 3]
    scored = visible.sum(0) >= min_views  # [M]
    if int(scored.sum()) == 0:
        result = PhotoConsistencyOutput(0.0, float("nan"), 0, num_surface, 0.0)
        return result if return_details else result.psnr
    vis = visible[:, scored].float()[..., None]  # [V, M', 1]
    c = colours[:, scored]  # [V, M', 3]
    count = vis.sum(0)[:, 0]  # [M'] n(p)
    mean = (vis * c).sum(0) / count[:, None]  # [M', 3] mu(p)
    squares = (vis * (c - mean) ** 2).sum(0).mean(-1)  # [M'] sum_v mean_c (c - mu)^2
    mse = float(squares.sum() / (count - 1.0).sum())
    psnr = 10.0 * math.log10(1.0 / max(mse, MIN_MSE))
    if not return_details:
        return psnr
    std = (squares / (count - 1.0)).sqrt().mean()
    return PhotoConsistencyOutput(psnr, float(std), int(scored.sum()), num_surface, float(count.mean()))


# ---------------------------------------------------------------------------------------------
# reconstruction PSNR: a dense voxel field fit to the other views
# ---------------------------------------------------------------------------------------------
def composite(density: torch.Tensor, rgb: torch.Tensor, delta: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Volume rendering (NeRF quadrature) over a white background.

    ``alpha_s = 1 - exp(-sigma_s delta_s)``, ``T_s = prod_{r<s} (1 - alpha_r)``, ``w_s = T_s alpha_s``,
    ``C = sum_s w_s c_s + (1 - sum_s w_s) * 1``. Inputs ``density, delta [..., S]``, ``rgb [..., S, 3]``;
    returns ``colour [..., 3]`` and ``opacity [...] = sum_s w_s``.
    """
    alpha = 1.0 - torch.exp(-density * delta)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha[..., :-1] + 1e-10], -1), -1)
    weights = transmittance * alpha
    opacity = weights.sum(-1)
    colour = (weights[..., None] * rgb).sum(-2) + (1.0 - opacity[..., None])
    return colour, opacity


def _total_variation(grid: torch.Tensor) -> torch.Tensor:
    """Sum over the three axes of the mean squared difference of neighbouring voxels of ``grid [C, R, R, R]``."""
    return (
        (grid[:, 1:] - grid[:, :-1]).pow(2).mean()
        + (grid[:, :, 1:] - grid[:, :, :-1]).pow(2).mean()
        + (grid[:, :, :, 1:] - grid[:, :, :, :-1]).pow(2).mean()
    )


class VoxelField(torch.nn.Module):
    """A dense grid ``[4, R, R, R]`` (x, y, z) over ``[-1, 1]^3``: raw density and raw colour.

    ``sigma = density_scale * softplus(raw_sigma) * support``, ``rgb = sigmoid(raw_rgb)``, all read
    trilinearly at the sample points (activations after interpolation, as DVGO does). ``support``
    ``[R, R, R]`` (default all ones) is a fixed 0/1 grid outside which the field is empty, e.g. a
    visual hull. The initial raw density ``-5`` gives ``sigma ~ 0.07``: nearly empty space.
    """

    def __init__(
        self,
        resolution: int = 32,
        density_scale: float = 10.0,
        init_raw_density: float = -5.0,
        support: Optional[torch.Tensor] = None,
    ):
        super().__init__()
        self.density_scale = density_scale
        grid = torch.zeros(4, resolution, resolution, resolution)
        grid[0] = init_raw_density
        self.grid = torch.nn.Parameter(grid)
        support = torch.ones(resolution, resolution, resolution) if support is None else support.float()
        self.register_buffer("support", support[None])

    def forward(self, points: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``points [..., 3]`` -> ``sigma [...]``, ``rgb [..., 3]``."""
        raw = _sample_grid(torch.cat([self.grid, self.support]), points)  # [..., 5]
        sigma = self.density_scale * F.softplus(raw[..., 0]) * raw[..., 4]
        return sigma, torch.sigmoid(raw[..., 1:4])

    def render(
        self, origins: torch.Tensor, directions: torch.Tensor, samples_per_ray: int, jitter: Optional[torch.Generator] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Colour ``[..., 3]`` over white and opacity ``[...]`` of rays ``[..., 3]``."""
        points, _, delta, hit = _ray_samples(origins, directions, samples_per_ray, jitter=jitter)
        sigma, rgb = self(points)
        return composite(sigma * hit[..., None], rgb, delta)


@dataclass
class ReconstructionOutput:
    """Result of :func:`reconstruction_psnr` with ``return_details=True``.

    Args:
        psnr: mean over held-out views of ``per_view``.
        per_view: ``[len(held_out)]`` PSNR of each held-out view, in dB (held-out views sorted).
        train_psnr: mean PSNR of the field on the views it was fit to (how well it fit at all).
        renders: ``[len(held_out), 3, H, W]`` the field's renders of the held-out views, in ``[-1, 1]``.
    """

    psnr: float
    per_view: torch.Tensor
    train_psnr: float
    renders: torch.Tensor


def view_psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-view PSNR of ``[V, ...]`` tensors in ``[0, 1]``: ``-10 log10(mean (a - b)^2)``, at most
    ``MAX_PSNR``."""
    mse = (a - b).pow(2).flatten(1).mean(-1)
    return -10.0 * torch.log10(mse.clamp(min=MIN_MSE))


def reconstruction_psnr(
    images: torch.Tensor,
    masks: torch.Tensor,
    cameras: Cameras,
    held_out: Sequence[int],
    grid_resolution: int = 32,
    steps: int = 400,
    samples_per_ray: int = 32,
    rays_per_step: int = 1024,
    hull_prior: bool = True,
    lr: float = 0.1,
    mask_weight: float = 0.1,
    tv_weight: float = 1e-3,
    seed: int = 0,
    num_threads: Optional[int] = 1,
    return_details: bool = False,
) -> Union[float, ReconstructionOutput]:
    """Held-out-view PSNR of a voxel field fit to the other views (DESIGN.md §6; 3DiM's 3D consistency score).

    A :class:`VoxelField` of ``grid_resolution^3`` is fit with Adam (``lr``) for ``steps`` steps,
    each on ``rays_per_step`` random pixel rays spread over the training views (every view not in
    ``held_out``) with ``samples_per_ray`` stratified samples inside the cube, rendered over white
    (:func:`composite`)::

        loss = mean |C(r) - x(r)|^2 + mask_weight * mean |O(r) - mask(r)|^2 + tv_weight * TV(grid)

    with colours ``x = (images + 1) / 2`` and ``O`` the ray's opacity. With ``hull_prior`` the field
    is confined to the training masks' visual hull dilated by one voxel, which keeps it from
    explaining inconsistent views with floaters in front of the held-out cameras. The held-out views
    are then rendered (sample midpoints) and scored on the whole image,
    ``PSNR_v = -10 log10(mean (C_v - x_v)^2)``; the result is the mean over held-out views.

    DESIGN.md's figures (6 views fit, 2 held out): 21.7 / 24.4 / 29.0 dB for a chair / bunny /
    airplane, 14.2 / 14.5 / 21.6 dB with swapped views. Views of pure noise cannot score above
    ~10.8 dB (the field's best guess is their mean). Deterministic for a given ``seed``.

    Cost: ``steps * rays_per_step * samples_per_ray`` trilinear reads with their backward pass,
    independent of the image size (about 6 s of CPU for the defaults, plus one full render). The
    tensors of a step are small, where intra-op threads cost more than they bring on a busy 2-core
    machine, so the fit runs with ``num_threads`` (default 1; None keeps torch's setting).
    """
    _check_views(cameras, masks=masks, images=images)
    num_views = len(cameras)
    held = sorted({int(i) % num_views for i in held_out})
    train = [i for i in range(num_views) if i not in held]
    if not held or not train:
        raise ValueError(f"held_out={list(held_out)} must name some but not all of the {num_views} views")
    with torch_threads(num_threads):
        # 1. Targets: colours [V, HW, 3] in [0, 1], masks [V, HW], and every pixel's ray.
        target = ((images.float() + 1.0) / 2.0).flatten(2).transpose(1, 2)
        target_mask = _as_bool_masks(masks).float().flatten(1)
        origins, directions = cameras.rays()  # [V, HW, 3]
        train_idx, held_idx = torch.tensor(train), torch.tensor(held)
        num_train_rays = len(train) * cameras.height * cameras.width
        train_o, train_d = origins[train_idx].reshape(-1, 3), directions[train_idx].reshape(-1, 3)
        train_x, train_m = target[train_idx].reshape(-1, 3), target_mask[train_idx].reshape(-1)

        # 2. The field, confined to the training views' visual hull (dilated by one voxel).
        support = None
        if hull_prior:
            hull = carve_visual_hull(masks[train_idx], cameras[train_idx], grid_resolution).float()
            support = F.max_pool3d(hull[None, None], 3, stride=1, padding=1)[0, 0]
        field = VoxelField(grid_resolution, support=support)
        optimizer = torch.optim.Adam(field.parameters(), lr=lr)

        # 3. Fit on random training rays.
        generator = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            rays = torch.randint(0, num_train_rays, (rays_per_step,), generator=generator)
            colour, opacity = field.render(train_o[rays], train_d[rays], samples_per_ray, jitter=generator)
            loss = (colour - train_x[rays]).pow(2).mean() + mask_weight * (opacity - train_m[rays]).pow(2).mean()
            if tv_weight > 0:
                loss = loss + tv_weight * _total_variation(field.grid)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        # 4. Render every view; score the held-out ones.
        with torch.no_grad():
            colour, _ = field.render(origins, directions, samples_per_ray)  # [V, HW, 3]
            per_view_all = view_psnr(colour, target)
    per_view = per_view_all[held_idx]
    psnr = float(per_view.mean())
    if not return_details:
        return psnr
    renders = colour[held_idx].transpose(1, 2).reshape(len(held), 3, cameras.height, cameras.width) * 2.0 - 1.0
    return ReconstructionOutput(psnr, per_view, float(per_view_all[train_idx].mean()), renders)
