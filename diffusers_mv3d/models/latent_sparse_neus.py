"""LatentSparseNeuS: the centralized geometric condition of TuneMV3D (paper §3.1.1, eq. 1-3).

For ``V`` noisy views of an object (in pixel or latent space) at timestep ``t``:

1. an encoder ``E`` maps each noisy view to a low-resolution feature map ``f_i^t`` (eq. 1);
2. along every ray of every query camera, 3D samples are projected into all ``V`` views and the
   bilinearly interpolated features are averaged (eq. 2; like SparseNeuS we append their variance);
3. an SDF MLP and a feature MLP, both conditioned on ``t``, give the signed distance ``s`` and the
   low-dimensional field ``c``; NeuS turns ``s`` into opacity and volume rendering (eq. 3, with
   coarse + importance samples) renders a prediction of the *clean* view ``x_i^0`` in the same space.

The renders, depths, opacities and the per-ray sample points with their weights feed the
multi-view ControlNet (§3.2) and its geometry-aware attention (§3.1.2). The same class, trained on
clean views, is the feed-forward reconstructor of §3.5 (its SDF on a grid, :meth:`LatentSparseNeuS.sdf_grid`,
is meshed by :func:`diffusers_mv3d.mesh.mesh_from_neus`).
"""

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from ..cameras import Cameras
from .views import fold_views, per_view_timesteps, unfold_views


# ---------------------------------------------------------------------------- NeuS maths
def ray_sphere_bounds(origins: torch.Tensor, directions: torch.Tensor, radius: float) -> Tuple[torch.Tensor, ...]:
    """Near / far distances of unit rays through a sphere at the origin, and which rays hit it.

    Solves ``|o + s d|^2 = r^2``: ``s = -o.d -+ sqrt((o.d)^2 - |o|^2 + r^2)``.
    """
    b = (origins * directions).sum(-1)
    disc = b**2 - (origins**2).sum(-1) + radius**2
    hit = disc > 0
    root = disc.clamp(min=0).sqrt()
    near = (-b - root).clamp(min=1e-3)
    far = (-b + root).clamp(min=1e-3)
    far = torch.where(hit, far, near + 1e-3)
    return near, far, hit


def uniform_noise(shape: Sequence[int], like: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """U[0, 1) of ``shape`` on ``like``'s device and dtype, drawn from ``generator`` (on its own
    device, then moved) or from the global RNG when None."""
    if generator is None:
        return torch.rand(*shape, device=like.device, dtype=like.dtype)
    return torch.rand(*shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def stratified_samples(near: torch.Tensor, far: torch.Tensor, num_samples: int, jitter: bool,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``num_samples`` distances per ray between near and far ``[..., S]``; midpoints of equal bins
    unless ``jitter`` (training), then one uniform sample per bin (drawn from ``generator``)."""
    u = (torch.arange(num_samples, device=near.device, dtype=near.dtype) + 0.5) / num_samples
    if jitter:
        u = u + (uniform_noise((*near.shape, num_samples), near, generator) - 0.5) / num_samples
    return near[..., None] + (far - near)[..., None] * u


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, num_samples: int, jitter: bool,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Importance samples by inverse transform of the piecewise-constant pdf ``weights [..., S-1]``
    over the intervals of ``bins [..., S]`` (NeRF / NeuS hierarchical sampling); random (from
    ``generator``) with ``jitter``, evenly spaced quantiles otherwise."""
    pdf = (weights + 1e-5) / (weights + 1e-5).sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), pdf.cumsum(-1)], dim=-1)  # [..., S]
    if jitter:
        u = uniform_noise((*cdf.shape[:-1], num_samples), cdf, generator)
    else:
        u = ((torch.arange(num_samples, device=cdf.device, dtype=cdf.dtype) + 0.5) / num_samples).expand(
            *cdf.shape[:-1], num_samples
        )
    index = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True).clamp(1, cdf.shape[-1] - 1)
    cdf_lo, cdf_hi = cdf.gather(-1, index - 1), cdf.gather(-1, index)
    bin_lo, bin_hi = bins.gather(-1, index - 1), bins.gather(-1, index)
    fraction = (u - cdf_lo) / (cdf_hi - cdf_lo).clamp(min=1e-8)
    return bin_lo + fraction * (bin_hi - bin_lo)


def sdf_to_alpha(sdf: torch.Tensor, inv_s: torch.Tensor) -> torch.Tensor:
    """NeuS discrete opacity of each section between consecutive samples ``[..., S] -> [..., S-1]``:
    ``alpha_i = max((Phi(s_i) - Phi(s_{i+1})) / Phi(s_i), 0)`` with ``Phi = sigmoid(inv_s * sdf)``."""
    cdf = torch.sigmoid(sdf * inv_s)
    return ((cdf[..., :-1] - cdf[..., 1:]) / (cdf[..., :-1] + 1e-5)).clamp(0.0, 1.0)


def alpha_to_weights(alpha: torch.Tensor) -> torch.Tensor:
    """Volume-rendering weights ``w_i = alpha_i * prod_{j<i} (1 - alpha_j)`` (eq. 3, discretised)."""
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha + 1e-7], -1), -1)
    return alpha * transmittance[..., :-1]


def positional_encoding(x: torch.Tensor, num_frequencies: int) -> torch.Tensor:
    """``[x, sin(2^k pi x), cos(2^k pi x)]`` for k < num_frequencies (NeRF)."""
    freqs = (2.0 ** torch.arange(num_frequencies, device=x.device, dtype=x.dtype)) * np.pi
    angles = x[..., None, :] * freqs[:, None]  # [..., K, 3]
    return torch.cat([x, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)


def visibility(surface_depth: torch.Tensor, point_depth: torch.Tensor, margin: float) -> torch.Tensor:
    """Soft test that a view sees a point: ``sigmoid((d_surface + m - d_point) / (m / 4))``, where
    ``d_surface`` is the depth of the first surface along the point's pixel and ``m`` the margin:
    ~0.98 on the surface and in front of it, 1/2 at ``m`` behind it, ~0.02 at ``2 m`` behind."""
    return torch.sigmoid((surface_depth + margin - point_depth) * (4.0 / margin))


# ---------------------------------------------------------------------------- modules
class ViewEncoder(nn.Module):
    """The image encoder E of eq. 1: a noisy view and its timestep -> a feature map."""

    def __init__(self, in_channels: int, width: int, out_channels: int, downsample: int, temb_dim: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, width)
        self.conv_mid = nn.Conv2d(width, width, 3, stride=downsample, padding=1)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, views: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        # views [N, C, H, W], temb [N, T] -> [N, F, H / downsample, W / downsample]
        h = F.silu(self.conv_in(views) + self.temb_proj(temb)[:, :, None, None])
        h = F.silu(self.conv_mid(h))
        return self.conv_out(h)


class NeuSField(nn.Module):
    """SDF MLP and feature MLP of §3.1.1, conditioned on the aggregated view features and on t.

    The SDF starts near a sphere of radius ``init_radius`` (``|x| - r`` plus a small learned term),
    which keeps early NeuS training away from empty or full space.
    """

    def __init__(self, feature_dim: int, out_channels: int, hidden_dim: int, num_sdf_layers: int,
                 num_color_layers: int, num_frequencies: int, temb_dim: int, init_radius: float):
        super().__init__()
        self.num_frequencies = num_frequencies
        self.init_radius = init_radius
        in_dim = 3 + 6 * num_frequencies + feature_dim + temb_dim
        layers = []
        for i in range(num_sdf_layers):
            layers += [nn.Linear(in_dim if i == 0 else hidden_dim, hidden_dim), nn.Softplus(beta=100)]
        self.sdf_trunk = nn.Sequential(*layers)
        self.sdf_head = nn.Linear(hidden_dim, 1)
        nn.init.normal_(self.sdf_head.weight, std=1e-4)
        nn.init.zeros_(self.sdf_head.bias)
        color_layers = []
        color_in = hidden_dim + feature_dim + 3 + temb_dim
        for i in range(num_color_layers):
            color_layers += [nn.Linear(color_in if i == 0 else hidden_dim, hidden_dim), nn.SiLU()]
        color_layers.append(nn.Linear(hidden_dim, out_channels))
        self.color_mlp = nn.Sequential(*color_layers)

    def forward(self, points, features, directions, temb) -> Tuple[torch.Tensor, torch.Tensor]:
        """``points [..., 3]``, ``features [..., Fa]`` -> ``sdf [...]``, ``color [..., C]``.

        ``directions [..., 3]`` and ``temb [..., T]`` broadcast against the points' leading dims (one
        direction a ray, one embedding an object): their share of the first layers is computed once
        and added, rather than copied to every sample.
        """
        first_sdf = self.sdf_trunk[0]
        per_point = torch.cat([positional_encoding(points, self.num_frequencies), features], -1)
        hidden = _linear_in_parts(first_sdf, [per_point], [temb])
        geometry = self.sdf_trunk[1:](hidden)
        sdf = points.norm(dim=-1) - self.init_radius + self.sdf_head(geometry).squeeze(-1)
        first_color = self.color_mlp[0]
        hidden = _linear_in_parts(first_color, [geometry, features], [directions, temb])
        color = self.color_mlp[1:](hidden)
        return sdf, color


def _linear_in_parts(layer: nn.Linear, per_point: Sequence[torch.Tensor], shared: Sequence[torch.Tensor]) -> torch.Tensor:
    """``layer(cat(per_point + shared, -1))`` without broadcasting ``shared`` (tensors with size-1 leading
    dims, e.g. one direction a ray) to every point: the weight's columns are split by input, the
    per-point inputs go through one matmul, the shared ones through their own small ones."""
    parts = list(per_point) + list(shared)
    weights = layer.weight.split([part.shape[-1] for part in parts], dim=1)
    points_in = torch.cat(list(per_point), -1) if len(per_point) > 1 else per_point[0]
    out = F.linear(points_in, torch.cat(weights[: len(per_point)], 1), layer.bias)
    # contiguous copies: a column slice of a loaded weight (safetensors' are not 64-byte aligned) would make
    # the result depend on where the weight sits in memory, and a save/load round trip drift
    for part, weight in zip(shared, weights[len(per_point):]):
        out = out + F.linear(part, weight.contiguous())
    return out


@dataclass
class NeuSContext:
    """What :meth:`LatentSparseNeuS.encode` extracts from the input views, reused by every render.

    Attributes:
        features: ``[B, V, F, h, w]`` encoded views f_i (eq. 1).
        cameras: the input cameras, batch shape ``[B, V]``.
        temb: ``[B, T]`` the object's timestep embedding (mean over its views).
        surface_depth: ``[B, V, h, w]`` camera depth of the first surface each feature pixel sees,
            from a first render of the input views (``occlusion_aware`` models; None otherwise).
        view_weights: ``[B, V]`` each view's weight in the feature average,
            ``exp(-(t_i - t_min) / timescale)`` (``view_weight_timescale`` > 0; None: equal weights).
    """

    features: torch.Tensor
    cameras: Cameras
    temb: torch.Tensor
    surface_depth: Optional[torch.Tensor] = None
    view_weights: Optional[torch.Tensor] = None


@dataclass
class RayRenderOutput(BaseOutput):
    """Per-ray NeuS render (``N`` rays per query view, ``S`` samples per ray).

    Attributes:
        colors: ``[B, Vq, N, C]`` rendered clean-view prediction x0.
        depth: ``[B, Vq, N]`` expected camera depth (z).
        opacity: ``[B, Vq, N]`` accumulated weight.
        sample_points: ``[B, Vq, N, S, 3]`` world positions of the samples, sorted along each ray.
        sample_weights: ``[B, Vq, N, S]`` their rendering weights.
    """

    colors: torch.Tensor
    depth: torch.Tensor
    opacity: torch.Tensor
    sample_points: torch.Tensor
    sample_weights: torch.Tensor


@dataclass
class LatentSparseNeuSOutput(BaseOutput):
    """Full-image NeuS render of every query view.

    Attributes:
        x0: ``[B, Vq, C, H, W]`` rendered prediction of the clean views, in the diffusion space.
        depth: ``[B, Vq, H, W]`` expected camera depth.
        opacity: ``[B, Vq, H, W]``.
        sample_points: ``[B, Vq, H * W, S, 3]`` row-major rays, sorted samples.
        sample_weights: ``[B, Vq, H * W, S]``.
        cameras: the query cameras at the render resolution, batch shape ``[B, Vq]``.
    """

    x0: torch.Tensor
    depth: torch.Tensor
    opacity: torch.Tensor
    sample_points: torch.Tensor
    sample_weights: torch.Tensor
    cameras: Cameras


class LatentSparseNeuS(ModelMixin, ConfigMixin):
    r"""Latent SparseNeuS (§3.1.1): aggregates noisy views into a 3D-consistent render of x0.

    Args:
        in_channels (`int`, defaults to 3): channels of the diffusion space (3 pixels, 4 SD latents).
        feature_channels (`int`, defaults to 16): channels F of the encoded view features f_i.
        encoder_channels (`int`, defaults to 32): width of the view encoder E.
        encoder_downsample (`int`, defaults to 2): stride of E; features live at H / stride.
        timestep_embedding_dim (`int`, defaults to 32): size of the timestep embedding.
        hidden_dim (`int`, defaults to 64): width of the SDF and feature MLPs.
        num_sdf_layers (`int`, defaults to 3), num_color_layers (`int`, defaults to 2): MLP depths.
        num_frequencies (`int`, defaults to 4): positional-encoding frequencies of the 3D points.
        num_coarse_samples (`int`, defaults to 24): stratified samples per ray.
        num_importance_samples (`int`, defaults to 16): extra samples per ray from the coarse weights.
        render_resolution (`int`, *optional*): side of the rendered views when no query cameras are
            given; defaults to the input views' size. Cost grows with its square.
        bound_radius (`float`, defaults to 1.0): rays are sampled inside this sphere at the origin.
        init_variance (`float`, defaults to 0.3): NeuS deviation; ``inv_s = exp(10 * variance)``.
        init_radius (`float`, defaults to 0.5): radius of the initial SDF sphere.
        background (`float`, defaults to 1.0): initial value of the learned background (1 = white pixels).
        chunk_size (`int`, defaults to 16384): rays rendered at once; bounds peak memory.
        occlusion_aware (`bool`, defaults to False): weight each view's features at a point by whether
            the view sees it (:meth:`aggregate`); costs one extra render of the input views at the
            feature resolution in :meth:`encode`.
        occlusion_margin (`float`, defaults to 0.1): how far (world units) behind a view's first surface
            a point still counts as seen; the visibility falls to 1/2 at this depth.
        view_weight_timescale (`float`, defaults to 0.0): weight each view in the feature average by
            ``exp(-t_i / timescale)`` of its timestep, so that clean reference views (t = 0) are not
            drowned by views that are still noise; 0 weighs all views equally (eq. 2).
        mesh_level (`float`, defaults to 0.0): the SDF value :func:`~diffusers_mv3d.mesh.mesh_from_neus`
            meshes unless told otherwise. 0 is the surface the NeuS renders; a reconstructor trained
            with the occupancy term (``train-reconstructor --occupancy-weight``) keeps its zero level a
            little inside the thin parts it is unsure of, and its meshes follow the objects best a
            little above it (docs/training.md).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        feature_channels: int = 16,
        encoder_channels: int = 32,
        encoder_downsample: int = 2,
        timestep_embedding_dim: int = 32,
        hidden_dim: int = 64,
        num_sdf_layers: int = 3,
        num_color_layers: int = 2,
        num_frequencies: int = 4,
        num_coarse_samples: int = 24,
        num_importance_samples: int = 16,
        render_resolution: Optional[int] = None,
        bound_radius: float = 1.0,
        init_variance: float = 0.3,
        init_radius: float = 0.5,
        background: float = 1.0,
        chunk_size: int = 16384,
        occlusion_aware: bool = False,
        occlusion_margin: float = 0.1,
        view_weight_timescale: float = 0.0,
        mesh_level: float = 0.0,
    ):
        super().__init__()
        if num_coarse_samples < 2:
            raise ValueError(f"num_coarse_samples must be >= 2, got {num_coarse_samples}")
        if encoder_downsample < 1:
            raise ValueError(f"encoder_downsample must be >= 1, got {encoder_downsample}")
        if occlusion_margin <= 0:
            raise ValueError(f"occlusion_margin must be > 0, got {occlusion_margin}")
        if view_weight_timescale < 0:
            raise ValueError(f"view_weight_timescale must be >= 0, got {view_weight_timescale}")
        self.time_proj = Timesteps(timestep_embedding_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(timestep_embedding_dim, timestep_embedding_dim)
        self.encoder = ViewEncoder(in_channels, encoder_channels, feature_channels, encoder_downsample, timestep_embedding_dim)
        self.field = NeuSField(2 * feature_channels, in_channels, hidden_dim, num_sdf_layers, num_color_layers,
                               num_frequencies, timestep_embedding_dim, init_radius)
        self.variance = nn.Parameter(torch.tensor(float(init_variance)))
        self.background_color = nn.Parameter(torch.full((in_channels,), float(background)))

    @property
    def inv_s(self) -> torch.Tensor:
        """NeuS sharpness ``s = exp(10 * variance)`` of the logistic density (capped to stay finite in fp16)."""
        return torch.exp(10.0 * self.variance).clamp(1e-4, 6e4)

    # ------------------------------------------------------------------ eq. 1
    def encode(self, views: torch.Tensor, timestep: Union[int, torch.Tensor], cameras: Cameras) -> NeuSContext:
        """Encode ``views [B, V, C, H, W]`` at per-view ``timestep`` (scalar, [B] or [B, V])."""
        if views.dim() != 5 or views.shape[2] != self.config.in_channels:
            raise ValueError(
                f"views must be [B, V, {self.config.in_channels}, H, W], got {tuple(views.shape)}"
            )
        batch, num_views = views.shape[:2]
        cameras = _cameras_for_batch(cameras, batch, num_views)
        if (cameras.height, cameras.width) != tuple(views.shape[-2:]):
            raise ValueError(f"cameras are {cameras.height}x{cameras.width} but views are {tuple(views.shape[-2:])}")
        t = per_view_timesteps(timestep, batch, num_views).to(views.device)
        temb = self.time_embedding(self.time_proj(t.flatten()).to(views.dtype))  # [(B V), T]
        features = unfold_views(self.encoder(fold_views(views), temb), num_views)
        context = NeuSContext(features, cameras, unfold_views(temb, num_views).mean(1))
        if self.config.view_weight_timescale > 0:
            # relative to the cleanest view of the object: only ratios matter, and none underflows
            relative = t - t.min(1, keepdim=True).values
            context.view_weights = torch.exp(-relative.to(features.dtype) / self.config.view_weight_timescale)
        if self.config.occlusion_aware:
            context.surface_depth = self.surface_depth(context)
        return context

    @torch.no_grad()
    def surface_depth(self, context: NeuSContext) -> torch.Tensor:
        """Camera depth ``[B, V, h, w]`` of the first surface seen by each feature pixel of each input
        view: the NeuS render of the input cameras at the feature resolution, aggregated without
        occlusion. Pixels that see no surface (opacity below 1/2) get a depth beyond any point."""
        height, width = context.features.shape[-2:]
        rays = self.render(context, context.cameras.rescale(height, width))
        hit_depth = rays.depth / rays.opacity.clamp(min=1e-4)
        far = torch.full_like(hit_depth, 1e4)
        depth = torch.where(rays.opacity > 0.5, hit_depth, far)
        return depth.reshape(*depth.shape[:2], height, width)

    # ------------------------------------------------------------------ eq. 2
    def aggregate(self, points: torch.Tensor, context: NeuSContext) -> torch.Tensor:
        """Mean and variance over views of the features at the projections of ``points [B, P, 3]``.

        Returns ``[B, P, 2F]``; views that do not see a point (behind it or outside the image) are left
        out of its mean (eq. 2 averages over the views that can be interpolated). With
        ``context.view_weights``, the mean and variance are weighted by view. With
        ``context.surface_depth`` (``occlusion_aware``), a view whose first surface lies in front of the
        point is left out too, softly (:func:`visibility`): the features at that pixel describe the
        occluder, not the point. A point no view sees (inside the object) keeps the plain mean.
        """
        num_views = context.features.shape[1]
        uv, depth = context.cameras.project(points[:, None])  # [B, V, P, 2], [B, V, P]
        size = torch.tensor([context.cameras.width, context.cameras.height], dtype=uv.dtype, device=uv.device)
        grid = (2.0 * uv / size - 1.0).to(context.features.dtype)
        weight = ((depth > 1e-4) & (grid.abs() <= 1.0).all(-1)).to(context.features.dtype)  # [B, V, P]
        sampled = F.grid_sample(
            fold_views(context.features), fold_views(grid)[:, :, None], align_corners=False, padding_mode="zeros"
        )  # [(B V), F, P, 1]
        sampled = unfold_views(sampled.squeeze(-1), num_views)  # [B, V, F, P]
        if context.view_weights is not None:
            weight = weight * context.view_weights[:, :, None]
        if context.surface_depth is not None:
            surface = F.grid_sample(fold_views(context.surface_depth[:, :, None]), fold_views(grid)[:, :, None],
                                    mode="nearest", align_corners=False, padding_mode="border")
            seen = visibility(unfold_views(surface.squeeze(1).squeeze(-1), num_views), depth, self.config.occlusion_margin)
            weight = weight * (seen + 1e-3)
        weight = weight / weight.sum(1, keepdim=True).clamp(min=1e-8)
        weight = weight[:, :, None]  # [B, V, 1, P]
        mean = (weight * sampled).sum(1)
        var = (weight * sampled * sampled).sum(1) - mean * mean  # E[f^2] - E[f]^2
        return torch.cat([mean, var.clamp(min=0)], dim=1).transpose(1, 2)  # [B, P, 2F]

    def sdf(self, points: torch.Tensor, context: NeuSContext) -> torch.Tensor:
        """Signed distance ``[B, P]`` at world ``points [B, P, 3]`` given encoded views."""
        features = self.aggregate(points, context)
        sdf, _ = self.field(points, features, points.new_zeros(1, 1, 3), context.temb[:, None])
        return sdf

    # ------------------------------------------------------------------ eq. 3
    def _query(self, points: torch.Tensor, directions: torch.Tensor, context: NeuSContext):
        # points [B, R, S, 3], directions [B, R, 3] -> sdf [B, R, S], color [B, R, S, C]
        batch, rays, samples = points.shape[:3]
        flat = points.reshape(batch, rays * samples, 3)
        features = self.aggregate(flat, context).reshape(batch, rays, samples, -1)
        return self.field(points, features, directions[:, :, None], context.temb[:, None, None])

    def _render_rays(self, origins, directions, context: NeuSContext, generator: Optional[torch.Generator] = None):
        # origins, directions [B, R, 3] -> colors [B, R, C], distance [B, R], opacity [B, R], points, weights
        jitter = self.training
        near, far, hit = ray_sphere_bounds(origins, directions, self.config.bound_radius)
        t_coarse = stratified_samples(near, far, self.config.num_coarse_samples, jitter, generator)  # [B, R, Sc]
        points = origins[..., None, :] + t_coarse[..., None] * directions[..., None, :]
        sdf, color = self._query(points, directions, context)
        t_all = t_coarse
        if self.config.num_importance_samples > 0:
            with torch.no_grad():
                coarse_weights = alpha_to_weights(sdf_to_alpha(sdf, self.inv_s)) * hit[..., None]
                t_fine = sample_pdf(t_coarse, coarse_weights, self.config.num_importance_samples, jitter, generator)
            fine_points = origins[..., None, :] + t_fine[..., None] * directions[..., None, :]
            sdf_fine, color_fine = self._query(fine_points, directions, context)
            t_all, order = torch.sort(torch.cat([t_coarse, t_fine], -1), dim=-1)
            sdf = torch.cat([sdf, sdf_fine], -1).gather(-1, order)
            color = torch.cat([color, color_fine], -2).gather(-2, order[..., None].expand(-1, -1, -1, color.shape[-1]))
        weights = alpha_to_weights(sdf_to_alpha(sdf, self.inv_s)) * hit[..., None]  # [B, R, S-1]
        mid_t = 0.5 * (t_all[..., 1:] + t_all[..., :-1])
        mid_color = 0.5 * (color[..., 1:, :] + color[..., :-1, :])
        opacity = weights.sum(-1)
        colors = (weights[..., None] * mid_color).sum(-2) + (1.0 - opacity[..., None]) * self.background_color
        distance = (weights * mid_t).sum(-1)
        # attach each section's weight to its start sample: points and weights both [B, R, S]
        sample_weights = torch.cat([weights, torch.zeros_like(weights[..., :1])], -1)
        sample_points = origins[..., None, :] + t_all[..., None] * directions[..., None, :]
        return colors, distance, opacity, sample_points, sample_weights

    def render(self, context: NeuSContext, cameras: Cameras, pixel_indices: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None) -> RayRenderOutput:
        """Render query ``cameras`` (batch shape ``[Vq]`` or ``[B, Vq]``, any resolution).

        Args:
            context: from :meth:`encode`.
            cameras: the query cameras; their height/width set the render resolution.
            pixel_indices: ``[N]`` row-major pixel indices to render in every view (training on ray
                subsets); all pixels when ``None``.
            generator: the random source of the sample jitter in train mode (the global RNG if None);
                eval mode samples deterministically.
        """
        batch = context.features.shape[0]
        cameras = _cameras_for_batch(cameras, batch, cameras.batch_shape[-1])
        uv = cameras.pixel_centers().reshape(-1, 2)
        if pixel_indices is not None:
            uv = uv[pixel_indices]
        origins, directions = cameras.rays(uv.to(context.features.device))  # [B, Vq, N, 3]
        num_query, num_rays = origins.shape[1:3]
        origins, directions = origins.reshape(batch, -1, 3), directions.reshape(batch, -1, 3)
        chunk = max(1, self.config.chunk_size // batch)
        outputs = [
            self._render_rays(origins[:, i : i + chunk], directions[:, i : i + chunk], context, generator)
            for i in range(0, origins.shape[1], chunk)
        ]
        colors, distance, opacity, points, weights = (torch.cat(parts, 1) for parts in zip(*outputs))
        cosine = (directions.reshape(batch, num_query, num_rays, 3) * cameras.forward_axes[:, :, None]).sum(-1)
        shape = (batch, num_query, num_rays)
        return RayRenderOutput(
            colors=colors.reshape(*shape, -1),
            depth=distance.reshape(shape) * cosine,
            opacity=opacity.reshape(shape),
            sample_points=points.reshape(*shape, -1, 3),
            sample_weights=weights.reshape(*shape, -1),
        )

    def forward(
        self,
        noisy_views: torch.Tensor,
        timestep: Union[int, torch.Tensor],
        cameras: Cameras,
        query_cameras: Optional[Cameras] = None,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ) -> Union[LatentSparseNeuSOutput, Tuple]:
        """Render the clean-view prediction x0 of every query view from the noisy views.

        Args:
            noisy_views: ``[B, V, C, H, W]`` noisy views x_i^t.
            timestep: scalar, ``[B]`` or ``[B, V]`` (a reference view sits at t = 0).
            cameras: the views' cameras, batch shape ``[V]`` or ``[B, V]``, at ``H x W``.
            query_cameras: cameras to render; defaults to the input cameras at ``render_resolution``.
            generator: the random source of the ray-sample jitter in train mode (see :meth:`render`).
        """
        context = self.encode(noisy_views, timestep, cameras)
        if query_cameras is None:
            size = self.config.render_resolution or noisy_views.shape[-1]
            query_cameras = context.cameras.rescale(size, size * noisy_views.shape[-1] // noisy_views.shape[-2])
        query_cameras = _cameras_for_batch(query_cameras, noisy_views.shape[0], query_cameras.batch_shape[-1])
        rays = self.render(context, query_cameras, generator=generator)
        batch, num_query = rays.colors.shape[:2]
        height, width = query_cameras.height, query_cameras.width
        output = LatentSparseNeuSOutput(
            x0=rays.colors.reshape(batch, num_query, height, width, -1).permute(0, 1, 4, 2, 3),
            depth=rays.depth.reshape(batch, num_query, height, width),
            opacity=rays.opacity.reshape(batch, num_query, height, width),
            sample_points=rays.sample_points,
            sample_weights=rays.sample_weights,
            cameras=query_cameras,
        )
        return output if return_dict else output.to_tuple()

    # ------------------------------------------------------------------ §3.5 meshes
    @torch.no_grad()
    def sdf_grid(self, context: NeuSContext, resolution: int = 64, object_index: int = 0) -> torch.Tensor:
        """SDF ``[R, R, R]`` (x, y, z order) on a grid over the bounding cube of one object."""
        bound = self.config.bound_radius
        axis = torch.linspace(-bound, bound, resolution, device=context.features.device)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, -1, 3)
        single = _select_object(context, object_index)
        chunk = max(1, self.config.chunk_size * 8)
        values = [self.sdf(grid[:, i : i + chunk], single) for i in range(0, grid.shape[1], chunk)]
        return torch.cat(values, 1).reshape(resolution, resolution, resolution)


def _cameras_for_batch(cameras: Cameras, batch: int, num_views: int) -> Cameras:
    """Cameras of batch shape ``[V]`` or ``[B, V]`` -> ``[B, V]``."""
    shape = tuple(cameras.batch_shape)
    if shape == (num_views,):
        return cameras.expand(batch)
    if shape == (batch, num_views):
        return cameras
    raise ValueError(f"cameras must have batch shape [V]=({num_views},) or [B, V]=({batch}, {num_views}); got {shape}")


def _select_object(context: NeuSContext, index: int) -> NeuSContext:
    cams = context.cameras
    return NeuSContext(
        context.features[index : index + 1],
        Cameras(cams.world_to_camera[index : index + 1], cams.intrinsics[index : index + 1], cams.height, cams.width),
        context.temb[index : index + 1],
        None if context.surface_depth is None else context.surface_depth[index : index + 1],
        None if context.view_weights is None else context.view_weights[index : index + 1],
    )
