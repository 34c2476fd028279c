"""Geometry-aware cross-view attention: the pairwise geometric condition of TuneMV3D (paper §3.1.2).

For a query pixel ``p`` of view ``i``, the rays of its ``n x n`` pixel neighbourhood (a small frustum)
carry the NeuS samples with the largest rendering weights. Those 3D points are projected into every
*other* view ``j``; the features of view ``j`` bilinearly interpolated there are the only keys and
values ``p`` attends to. The NeuS weight of each point multiplies its attention weight:

    out_p = sum_{j != i, m} softmax_{j, m}(q_p . k_{j, m} / sqrt(d)) * w_m * v_{j, m}

and the output projection starts at zero, so the layer starts as the identity. Normalisation is
per pixel (LayerNorm over channels), so a key depends only on the pixels it is interpolated from.
"""

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cameras import Cameras
from .views import fold_views, unfold_views


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (ControlNet's zero convolution / projection)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def frustum_samples(
    points: torch.Tensor, weights: torch.Tensor, ray_resolution: Tuple[int, int], feature_resolution: Tuple[int, int],
    neighbourhood: int, samples_per_ray: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The NeuS samples of each feature pixel's frustum.

    Args:
        points: ``[B, V, R_h * R_w, S, 3]`` NeuS sample points, rays row-major at ``ray_resolution``.
        weights: ``[B, V, R_h * R_w, S]`` their rendering weights.
        feature_resolution: ``(h, w)`` of the feature map; each feature pixel takes the ray nearest
            to its centre.
        neighbourhood: ``n``; the frustum is the ``n x n`` block of rays around the pixel (odd n).
        samples_per_ray: the ``k`` samples of largest weight kept per ray.

    Returns:
        ``points [B, V, h * w, M, 3]``, ``weights [B, V, h * w, M]`` and ``inside [B, V, h * w, M]``
        (False for frustum rays beyond the image border) with ``M = n * n * k``.
    """
    batch, views, _, samples, _ = points.shape
    (rh, rw), (h, w) = ray_resolution, feature_resolution
    k = min(samples_per_ray, samples)
    top_weights, top_index = weights.topk(k, dim=-1)  # [B, V, R, k]
    top_points = points.gather(-2, top_index[..., None].expand(-1, -1, -1, -1, 3))  # [B, V, R, k, 3]
    rows = ((torch.arange(h, device=points.device) + 0.5) * rh / h).long()
    cols = ((torch.arange(w, device=points.device) + 0.5) * rw / w).long()
    ray_index = (rows[:, None] * rw + cols[None, :]).flatten()  # [h * w]
    ones = torch.ones_like(top_weights[..., None])
    per_pixel = torch.cat([top_points, top_weights[..., None], ones], -1)[:, :, ray_index]  # [B, V, h*w, k, 5]
    grid = per_pixel.reshape(batch * views, h, w, k * 5).permute(0, 3, 1, 2)  # [(B V), k*5, h, w]
    blocks = F.unfold(grid, neighbourhood, padding=neighbourhood // 2)  # [(B V), k*5*n*n, h*w], zero padded
    blocks = blocks.reshape(batch, views, k, 5, neighbourhood * neighbourhood, h * w)
    blocks = blocks.permute(0, 1, 5, 4, 2, 3).reshape(batch, views, h * w, -1, 5)  # [B, V, h*w, M, 5]
    return blocks[..., :3], blocks[..., 3], blocks[..., 4] > 0.5


class GeometryAwareAttention(nn.Module):
    r"""Pairwise geometric condition (§3.1.2) on a multi-view feature map.

    Args:
        channels (`int`): feature channels C.
        num_heads (`int`, defaults to 1): attention heads (C must be divisible by it).
        neighbourhood (`int`, defaults to 3): side n of the pixel neighbourhood whose rays form the frustum.
        samples_per_ray (`int`, defaults to 1): NeuS samples of largest weight kept on each ray.
    """

    def __init__(self, channels: int, num_heads: int = 1, neighbourhood: int = 3, samples_per_ray: int = 1):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels={channels} must be divisible by num_heads={num_heads}")
        if neighbourhood < 1 or neighbourhood % 2 == 0:
            raise ValueError(f"neighbourhood must be a positive odd number, got {neighbourhood}")
        self.num_heads, self.neighbourhood, self.samples_per_ray = num_heads, neighbourhood, samples_per_ray
        self.norm = nn.LayerNorm(channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = zero_module(nn.Linear(channels, channels))

    def forward(
        self, hidden_states: torch.Tensor, cameras: Cameras, sample_points: torch.Tensor, sample_weights: torch.Tensor,
        ray_resolution: Tuple[int, int],
    ) -> torch.Tensor:
        """
        Args:
            hidden_states: ``[B, V, C, h, w]`` features of every view.
            cameras: batch shape ``[B, V]`` (any resolution; rescaled to ``h x w``).
            sample_points: ``[B, V, N, S, 3]`` NeuS samples of the rays at ``ray_resolution``.
            sample_weights: ``[B, V, N, S]``.
            ray_resolution: ``(R_h, R_w)`` with ``N = R_h * R_w``.

        Returns:
            ``[B, V, C, h, w]``: ``hidden_states`` plus the attended residual.
        """
        batch, views, channels, h, w = hidden_states.shape
        points, point_weights, inside = frustum_samples(
            sample_points.detach(), sample_weights, ray_resolution, (h, w), self.neighbourhood, self.samples_per_ray
        )  # [B, Vq, hw, M, 3], [B, Vq, hw, M]
        m, heads, head_dim = points.shape[3], self.num_heads, channels // self.num_heads
        x = self.norm(hidden_states.permute(0, 1, 3, 4, 2))  # [B, V, h, w, C]

        # Keys and values are affine in the features, and bilinear interpolation is linear: so sample
        # the normalised features x (plus a ones channel that carries each sample's interpolation
        # mass n, below 1 at the image border) and fold to_k into the query and to_v after the sum:
        #   q . (W_k x_s + b_k n) = (W_k^T q) . x_s + (q . b_k) n,   sum a (W_v x_s + b_v n) = W_v sum a x_s + b_v sum a n
        source = torch.cat([x, torch.ones_like(x[..., :1])], -1).permute(0, 1, 4, 2, 3)  # [B, Vk, C+1, h, w]
        level_cameras = cameras.rescale(h, w)
        uv, depth = level_cameras.project(points.reshape(batch, 1, -1, 3))  # [B, Vk, Vq*hw*M, 2]
        grid = (2.0 * uv / torch.tensor([w, h], dtype=uv.dtype, device=uv.device) - 1.0).to(x.dtype)
        valid = (depth > 1e-4) & (grid.abs() <= 1.0).all(-1)  # [B, Vk, Vq*hw*M]
        sampled = F.grid_sample(fold_views(source), fold_views(grid)[:, :, None], align_corners=False)
        # the candidate keys stay in the sampled layout (no copies): [B, Vk, 1, C + 1, Vq, hw, M]
        sampled = sampled.view(batch, views, 1, channels + 1, views, h * w, m)

        query = self.to_q(x).reshape(batch, views, h * w, heads, head_dim)
        query_x = torch.cat([
            torch.einsum("bqphd,hdc->bhcqp", query, self.to_k.weight.view(heads, head_dim, channels)),
            torch.einsum("bqphd,hd->bhqp", query, self.to_k.bias.view(heads, head_dim))[:, :, None],
        ], 2)  # [B, heads, C + 1, Vq, hw]
        logits = (sampled * query_x[:, None, ..., None]).sum(3) / head_dim**0.5  # [B, Vk, heads, Vq, hw, M]

        # only other views, only points that project into them, only frustum rays inside the image
        other_view = ~torch.eye(views, dtype=torch.bool, device=valid.device)  # [Vk, Vq]
        valid = valid.view(batch, views, 1, views, h * w, m) & other_view[None, :, None, :, None, None]
        valid = valid & inside[:, None, None]
        logits = logits.masked_fill(~valid, float("-inf"))

        # softmax over the Vk * M candidate keys of each query pixel, times the NeuS weights
        flat = logits.permute(0, 2, 3, 4, 1, 5).reshape(batch, heads, views, h * w, views * m)
        attention = torch.softmax(flat, dim=-1).nan_to_num(0.0)  # rows with no valid key give zeros
        attention = attention.view(batch, heads, views, h * w, views, m).permute(0, 4, 1, 2, 3, 5)
        attention = attention * point_weights[:, None, None]  # [B, Vk, heads, Vq, hw, M]
        mixed = (sampled * attention[:, :, :, None]).sum(dim=(1, 6))  # [B, heads, C + 1, Vq, hw]
        out = torch.einsum("bhcqp,hdc->bqphd", mixed[:, :, :channels], self.to_v.weight.view(heads, head_dim, channels))
        out = out + mixed[:, :, channels].permute(0, 2, 3, 1)[..., None] * self.to_v.bias.view(heads, head_dim)
        out = out.reshape(batch, views, h, w, channels)
        return hidden_states + self.to_out(out).permute(0, 1, 4, 2, 3)
