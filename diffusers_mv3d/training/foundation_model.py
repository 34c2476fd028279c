"""The foundation ``train-foundation`` trains: a pixel-space UNet in the DeepFloyd-IF stage-I style, its
noise schedule, the module one training step runs (UNet + text encoder), its EMA in checkpoints, and
the ``IFPipeline`` folder it is saved as.

What the UNet predicts: 6 channels, as IF's stage I: epsilon or v (channels 0-2) and the interpolation
between the smallest and largest reverse-step log-variance (channels 3-5, the scheduler's
``variance_type="learned_range"``).
"""

from pathlib import Path
from typing import Callable, Dict, Sequence

import torch

from ..hub import write_pipeline_folder
from .ema import WeightAverage
from .text import encode_prompts

__all__ = [
    "FoundationModel",
    "build_noise_scheduler",
    "build_unet",
    "foundation_checkpoint_extras",
    "load_foundation_weights",
    "save_pipeline",
]


def build_unet(cfg):
    """The pixel-space UNet: 3 channels in, 6 out (epsilon + learned-variance interpolation, as IF)."""
    from diffusers import UNet2DConditionModel

    levels = len(cfg.block_out_channels)
    has_attention = [level >= cfg.attention_from_level for level in range(levels)]
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attention))
    return UNet2DConditionModel(
        sample_size=cfg.resolution,
        in_channels=3,
        out_channels=6,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn",
        attention_head_dim=cfg.attention_heads,  # diffusers uses this as the number of heads
        cross_attention_dim=cfg.text_hidden_size,
        norm_num_groups=cfg.norm_num_groups,
    )


def build_noise_scheduler(cfg):
    """The DDPM scheduler saved with the pipeline (IF's choice: DDPM with the learned variance)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type=cfg.prediction_type,
        variance_type="learned_range" if cfg.vlb_weight > 0 else "fixed_small",
        clip_sample=True,
        clip_sample_range=1.0,
        rescale_betas_zero_snr=cfg.zero_terminal_snr,
        # zero terminal SNR: samplers must start at t = T - 1, the pure-noise step ("trailing", Lin et
        # al. 2024). Otherwise "leading" (IF's and diffusers' default): with "trailing" the last DDPM
        # step is t > 0 with t_prev = -1, where diffusers' learned_range floor log(1e-20) meets a v
        # slightly above 1 and adds noise of enormous variance (speckled samples), and deterministic
        # samplers start at t = 999, where the capped cosine schedule's x_0 estimate is noise
        timestep_spacing="trailing" if cfg.zero_terminal_snr else "leading",
    )


class FoundationModel(torch.nn.Module):
    """The UNet and the text encoder a step trains, as one module (what DDP wraps; parameters named
    ``unet.*`` then ``text_encoder.*``, the optimizer's and the EMA's order)."""

    def __init__(self, unet, text_encoder, tokenizer):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer

    def forward(self, noisy_images: torch.Tensor, timesteps: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """``noisy_images [B, 3, H, W]``, ``timesteps [B]``, ``captions`` -> the UNet output ``[B, 6, H, W]``."""
        text_embeddings = encode_prompts(self.tokenizer, self.text_encoder, list(captions))  # B 77 D
        return self.unet(noisy_images, timesteps, encoder_hidden_states=text_embeddings).sample


def foundation_checkpoint_extras(model: FoundationModel, average: WeightAverage) -> Callable[[Path], Dict[str, object]]:
    """The foundation's part of a checkpoint beside ``unet/`` and ``text_encoder/``: ``tokenizer/`` and the
    EMA of both models (:meth:`WeightAverage.write`)."""

    def write(folder: Path) -> Dict[str, object]:
        model.tokenizer.save_pretrained(folder / "tokenizer")
        return average.write(folder)

    return write


def save_pipeline(folder: Path, unet, text_encoder, tokenizer, noise_scheduler) -> None:
    """Write an ``IFPipeline`` folder (model_index.json, unet/, text_encoder/, tokenizer/, scheduler/)."""
    from diffusers import IFPipeline

    pipe = IFPipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=noise_scheduler,
                      safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    write_pipeline_folder(pipe, folder)


def load_foundation_weights(folder: Path):
    """``(tokenizer, text_encoder, unet)`` from the tokenizer/, text_encoder/ and unet/ subfolders of a
    checkpoint or pipeline folder (an IFPipeline folder, or a TuneMV3D pipeline's frozen foundation)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    missing = [name for name in ("tokenizer", "text_encoder", "unet") if not (folder / name).is_dir()]
    if missing:
        raise ValueError(f"{folder}: no {', '.join(name + '/' for name in missing)} folder (expected a foundation "
                         "pipeline or checkpoint folder with tokenizer/, text_encoder/ and unet/)")
    return (PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer"),
            CLIPTextModel.from_pretrained(folder / "text_encoder"),
            UNet2DConditionModel.from_pretrained(folder / "unet"))
