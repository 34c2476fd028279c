"""The metrics of one object (:mod:`.evaluate`): view consistency, mesh distance (Chamfer-L1, volume IoU)
and image fidelity (PSNR, SSIM).
"""

from typing import Dict, Tuple

import numpy as np
import torch

from ..cameras import Cameras
from ..data.shapes import inside_mesh
from .consistency import (
    foreground_masks,
    photo_consistency,
    reconstruction_psnr,
    view_psnr,
    visual_hull_iou,
    voxel_centers,
)
from .settings import EvaluationConfig

# ---------------------------------------------------------------------------------------------
# Metrics: one object's views, meshes, images
# ---------------------------------------------------------------------------------------------
def score_views(images: torch.Tensor, cameras: Cameras, cfg: EvaluationConfig) -> Dict[str, float]:
    """Consistency of one object's views ``[V, 3, H, W]`` in ``[0, 1]``: VH-IoU, coverage, photo dB, recon dB."""
    signed = images.float() * 2.0 - 1.0
    masks = foreground_masks(signed, cfg.mask_threshold, cfg.mask_background)
    hull = visual_hull_iou(masks, cameras, cfg.hull_resolution, return_details=True)
    photo = photo_consistency(signed, masks, cameras, cfg.hull_resolution)
    recon = reconstruction_psnr(signed, masks, cameras, cfg.held_out, grid_resolution=cfg.recon_resolution,
                                steps=cfg.recon_steps)
    return {"vh_iou": hull.iou, "coverage": float(hull.coverage.mean()), "photo_psnr": photo, "recon_psnr": recon}


def _as_trimesh_points(mesh, count: int, seed: int) -> np.ndarray:
    import trimesh

    if mesh is None or len(mesh.faces) == 0 or mesh.area <= 0:
        raise ValueError("the mesh has no surface to sample")
    points, _ = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points)


def chamfer_l1(mesh_a, mesh_b, num_points: int = 10000, seed: int = 0) -> float:
    """Chamfer-L1 distance of two meshes (Occupancy Networks' definition), world units.

    With ``A``, ``B`` ``num_points`` points sampled uniformly on each surface (the same ``seed``)::

        CD = (mean_{a in A} min_{b in B} |a - b| + mean_{b in B} min_{a in A} |b - a|) / 2

    Euclidean distances, not squared; 0 for the same mesh (the same samples). Raises ``ValueError``
    for a mesh without surface.
    """
    from scipy.spatial import cKDTree

    a, b = _as_trimesh_points(mesh_a, num_points, seed), _as_trimesh_points(mesh_b, num_points, seed)
    a_to_b, _ = cKDTree(b).query(a)
    b_to_a, _ = cKDTree(a).query(b)
    return float(0.5 * (a_to_b.mean() + b_to_a.mean()))


def voxelize_mesh(mesh, resolution: int = 32) -> np.ndarray:
    """Occupancy ``[R, R, R]`` bool (indexed x, y, z) of the voxel centres of ``[-1, 1]^3`` inside ``mesh``
    (:func:`inside_mesh`). The centres follow :func:`~.consistency.voxel_centers`."""
    centers = voxel_centers(resolution).reshape(-1, 3).numpy()
    return inside_mesh(mesh, centers).reshape(resolution, resolution, resolution)


def volume_iou(mesh_a, mesh_b, resolution: int = 32) -> float:
    """``|A & B| / |A | B|`` of the two meshes' occupancies at ``resolution^3`` (:func:`voxelize_mesh`); 1 when both are empty."""
    a, b = voxelize_mesh(mesh_a, resolution), voxelize_mesh(mesh_b, resolution)
    union = int((a | b).sum())
    return 1.0 if union == 0 else float((a & b).sum() / union)


def mesh_scores(mesh, target_mesh, chamfer_points: int = 10000, iou_resolution: int = 32) -> Tuple[float, float]:
    """``(Chamfer-L1, volume IoU)`` of ``mesh`` against ``target_mesh``; ``(nan, 0)`` for no mesh (``None``)
    and a nan Chamfer for an empty one."""
    if mesh is None:
        return float("nan"), 0.0
    try:
        chamfer = chamfer_l1(mesh, target_mesh, chamfer_points)
    except ValueError:  # an empty mesh
        chamfer = float("nan")
    return chamfer, volume_iou(mesh, target_mesh, iou_resolution)


def image_psnr_ssim(prediction: torch.Tensor, target: torch.Tensor) -> Tuple[float, float]:
    """Mean over views of PSNR (:func:`.consistency.view_psnr`: at most ``MAX_PSNR``, as identical views
    of a symmetric object score) and SSIM (skimage, data range 1) of ``[V, 3, H, W]`` images in ``[0, 1]``."""
    from skimage.metrics import structural_similarity

    prediction = prediction.double().clamp(0, 1)
    target = target.double()
    side = min(target.shape[-2:])
    window = min(7, side if side % 2 else side - 1)
    ssims = [structural_similarity(t, p, data_range=1.0, channel_axis=-1, win_size=window)
             for p, t in zip(prediction.permute(0, 2, 3, 1).numpy(), target.permute(0, 2, 3, 1).numpy())]
    return float(view_psnr(prediction, target).mean()), float(np.mean(ssims))
