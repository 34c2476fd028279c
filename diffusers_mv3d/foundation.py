"""The frozen text-to-image foundation: loading a pipeline folder, and the two formulas of its prediction.

Everything that runs the foundation's UNet outside the pipeline (the trainers, their validation
grids, the baselines, evaluation, the samplers of :mod:`diffusers_mv3d.sampling`) loads it here:

- :func:`load_foundation`: a diffusers text-to-image folder (ours from ``train-foundation``, Stable
  Diffusion with ``vae/``, DeepFloyd-IF stage I) as a frozen :class:`Foundation`;
  :func:`load_baseline`: a ``train-baseline`` folder, the same way;
- :func:`unet_on_views`: the UNet on ``[B, V, C, h, w]`` views (folded into one batch);
- :func:`prediction_target` and :func:`predicted_x0`: what the UNet predicts at
  ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps`` (epsilon, v = sqrt(abar) eps - sqrt(1 - abar) x0, or
  x0 itself), and the x0 that a prediction implies.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

from .models.multiview_self_attention import set_multiview_self_attention
from .models.views import fold_views, unfold_views
from .training.text import encode_prompts

__all__ = [
    "BASELINE_FILE",
    "Foundation",
    "load_baseline",
    "load_foundation",
    "predicted_x0",
    "prediction_target",
    "unet_on_views",
]

BASELINE_FILE = "baseline.json"
"""In a baseline's ``model/`` folder: ``{"kind", "num_views", "base_model"}``."""


# ----------------------------------------------------------------------------------------------
# The frozen parts
# ----------------------------------------------------------------------------------------------


@dataclass
class Foundation:
    """The frozen parts of a text-to-image pipeline folder (all in eval mode, requires_grad False).

    Attributes:
        vae: ``AutoencoderKL`` of a latent model, ``None`` for a pixel-space model (IF, ours).
        noise_scheduler: a ``DDPMScheduler`` made from the folder's scheduler config (training noise).
    """

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    noise_scheduler: object
    vae: Optional[torch.nn.Module]
    path: str

    @property
    def channels(self) -> int:
        """Channels of the diffusion space (the UNet's in_channels)."""
        return int(self.unet.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    def space_resolution(self, resolution: int) -> int:
        """Side of the diffusion space for views of ``resolution`` pixels."""
        return resolution // self.vae_scale_factor

    @torch.no_grad()
    def to_space(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Clean views ``[B, V, 3, H, W]`` in [-1, 1] -> the diffusion space ``[B, V, C, h, w]``
        (identity for pixels; VAE latent sample x scaling_factor for a latent model)."""
        if self.vae is None:
            return images
        folded = images.flatten(0, 1).to(self.vae.dtype)  # (B V) 3 H W
        latents = self.vae.encode(folded).latent_dist.sample(generator)
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        latents = (latents - shift) * self.vae.config.scaling_factor
        return latents.reshape(*images.shape[:2], *latents.shape[1:]).to(images.dtype)

    @torch.no_grad()
    def to_images(self, space: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_space` for display: ``[N, C, h, w]`` -> ``[N, 3, H, W]`` in [-1, 1]."""
        if self.vae is None:
            return space.clamp(-1, 1)
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        images = self.vae.decode(space.to(self.vae.dtype) / self.vae.config.scaling_factor + shift).sample
        return images.float().clamp(-1, 1)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text embeddings ``[B, 77, D]`` (IFPipeline's encoding: 77 tokens, attention mask)."""
        return encode_prompts(self.tokenizer, self.text_encoder, list(prompts))

    def unet_prediction(self, noisy_views: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor,
                        residuals: Optional[Tuple[Tuple[torch.Tensor, ...], torch.Tensor]] = None) -> torch.Tensor:
        """Frozen UNet on the views ``[B, V, C, h, w]`` at one t an object (``timesteps [B]``) or one a view
        (``[B, V]``) with the branch residuals -> ``[B, V, C, h, w]`` (:func:`unet_on_views`)."""
        if timesteps.dim() == 1:
            timesteps = timesteps[:, None].expand(-1, noisy_views.shape[1])
        return unet_on_views(self.unet, noisy_views, timesteps, text, residuals=residuals)


def load_foundation(path: str, device: torch.device = torch.device("cpu"), flag: str = "--pretrained-model") -> Foundation:
    """Load and freeze a pipeline folder's UNet, text encoder, tokenizer, (VAE) and noise schedule (errors name ``flag``)."""
    import transformers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    root = Path(path)
    missing = [name for name in ("unet", "text_encoder", "tokenizer", "scheduler") if not (root / name).is_dir()]
    if missing:
        raise ValueError(f"{flag}: {path!r} is not a text-to-image pipeline folder "
                         f"(missing {', '.join(m + '/' for m in missing)})")
    index = json.loads((root / "model_index.json").read_text()) if (root / "model_index.json").is_file() else {}
    encoder_class = index.get("text_encoder", [None, "CLIPTextModel"])[1]
    text_encoder = getattr(transformers, encoder_class, transformers.AutoModel).from_pretrained(root / "text_encoder")
    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "tokenizer")
    unet = UNet2DConditionModel.from_pretrained(root / "unet")
    # training noise follows the foundation's schedule (betas, T, prediction type); variance_type is irrelevant here
    scheduler_config = {k: v for k, v in DDPMScheduler.load_config(root / "scheduler").items() if k != "variance_type"}
    noise_scheduler = DDPMScheduler.from_config(scheduler_config)
    vae = AutoencoderKL.from_pretrained(root / "vae") if (root / "vae").is_dir() else None
    if noise_scheduler.config.prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"{flag}: unsupported prediction_type "
                         f"{noise_scheduler.config.prediction_type!r}")
    for model in (unet, text_encoder, vae):
        if model is not None:
            model.requires_grad_(False)
            model.eval()
            model.to(device)
    return Foundation(unet, text_encoder, tokenizer, noise_scheduler, vae, str(path))


def load_baseline(folder: str, device: torch.device = torch.device("cpu"), kind: Optional[str] = None,
                  flag: str = "--model") -> Foundation:
    """A ``train-baseline`` model folder as a :class:`Foundation` (every part frozen, in eval mode),
    with the self-attention over views installed for an mvdream UNet.

    ``kind`` (finetune / mvdream), when given, must be the folder's; errors name ``flag``.
    """
    info_path = Path(folder) / BASELINE_FILE
    if not info_path.is_file():
        raise ValueError(f"{flag} {folder!r} is not a train-baseline model folder (no {BASELINE_FILE}; "
                         "train one with `diffusers-mv3d train-baseline` and pass its model/ folder)")
    info = json.loads(info_path.read_text())
    if kind is not None and info["kind"] != kind:
        raise ValueError(f"{flag} {folder!r} holds a {info['kind']} baseline, not {kind}")
    parts = load_foundation(folder, device)
    if info["kind"] == "mvdream":
        set_multiview_self_attention(parts.unet, info["num_views"])
    return parts


def unet_on_views(unet, noisy_views: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor,
                  cameras: Optional[torch.Tensor] = None,
                  residuals: Optional[Tuple[Tuple[torch.Tensor, ...], torch.Tensor]] = None) -> torch.Tensor:
    """The UNet on folded views: ``noisy_views [B, V, C, h, w]``, ``timesteps [B, V]``, ``text [B, L, D]``,
    ``cameras`` ``[B, V, 16]`` camera embeddings (mvdream) or None, ``residuals`` the branch's
    ``(down, mid)`` residuals or None -> ``[B, V, C, h, w]`` (an IF-style learned variance dropped).
    ``unet`` may be DDP-wrapped."""
    views, channels = noisy_views.shape[1:3]
    out = unet(
        fold_views(noisy_views),  # (B V) C h w
        fold_views(timesteps),
        encoder_hidden_states=text.repeat_interleave(views, dim=0),
        class_labels=None if cameras is None else fold_views(cameras),  # (B V) 16
        **_residual_arguments(residuals),
    ).sample[:, :channels]
    return unfold_views(out, views)


def _residual_arguments(residuals) -> dict:
    """The branch's ``(down, mid)`` residuals as ``UNet2DConditionModel`` keyword arguments."""
    if residuals is None:
        return {}
    return dict(down_block_additional_residuals=list(residuals[0]), mid_block_additional_residual=residuals[1])


# ----------------------------------------------------------------------------------------------
# What the UNet predicts (folded tensors [N, C, h, w], t [N])
# ----------------------------------------------------------------------------------------------


def prediction_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict at ``x_t = sqrt(abar) x0 + sqrt(1 - abar) noise``, as the
    scheduler's ``prediction_type`` says: the noise (epsilon), v (``get_velocity``), or x0 (sample)."""
    if scheduler.config.prediction_type == "epsilon":
        return noise
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    return x0


def predicted_x0(scheduler, x_t: torch.Tensor, prediction: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The x0 one prediction implies: epsilon ``(x_t - sqrt(1 - abar) eps) / sqrt(abar)``, v
    ``sqrt(abar) x_t - sqrt(1 - abar) v``, or the prediction itself (sample)."""
    abar = scheduler.alphas_cumprod.to(x_t.device)[t].view(-1, *[1] * (x_t.dim() - 1))
    if scheduler.config.prediction_type == "epsilon":
        return (x_t - (1 - abar).sqrt() * prediction) / abar.sqrt()
    if scheduler.config.prediction_type == "v_prediction":
        return abar.sqrt() * x_t - (1 - abar).sqrt() * prediction
    return prediction
