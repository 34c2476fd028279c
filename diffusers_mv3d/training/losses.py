"""The NeuS render losses that ``train`` (the branch's NeuS) and ``train-reconstructor`` share: rendered
colours against the views and rendered opacity against the object masks, at the rendered pixels."""

import torch
import torch.nn.functional as F

__all__ = ["gather_pixels", "render_losses"]


def gather_pixels(images: torch.Tensor, pixel_indices: torch.Tensor) -> torch.Tensor:
    """``[B, V, C, H, W]`` at row-major ``pixel_indices [N]`` -> ``[B, V, N, C]`` (the order renders use)."""
    return images.flatten(-2)[..., pixel_indices].transpose(-1, -2)


def render_losses(colors: torch.Tensor, opacity: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
    """Per-element mean MSE of rendered ``colors [..., C]`` against ``target [..., C]`` and BCE of
    ``opacity [...]`` against the (soft) ``mask [...]`` in [0, 1]; returns ``(mse, bce)``."""
    mse = F.mse_loss(colors.float(), target.float())
    bce = F.binary_cross_entropy(opacity.float().clamp(1e-4, 1 - 1e-4), mask.float().clamp(0, 1))
    return mse, bce
