"""Folding multi-view batches: ``[B, V, ...]`` <-> ``[(B V), ...]``, written once."""

from typing import Union

import torch


def fold_views(x: torch.Tensor) -> torch.Tensor:
    """``[B, V, *rest] -> [(B V), *rest]`` (views of one object stay contiguous)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def unfold_views(x: torch.Tensor, num_views: int) -> torch.Tensor:
    """``[(B V), *rest] -> [B, V, *rest]``."""
    if x.shape[0] % num_views:
        raise ValueError(f"batch of {x.shape[0]} is not a multiple of num_views={num_views}")
    return x.reshape(x.shape[0] // num_views, num_views, *x.shape[1:])


def per_view_timesteps(timestep: Union[int, float, torch.Tensor], batch_size: int, num_views: int) -> torch.Tensor:
    """Broadcast a scalar, ``[B]`` or ``[B, V]`` timestep to ``[B, V]`` (views may sit at different t)."""
    t = torch.as_tensor(timestep)
    if t.dim() == 0:
        return t.expand(batch_size, num_views)
    if t.dim() == 1 and t.shape[0] == batch_size:
        return t[:, None].expand(batch_size, num_views)
    if t.shape == (batch_size, num_views):
        return t
    raise ValueError(f"timestep must be a scalar, [B]={batch_size} or [B, V]=({batch_size}, {num_views}); got {tuple(t.shape)}")
