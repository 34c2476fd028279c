"""The trained part of TuneMV3D: its settings, a fresh branch, and one training step's forward.

- :class:`NeuSSettings`: the ``neus_*`` settings of a :class:`LatentSparseNeuS` (one spelling, used by
  ``train`` and ``train-reconstructor``), :class:`NeuSSupervisionSettings` what supervises its renders
  in both; :class:`BranchSettings` adds the multi-view ControlNet's
  (geometry-aware attention, condition embedding) and the NeuS render size. A fresh pipeline
  (:func:`diffusers_mv3d.assembly.fresh_branch`) and ``diffusers-mv3d train`` start from the same
  :func:`build_branch_from_unet` with the same settings.
- :class:`TuneMV3DBranch`: ``controlnet`` + ``neus`` as one module (what DDP wraps): NeuS encode once,
  full render of the inputs, ray subset of the supervision views, branch residuals.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from .config import flag_name
from .settings import SettingChecks

__all__ = ["BranchSettings", "NeuSSettings", "NeuSSupervisionSettings", "TuneMV3DBranch", "build_branch_from_unet", "build_neus"]


@dataclass
class NeuSSettings(SettingChecks):
    """The shape and cost of a :class:`LatentSparseNeuS` (its config is saved with the weights)."""

    neus_num_coarse_samples: int = 16
    """Stratified samples a ray."""
    neus_num_importance_samples: int = 8
    """Importance samples a ray (from the coarse weights)."""
    neus_feature_channels: int = 16
    """Channels of the encoded view features."""
    neus_encoder_channels: int = 32
    """Width of the NeuS view encoder."""
    neus_encoder_downsample: int = 2
    """Stride of the NeuS view encoder (features at resolution / stride)."""
    neus_hidden_dim: int = 64
    """Width of the SDF and feature (colour) MLPs."""
    neus_num_sdf_layers: int = 3
    """Depth of the SDF MLP."""
    neus_num_color_layers: int = 2
    """Depth of the feature (colour) MLP."""
    neus_num_frequencies: int = 4
    """Positional-encoding frequencies of the 3D points."""
    neus_chunk_size: int = 16384
    """Rays rendered at once (bounds peak memory, not the result)."""
    neus_occlusion_aware: bool = False
    """Leave a view out of a 3D point's feature average when its first surface lies in front of the point (costs one more render of the input views at the feature resolution)."""
    neus_occlusion_margin: float = 0.1
    """How far (world units) behind a view's first surface a point still counts as seen by it (neus_occlusion_aware)."""
    neus_view_weight_timescale: float = 0.0
    """Weight each view in the NeuS feature average by exp(-t / this) of its timestep, so clean reference views are not drowned by noisy ones; 0 = equal weights."""

    at_least = {"neus_num_coarse_samples": 2, "neus_num_importance_samples": 0, "neus_feature_channels": 1,
                "neus_encoder_channels": 1, "neus_encoder_downsample": 1, "neus_hidden_dim": 1, "neus_num_sdf_layers": 1,
                "neus_num_color_layers": 1, "neus_num_frequencies": 0, "neus_chunk_size": 1}

    def check_settings(self) -> None:
        self.check(self.neus_occlusion_margin > 0, "neus_occlusion_margin", "must be > 0")
        self.check(self.neus_view_weight_timescale >= 0, "neus_view_weight_timescale", "must be >= 0")

    def neus_arguments(self) -> Dict[str, object]:
        """The :class:`LatentSparseNeuS` arguments these settings fix."""
        return {name[len("neus_"):]: getattr(self, name) for name in NEUS_SETTINGS}


NEUS_SETTINGS = tuple(f"neus_{name}" for name in (
    "feature_channels", "encoder_channels", "encoder_downsample", "hidden_dim", "num_sdf_layers", "num_color_layers",
    "num_frequencies", "num_coarse_samples", "num_importance_samples", "chunk_size", "occlusion_aware",
    "occlusion_margin", "view_weight_timescale"))
"""The :class:`NeuSSettings` fields, as ``neus_`` + the :class:`LatentSparseNeuS` argument."""


@dataclass
class NeuSSupervisionSettings(SettingChecks):
    """What supervises NeuS renders beyond the input views' colours (``train`` and ``train-reconstructor``)."""

    num_supervision_views: int = 8
    """Further views an object that only supervise the NeuS renders (novel views, rendered at a subset of rays)."""
    mask_loss_weight: float = 0.1
    """Weight of the BCE between the rendered opacity and the object masks."""

    at_least = {"num_supervision_views": 0, "mask_loss_weight": 0}


@dataclass
class BranchSettings(NeuSSettings):
    """A fresh branch: the multi-view ControlNet's settings, the NeuS render size and :class:`NeuSSettings`."""

    neus_render_resolution: int = 16
    """Side of the full NeuS render of the input views that conditions the branch; 0 = the diffusion-space resolution. Cost grows with its square."""
    geometry_attention_levels: Tuple[int, ...] = (0,)
    """UNet down blocks after which geometry-aware attention runs (block 0's output is at resolution / 2)."""
    geometry_attention_heads: int = 1
    """Heads of each geometry-aware attention layer."""
    geometry_attention_neighbourhood: int = 3
    """Side n of the n x n pixel frustum a query attends through (odd)."""
    geometry_attention_samples: int = 1
    """NeuS samples of largest weight kept a ray for the geometry-aware attention."""
    conditioning_channels: Tuple[int, ...] = (16,)
    """Channels of the branch's condition embedding (one stage keeps the render's resolution)."""

    at_least = {"neus_render_resolution": 0, "geometry_attention_heads": 1, "geometry_attention_samples": 1}

    def check_settings(self) -> None:
        self.check(all(level >= 0 for level in self.geometry_attention_levels), "geometry_attention_levels",
              "must be down-block indices >= 0")
        self.check(self.geometry_attention_neighbourhood >= 1 and self.geometry_attention_neighbourhood % 2 == 1,
              "geometry_attention_neighbourhood", "must be odd and >= 1")
        self.check(len(self.conditioning_channels) >= 1 and all(c > 0 for c in self.conditioning_channels),
              "conditioning_channels", "must be positive channel counts")


def build_neus(cfg: NeuSSettings, in_channels: int, background: float, render_resolution: Optional[int],
               **arguments):
    """A fresh :class:`LatentSparseNeuS` of ``cfg``'s ``neus_*`` settings in a space of ``in_channels``
    (``background`` 1.0 = white pixels, 0.0 for latents); ``arguments`` go to the model too. Uses
    the global RNG as it is."""
    from ..models.latent_sparse_neus import LatentSparseNeuS

    return LatentSparseNeuS(in_channels=in_channels, render_resolution=render_resolution, background=background,
                            **cfg.neus_arguments(), **arguments)


def build_branch_from_unet(unet, in_channels: int, latent: bool, cfg: BranchSettings, seed: int = 0):
    """Fresh ``controlnet`` (``MultiViewControlNetModel.from_unet(unet)``) and ``neus`` (in the
    diffusion space: background 0.0 for latents, white pixels), seeded by ``seed`` (the trainer's
    ``--seed``, whose default is 0; ``torch.manual_seed``: the global RNG)."""
    from ..models.multiview_controlnet import MultiViewControlNetModel

    levels = len(unet.config.block_out_channels)
    bad = [level for level in cfg.geometry_attention_levels if level >= levels]
    if bad:
        raise ValueError(f"{flag_name('geometry_attention_levels')} {cfg.geometry_attention_levels} must index the "
                         f"UNet's {levels} down blocks (0..{levels - 1})")
    torch.manual_seed(seed)
    controlnet = MultiViewControlNetModel.from_unet(
        unet,
        conditioning_embedding_out_channels=cfg.conditioning_channels,
        geometry_attention_levels=cfg.geometry_attention_levels,
        geometry_attention_heads=cfg.geometry_attention_heads,
        geometry_attention_neighbourhood=cfg.geometry_attention_neighbourhood,
        geometry_attention_samples=cfg.geometry_attention_samples,
    )
    neus = build_neus(cfg, in_channels, 0.0 if latent else 1.0, cfg.neus_render_resolution or None)
    return controlnet, neus


def _index_objects(cameras, index: torch.Tensor):
    """Cameras ``[B, V]`` -> ``[len(index), V]``."""
    from ..cameras import Cameras

    return Cameras(cameras.world_to_camera[index], cameras.intrinsics[index], cameras.height, cameras.width)


class TuneMV3DBranch(torch.nn.Module):
    """``controlnet`` + ``neus`` as one module: one DDP wrapper synchronises both, and its forward is
    the trained part of a step (NeuS encode once, full render of the inputs, ray subset of the
    supervision views, branch residuals with or without the NeuS condition per object)."""

    def __init__(self, controlnet, neus):
        super().__init__()
        self.controlnet = controlnet
        self.neus = neus

    def render_size(self, height: int, width: int) -> Tuple[int, int]:
        size = self.neus.config.render_resolution or height
        return size, size * width // height

    def forward(self, noisy_views, timesteps, text, cameras, keep_neus, supervision_cameras=None, pixel_indices=None):
        """
        Args:
            noisy_views: ``[B, V, C, h, w]`` x_t of the input views (diffusion space).
            timesteps: ``[B]`` one t an object, or ``[B, V]`` one a view (a clean reference view at 0, §3.4).
            text: ``[B, L, D]`` text embeddings.
            cameras: input cameras, batch shape ``[B, V]``, at ``h x w``.
            keep_neus: ``[B]`` bool; False runs that object's branch without the NeuS (§3.3).
            supervision_cameras: ``[B, Vs]`` cameras at ``h x w`` or None.
            pixel_indices: ``[N]`` row-major pixels rendered in every supervision view.

        Returns:
            a dict: ``down`` (tuple of ``[(B V), ...]``), ``mid``, ``x0`` ``[B, V, C, r, r]`` and
            ``opacity`` ``[B, V, r, r]`` (full render), ``novel`` ``[B, Vs, N, C]`` and
            ``novel_opacity`` ``[B, Vs, N]`` (ray subset; absent without supervision views).
        """
        batch, views = noisy_views.shape[:2]
        # 1. NeuS: encode the noisy views once (eq. 1); full render of the input cameras (eq. 2-3)
        context = self.neus.encode(noisy_views, timesteps, cameras)
        rh, rw = self.render_size(*noisy_views.shape[-2:])
        full = self.neus.render(context, context.cameras.rescale(rh, rw))
        x0 = full.colors.reshape(batch, views, rh, rw, -1).permute(0, 1, 4, 2, 3)  # B V C rh rw
        out = {"x0": x0, "opacity": full.opacity.reshape(batch, views, rh, rw)}
        # 2. novel-view supervision: a ray subset of the other cameras from the same context
        if supervision_cameras is not None and pixel_indices is not None and supervision_cameras.batch_shape[-1] > 0:
            novel = self.neus.render(context, supervision_cameras, pixel_indices)
            out["novel"], out["novel_opacity"] = novel.colors, novel.opacity
        # 3. branch residuals: with the NeuS condition, or without it for the dropped objects
        keep = keep_neus.nonzero().flatten()
        drop = (~keep_neus).nonzero().flatten()
        parts = []
        if len(keep):
            parts.append((keep, self.controlnet(
                noisy_views[keep], timesteps[keep], text[keep], _index_objects(cameras, keep), x0[keep],
                full.sample_points[keep], full.sample_weights[keep], return_dict=False)))
        if len(drop):
            parts.append((drop, self.controlnet(noisy_views[drop], timesteps[drop], text[drop], return_dict=False)))
        if len(parts) == 1:
            out["down"], out["mid"] = parts[0][1]
        else:
            inverse = torch.argsort(torch.cat([index for index, _ in parts]))

            def merge(tensors):  # per part [(b_k V), ...] -> [(B V), ...] in object order
                stacked = torch.cat([t.reshape(-1, views, *t.shape[1:]) for t in tensors])[inverse]
                return stacked.flatten(0, 1)

            (_, (down_a, mid_a)), (_, (down_b, mid_b)) = parts
            out["down"] = tuple(merge([a, b]) for a, b in zip(down_a, down_b))
            out["mid"] = merge([mid_a, mid_b])
        return out
