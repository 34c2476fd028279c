"""Train the foundation: a small pixel-space text-to-image diffusion model in the DeepFloyd-IF stage-I
style (a ``UNet2DConditionModel`` on 32x32 RGB, a word-level tokenizer trained on the captions, a
small ``CLIPTextModel`` trained jointly), written as a pipeline folder that ``diffusers.IFPipeline``
loads.

Launch (the data comes from ``diffusers-mv3d render --split foundation2d``)::

    diffusers-mv3d render --split foundation2d --num-objects 20000 --resolution 32 --out data/foundation2d

    # one process
    diffusers-mv3d train-foundation --config configs/foundation-tiny.yaml
    # stopped (Ctrl-C, --stop-at-step, --max-minutes)? continue exactly where the last checkpoint left off
    diffusers-mv3d train-foundation --config configs/foundation-tiny.yaml --resume latest
    # see the resolved settings without training
    diffusers-mv3d train-foundation --config configs/foundation-tiny.yaml --dry-run

    # two processes (DDP; gloo on CPU, NCCL on GPUs); --batch-size stays the global batch
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        -m diffusers_mv3d.cli train-foundation --config configs/foundation-tiny.yaml

Outputs under ``--output-dir``: ``pipeline/`` (the EMA weights as an IFPipeline folder, rewritten at
every checkpoint), ``checkpoints/checkpoint-NNNNNN/`` (everything ``--resume`` needs, safetensors +
JSON, no pickle), ``samples/step-NNNNNN.png`` (validation grids), ``log.jsonl`` and ``config.yaml``.

What the UNet predicts: 6 channels, as IF's stage I: epsilon (channels 0-2) and the interpolation
``v`` between the smallest and largest reverse-step log-variance (channels 3-5, the scheduler's
``variance_type="learned_range"``), trained with the improved-DDPM hybrid loss
``||eps - eps_theta||^2 + vlb_weight * T * L_vlb`` (the VLB term sees epsilon through a stop-gradient;
:mod:`.diffusion_loss`). The UNet, its schedule and the folder are :mod:`.foundation_model`'s; the
step loop, checkpoints and summary the runner's (:mod:`.runner`), with the EMA as its hooks.
IFPipeline only works with such a UNet: with 3 output channels its ``noise_pred.split(3, dim=1)``
returns a single chunk and the unpacking into ``(noise, variance)`` fails. Samplers that need only
epsilon (DDIM, DPM-Solver) use channels 0-2, as :func:`diffusers_mv3d.sampling.sample_ddim` does.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple

import torch

from ..sampling import sample_ddim
from ..threads import torch_threads
from .checkpointing import check_architecture, resolve_resume
from .common import script_main
from .config import flag_name
from .diffusion_loss import DiffusionTerms, diffusion_loss
from .ema import WeightAverage
from .foundation_model import (
    FoundationModel,
    build_noise_scheduler,
    build_unet,
    foundation_checkpoint_extras,
    load_foundation_weights,
    save_pipeline,
)
from .runner import (
    StepHooks,
    finish_run,
    prepare_training,
    start_run,
    train_loop,
)
from .settings import EMASettings, GuidedRunSettings
from .text import build_text_encoder, train_word_tokenizer

__all__ = ["FoundationTrainConfig", "main", "validation_samples"]


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------


@dataclass
class FoundationTrainConfig(EMASettings, GuidedRunSettings):
    """Every setting of ``diffusers-mv3d train-foundation`` (flags are the field names with dashes): the
    run's (:class:`GuidedRunSettings`), the EMA's (:class:`EMASettings`), then these."""

    model_folder: ClassVar[str] = "pipeline"
    architecture_settings: ClassVar[tuple] = (
        "resolution", "num_train_timesteps", "block_out_channels", "layers_per_block", "attention_from_level",
        "attention_heads", "norm_num_groups", "text_hidden_size", "text_layers", "text_heads")

    data_dir: str = "data/foundation2d"
    """Image-text folder (metadata.jsonl + images/) written by `diffusers-mv3d render --split foundation2d`."""
    output_dir: str = "runs/foundation-tiny"
    """Where pipeline/, checkpoints/, samples/, log.jsonl and config.yaml go."""
    batch_size: int = 64
    """Global batch (images per optimizer step, split evenly across processes)."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate (UNet and text encoder)."""
    lr_warmup_steps: int = 200
    """Linear warm-up steps before the cosine decay to 0."""
    num_threads: int = 0
    """torch.set_num_threads per process; 0 keeps torch's default (all cores). On a busy shared machine 1 can be several times faster than an oversubscribed 2."""
    ema_decay: float = 0.9999
    """Upper bound of the EMA decay (diffusers EMAModel with warm-up); pipeline/ and the validation grids hold the averaged weights."""

    # diffusion
    num_train_timesteps: int = 1000
    """DDPM steps T (squaredcos_cap_v2 betas)."""
    prediction_type: str = "epsilon"
    """What channels 0-2 of the UNet predict: epsilon or v_prediction (v = sqrt(abar) eps - sqrt(1 - abar) x0)."""
    zero_terminal_snr: bool = False
    """Rescale the betas so that the last timestep is pure noise (Lin et al. 2024, diffusers' rescale_betas_zero_snr); samplers then start at t = T - 1 (trailing spacing). Needs v_prediction."""
    snr_gamma: float = 0.0
    """Min-SNR-gamma loss weighting (Hang et al. 2023): each image's loss times min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v); 0 = unweighted."""
    noise_offset: float = 0.0
    """Offset noise: add this times a per-image, per-channel N(0, 1) constant to the training noise (teaches the model to change an image's mean colour); 0 = off."""
    vlb_weight: float = 0.001
    """Weight lambda of the variational bound term that trains the learned variance (improved DDPM); 0 trains the prediction only and saves a fixed_small scheduler."""
    init_from: Optional[str] = None
    """Start a fresh run from the UNet, text encoder and tokenizer of this pipeline folder (e.g. pipelines/tunemv3d-tiny) instead of a random init; optimizer, schedule and EMA start anew. Ignored when resuming."""

    # UNet
    block_out_channels: Tuple[int, ...] = (32, 64, 128)
    """UNet channels per resolution level (level i works at resolution / 2^i)."""
    layers_per_block: int = 1
    """ResNet layers per UNet down block (up blocks get one more)."""
    attention_from_level: int = 1
    """Cross-attention in the levels with this index and deeper (and the mid block); 1 = not at full resolution."""
    attention_heads: int = 1
    """Attention heads per transformer (diffusers' attention_head_dim, which UNet2DConditionModel uses as the number of heads)."""
    norm_num_groups: int = 32
    """GroupNorm groups in the UNet (must divide every entry of block_out_channels)."""

    # text encoder
    text_hidden_size: int = 64
    """CLIPTextModel width, also the UNet's cross_attention_dim."""
    text_layers: int = 2
    """CLIPTextModel transformer layers."""
    text_heads: int = 2
    """CLIPTextModel attention heads."""

    # validation
    validation_prompts: Tuple[str, ...] = ()
    """Prompts of the sample grid; empty = 8 captions spread over the training captions."""
    validation_images_per_prompt: int = 2
    """Samples per validation prompt (fixed seeds, so grids of different steps compare)."""
    validation_inference_steps: int = 50
    """DDIM steps of the validation samples."""

    at_least = {"num_threads": 0, "num_train_timesteps": 2, "snr_gamma": 0, "noise_offset": 0, "vlb_weight": 0,
                "layers_per_block": 1, "attention_heads": 1, "norm_num_groups": 1, "text_layers": 1,
                "validation_images_per_prompt": 1, "validation_inference_steps": 1}

    def check_settings(self) -> None:
        levels = len(self.block_out_channels)
        self.check(self.prediction_type in ("epsilon", "v_prediction"), "prediction_type", "must be epsilon or v_prediction")
        self.check(not self.zero_terminal_snr or self.prediction_type == "v_prediction", "zero_terminal_snr",
              f"needs {flag_name('prediction_type')} v_prediction (epsilon is undefined at zero SNR)")
        self.check(self.init_from is None or bool(self.init_from), "init_from", "must name a pipeline folder")
        self.check(levels >= 1 and all(c > 0 for c in self.block_out_channels), "block_out_channels", "must be positive channel counts")
        self.check(0 <= self.attention_from_level <= levels, "attention_from_level", f"must be in [0, {levels}]")
        self.check(
            all(c % self.norm_num_groups == 0 for c in self.block_out_channels),
            "norm_num_groups",
            f"must divide every entry of {flag_name('block_out_channels')} {self.block_out_channels}",
        )
        self.check(
            all(c % self.attention_heads == 0 for c in self.block_out_channels),
            "attention_heads",
            f"must divide every entry of {flag_name('block_out_channels')} {self.block_out_channels}",
        )
        self.check(self.resolution > 0 and self.resolution % 2 ** (levels - 1) == 0, "resolution",
              f"must be a positive multiple of 2^(levels-1) = {2 ** (levels - 1)}")
        self.check(self.text_hidden_size > 0, "text_hidden_size", "must be > 0")
        self.check(self.text_heads >= 1 and self.text_hidden_size % self.text_heads == 0, "text_heads",
              f"must divide {flag_name('text_hidden_size')} {self.text_hidden_size}")

    @property
    def lr_scheduler(self) -> str:
        """The foundation's schedule: cosine decay to 0 at max_train_steps after the warm-up."""
        return "cosine"


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def read_captions(data_dir: str) -> List[str]:
    """The ``text`` of every line of ``data_dir/metadata.jsonl`` (without decoding images)."""
    path = os.path.join(data_dir, "metadata.jsonl")
    if not os.path.isfile(path):
        raise ValueError(f"{flag_name('data_dir')}: no metadata.jsonl in {data_dir!r} "
                         "(write one with `diffusers-mv3d render --split foundation2d --out DIR`)")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def collate(items: Sequence[dict]) -> dict:
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),  # (B, 3, H, W) in [-1, 1]
        "caption": [item["caption"] for item in items],
    }


def check_init_architecture(cfg: FoundationTrainConfig, unet, text_encoder) -> None:
    """``--init-from`` weights must have the shapes the settings describe (a fresh model of ``cfg``)."""
    expected = {"sample_size": cfg.resolution, "block_out_channels": list(cfg.block_out_channels),
                "layers_per_block": cfg.layers_per_block, "cross_attention_dim": cfg.text_hidden_size}
    found = {key: list(value) if isinstance(value, (list, tuple)) else value
             for key, value in ((key, unet.config[key]) for key in expected)}
    found["text_hidden_size"], expected["text_hidden_size"] = text_encoder.config.hidden_size, cfg.text_hidden_size
    if found != expected:
        raise ValueError(f"{flag_name('init_from')} {cfg.init_from!r}: its weights have {found}, the settings "
                         f"describe {expected}")


def _pick_validation_prompts(cfg: FoundationTrainConfig, captions: Sequence[str], count: int = 8) -> List[str]:
    if cfg.validation_prompts:
        return list(cfg.validation_prompts)
    unique = sorted(set(captions))
    if len(unique) <= count:
        return unique
    return [unique[round(i * (len(unique) - 1) / (count - 1))] for i in range(count)]


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def main(cfg: FoundationTrainConfig) -> Dict[str, object]:
    """Train (with ``--num-threads`` CPU threads); returns a summary (final step, last loss, samples/s,
    peak RSS, output folders, weights hash)."""
    with torch_threads(cfg.num_threads or None):
        return _train(cfg)


def _train(cfg: FoundationTrainConfig) -> Dict[str, object]:
    from ..data.dataset import ImageTextDataset

    # 1. Processes, folders, data
    accelerator = start_run(cfg)
    captions = read_captions(cfg.data_dir)
    dataset = ImageTextDataset(cfg.data_dir, resolution=cfg.resolution)
    captions = [record["text"] for record in getattr(dataset, "records", [])] or captions
    resume_from = resolve_resume(cfg)

    # 2. Models: fresh, or the weights of the checkpoint
    if resume_from is not None:
        check_architecture(cfg, resume_from)
        tokenizer, text_encoder, unet = load_foundation_weights(resume_from)
    elif cfg.init_from:
        tokenizer, text_encoder, unet = load_foundation_weights(Path(cfg.init_from))
        check_init_architecture(cfg, unet, text_encoder)
    else:
        torch.manual_seed(cfg.seed)
        tokenizer = train_word_tokenizer(captions)
        text_encoder = build_text_encoder(tokenizer, cfg.text_hidden_size, cfg.text_layers, cfg.text_heads)
        unet = build_unet(cfg)
    noise_scheduler = build_noise_scheduler(cfg)
    terms = DiffusionTerms(noise_scheduler.alphas_cumprod)
    raw = FoundationModel(unet, text_encoder, tokenizer).train()

    # 3. Optimizer, schedule, EMA (over both models: the saved pipeline pairs EMA UNet and EMA text encoder)
    params = list(raw.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    average = WeightAverage(raw, cfg.ema_decay, cfg.ema_power)
    if resume_from is not None:
        average.load(resume_from)
    model, optimizer, lr_scheduler, start_step = prepare_training(accelerator, cfg, raw, optimizer, resume_from)
    average.to(accelerator.device)

    prompts = _pick_validation_prompts(cfg, captions)

    def compute_losses(batch: Dict, generator: torch.Generator) -> Tuple[torch.Tensor, Dict[str, float]]:
        x0 = batch["pixel_values"].to(accelerator.device)  # (b, 3, H, W) in [-1, 1]
        drop = torch.rand(len(batch["caption"]), generator=generator) < cfg.caption_dropout
        captions_in = ["" if d else c for d, c in zip(drop.tolist(), batch["caption"])]
        t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        if cfg.noise_offset:
            noise = noise + cfg.noise_offset * torch.randn((*x0.shape[:2], 1, 1), generator=generator)
        noise, t = noise.to(accelerator.device), t.to(accelerator.device)
        x_t = noise_scheduler.add_noise(x0, noise, t)  # sqrt(abar) x0 + sqrt(1 - abar) eps
        model_output = model(x_t, t, captions_in)  # (b, 6, H, W)
        return diffusion_loss(model_output, noise, x0, x_t, t, terms, cfg.vlb_weight, cfg.prediction_type,
                              cfg.snr_gamma)

    def save_model(folder: Path, step: int) -> None:
        with average.applied():
            save_pipeline(folder, raw.unet, raw.text_encoder, tokenizer, noise_scheduler)

    def validate(step: int, samples_dir: Path) -> Tuple[torch.Tensor, Dict[str, object]]:
        with average.applied():
            images = validation_samples(raw, prompts, noise_scheduler.config, cfg)
        (samples_dir / "prompts.txt").write_text("\n".join(prompts) + "\n")
        return images, {}

    # 4. Training loop: every random draw of step s comes from step_generator(seed, s, rank)
    hooks = StepHooks(compute_losses=compute_losses, save_model=save_model, validate=validate,
                      grid_columns=len(prompts), after_step=average.step,
                      checkpoint_extras=foundation_checkpoint_extras(raw, average))
    models = {"unet": raw.unet, "text_encoder": raw.text_encoder}
    result = train_loop(cfg, accelerator, "train-foundation", models, params, optimizer, lr_scheduler, dataset,
                        collate, start_step, hooks)
    return finish_run(accelerator, cfg, result, models)


@torch.no_grad()
def validation_samples(model: FoundationModel, prompts: Sequence[str], scheduler_config: dict,
                       cfg: FoundationTrainConfig) -> torch.Tensor:
    """``--validation-images-per-prompt`` DDIM samples of each prompt (fixed seed) -> ``[k P, 3, H, W]``
    in [-1, 1]: one column a prompt, one row a seed."""
    model.unet.eval()
    try:
        images = sample_ddim(model.unet, model.text_encoder, model.tokenizer,
                             [p for p in prompts for _ in range(cfg.validation_images_per_prompt)], scheduler_config,
                             cfg.validation_inference_steps, cfg.validation_guidance_scale,
                             torch.Generator().manual_seed(cfg.seed))  # (P k, 3, H, W), prompt-major
    finally:
        model.unet.train()
    images = images.view(len(prompts), cfg.validation_images_per_prompt, *images.shape[1:]).transpose(0, 1)
    return images.reshape(-1, *images.shape[2:])


if __name__ == "__main__":
    import sys

    sys.exit(script_main("train-foundation"))
