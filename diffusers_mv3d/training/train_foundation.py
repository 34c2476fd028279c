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
``||eps - eps_theta||^2 + vlb_weight * T * L_vlb`` (the VLB term sees epsilon through a stop-gradient).
IFPipeline only works with such a UNet: with 3 output channels its ``noise_pred.split(3, dim=1)``
returns a single chunk and the unpacking into ``(noise, variance)`` fails. Samplers that need only
epsilon (DDIM, DPM-Solver) use channels 0-2, as :func:`diffusers_mv3d.sampling.sample_ddim` does.
"""

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..hub import write_pipeline_folder
from ..io_utils import atomic_write_folder
from ..sampling import sample_ddim
from .checkpointing import (
    STATE_FILE,
    append_log,
    check_architecture,
    latest_checkpoint,
    optimizer_state_from_files,
    optimizer_state_to_files,
    peak_rss_mb,
    prune_checkpoints,
    resolve_resume,
)
from .common import (
    add_trainer_parser,
    check_batch_size,
    final_step,
    global_batch_indices,  # re-exported: the batch stream this trainer documents
    save_grid,
    script_main,
    step_generator,
    step_loader,
)
from .config import config_to_dict, flag_name, resolve_or_exit, save_config
from .diffusion_loss import DiffusionTerms, diffusion_loss
from .text import build_text_encoder, encode_prompts, train_word_tokenizer

__all__ = [
    "FoundationTrainConfig",
    "add_parser",
    "build_noise_scheduler",
    "build_unet",
    "diffusion_loss",
    "latest_checkpoint",
    "load_pipeline",
    "main",
]


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------


@dataclass
class FoundationTrainConfig:
    """Every setting of ``diffusers-mv3d train-foundation`` (flags are the field names with dashes)."""

    # data and outputs
    data_dir: str = "data/foundation2d"
    """Image-text folder (metadata.jsonl + images/) written by `diffusers-mv3d render --split foundation2d`."""
    output_dir: str = "runs/foundation-tiny"
    """Where pipeline/, checkpoints/, samples/, log.jsonl and config.yaml go."""
    resolution: int = 32
    """Training images are resized to this square size (pixels); also the UNet's sample_size."""
    num_workers: int = 0
    """DataLoader worker processes (0 loads in the training process)."""
    num_threads: int = 0
    """torch.set_num_threads per process; 0 keeps torch's default (all cores). On a busy shared machine 1 can be several times faster than an oversubscribed 2."""

    # optimisation
    max_train_steps: int = 20000
    """Optimizer steps of the whole run (the cosine schedule spans these)."""
    batch_size: int = 64
    """Global batch (images per optimizer step, split evenly across processes)."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate (UNet and text encoder)."""
    lr_warmup_steps: int = 200
    """Linear warm-up steps before the cosine decay to 0."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this."""
    caption_dropout: float = 0.1
    """Fraction of captions replaced by "" (learns the unconditional model for classifier-free guidance)."""
    ema_decay: float = 0.9999
    """Upper bound of the EMA decay (diffusers EMAModel with warm-up)."""
    ema_power: float = 0.75
    """EMA warm-up exponent: decay = 1 - (1 + step)^-power (0.75 reaches 0.999 at 10k steps)."""
    seed: int = 0
    """Seeds the initial weights and, with the step number, each step's batch order, caption dropout, timesteps and noise."""
    mixed_precision: str = "no"
    """Accelerator mixed precision: no, fp16 or bf16 (use no on CPUs: bf16 is ~8x slower without hardware support)."""

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

    # checkpoints, validation, stopping
    checkpointing_steps: int = 250
    """Write a checkpoint (and refresh pipeline/) every this many steps, and at the end."""
    checkpoints_total_limit: int = 3
    """Keep only the newest this many checkpoints (0 keeps all)."""
    resume: Optional[str] = None
    """Continue from a checkpoint: "latest" (the newest under output_dir/checkpoints, or a fresh start if none) or a checkpoint folder."""
    stop_at_step: int = 0
    """Stop (after writing a checkpoint) at this step although the schedule runs to max_train_steps; 0 = do not."""
    max_minutes: float = 0.0
    """Stop (after writing a checkpoint) once this many minutes of training have passed; 0 = no limit."""
    validation_steps: int = 500
    """Save a sample grid every this many steps and at the end (0 = never)."""
    validation_prompts: Tuple[str, ...] = ()
    """Prompts of the sample grid; empty = 8 captions spread over the training captions."""
    validation_images_per_prompt: int = 2
    """Samples per validation prompt (fixed seeds, so grids of different steps compare)."""
    validation_inference_steps: int = 50
    """DDIM steps of the validation samples."""
    validation_guidance_scale: float = 3.0
    """Classifier-free guidance scale of the validation samples."""
    log_every: int = 10
    """Append loss, lr, samples/s, peak RSS and process CPU seconds to log.jsonl every this many steps."""

    def __post_init__(self) -> None:
        def check(ok: bool, field: str, requirement: str) -> None:
            if not ok:
                raise ValueError(f"{flag_name(field)} {requirement}, got {getattr(self, field)!r}")

        self.block_out_channels = tuple(self.block_out_channels)
        self.validation_prompts = tuple(self.validation_prompts)
        levels = len(self.block_out_channels)
        check(bool(self.data_dir), "data_dir", "must name a folder")
        check(bool(self.output_dir), "output_dir", "must name a folder")
        check(self.num_workers >= 0, "num_workers", "must be >= 0")
        check(self.num_threads >= 0, "num_threads", "must be >= 0")
        check(self.max_train_steps > 0, "max_train_steps", "must be > 0")
        check(self.batch_size > 0, "batch_size", "must be > 0")
        check(self.learning_rate > 0, "learning_rate", "must be > 0")
        check(self.lr_warmup_steps >= 0, "lr_warmup_steps", "must be >= 0")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(self.max_grad_norm > 0, "max_grad_norm", "must be > 0")
        check(0.0 <= self.caption_dropout < 1.0, "caption_dropout", "must be in [0, 1)")
        check(0.0 <= self.ema_decay <= 1.0, "ema_decay", "must be in [0, 1]")
        check(self.ema_power > 0, "ema_power", "must be > 0")
        check(self.seed >= 0, "seed", "must be >= 0")
        check(self.mixed_precision in ("no", "fp16", "bf16"), "mixed_precision", "must be no, fp16 or bf16")
        check(self.num_train_timesteps >= 2, "num_train_timesteps", "must be >= 2")
        check(self.prediction_type in ("epsilon", "v_prediction"), "prediction_type", "must be epsilon or v_prediction")
        check(not self.zero_terminal_snr or self.prediction_type == "v_prediction", "zero_terminal_snr",
              f"needs {flag_name('prediction_type')} v_prediction (epsilon is undefined at zero SNR)")
        check(self.snr_gamma >= 0, "snr_gamma", "must be >= 0")
        check(self.noise_offset >= 0, "noise_offset", "must be >= 0")
        check(self.vlb_weight >= 0, "vlb_weight", "must be >= 0")
        check(self.init_from is None or bool(self.init_from), "init_from", "must name a pipeline folder")
        check(levels >= 1 and all(c > 0 for c in self.block_out_channels), "block_out_channels", "must be positive channel counts")
        check(self.layers_per_block >= 1, "layers_per_block", "must be >= 1")
        check(0 <= self.attention_from_level <= levels, "attention_from_level", f"must be in [0, {levels}]")
        check(self.attention_heads >= 1, "attention_heads", "must be >= 1")
        check(self.norm_num_groups >= 1, "norm_num_groups", "must be >= 1")
        check(
            all(c % self.norm_num_groups == 0 for c in self.block_out_channels),
            "norm_num_groups",
            f"must divide every entry of {flag_name('block_out_channels')} {self.block_out_channels}",
        )
        check(
            all(c % self.attention_heads == 0 for c in self.block_out_channels),
            "attention_heads",
            f"must divide every entry of {flag_name('block_out_channels')} {self.block_out_channels}",
        )
        check(self.resolution > 0 and self.resolution % 2 ** (levels - 1) == 0, "resolution",
              f"must be a positive multiple of 2^(levels-1) = {2 ** (levels - 1)}")
        check(self.text_hidden_size > 0, "text_hidden_size", "must be > 0")
        check(self.text_layers >= 1, "text_layers", "must be >= 1")
        check(self.text_heads >= 1 and self.text_hidden_size % self.text_heads == 0, "text_heads",
              f"must divide {flag_name('text_hidden_size')} {self.text_hidden_size}")
        check(self.checkpointing_steps >= 1, "checkpointing_steps", "must be >= 1")
        check(self.checkpoints_total_limit >= 0, "checkpoints_total_limit", "must be >= 0")
        check(self.resume is None or bool(self.resume), "resume", 'must be "latest" or a checkpoint folder')
        check(self.stop_at_step >= 0, "stop_at_step", "must be >= 0")
        check(self.max_minutes >= 0, "max_minutes", "must be >= 0")
        check(self.validation_steps >= 0, "validation_steps", "must be >= 0")
        check(self.validation_images_per_prompt >= 1, "validation_images_per_prompt", "must be >= 1")
        check(self.validation_inference_steps >= 1, "validation_inference_steps", "must be >= 1")
        check(self.validation_guidance_scale >= 1.0, "validation_guidance_scale", "must be >= 1")
        check(self.log_every >= 1, "log_every", "must be >= 1")

    def architecture(self) -> Dict[str, object]:
        """The settings that fix the weights' shapes (a resumed run must keep them)."""
        names = ("resolution", "num_train_timesteps", "block_out_channels", "layers_per_block", "attention_from_level",
                 "attention_heads", "norm_num_groups", "text_hidden_size", "text_layers", "text_heads")
        return {name: config_to_dict(self)[name] for name in names}


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def build_unet(cfg: FoundationTrainConfig):
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


def build_noise_scheduler(cfg: FoundationTrainConfig):
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



# ----------------------------------------------------------------------------------------------
# Data: a reproducible stream of batches, a function of (seed, step) only
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


# ----------------------------------------------------------------------------------------------
# Folders: pipeline and checkpoints, written atomically (temporary folder, then rename)
# ----------------------------------------------------------------------------------------------

def save_pipeline(folder: Path, unet, text_encoder, tokenizer, noise_scheduler) -> None:
    """Write an ``IFPipeline`` folder (model_index.json, unet/, text_encoder/, tokenizer/, scheduler/)."""
    from diffusers import IFPipeline

    pipe = IFPipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=noise_scheduler,
                      safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    write_pipeline_folder(pipe, folder)


def load_pipeline(folder: str, **kwargs):
    """``IFPipeline.from_pretrained(folder)`` (IF expects T5 and logs a type warning for the CLIP text encoder)."""
    from diffusers import IFPipeline

    return IFPipeline.from_pretrained(folder, **kwargs)


def _named_parameters(unet, text_encoder) -> List[Tuple[str, torch.nn.Parameter]]:
    """All trained parameters in optimizer order, named ``unet.*`` then ``text_encoder.*``."""
    return [(f"unet.{n}", p) for n, p in unet.named_parameters()] + [
        (f"text_encoder.{n}", p) for n, p in text_encoder.named_parameters()
    ]


def save_checkpoint(folder: Path, step: int, unet, text_encoder, tokenizer, ema, optimizer, lr_scheduler,
                    cfg: FoundationTrainConfig) -> None:
    """Everything a resume needs, safetensors for tensors and JSON for the rest (no pickle)."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "tokenizer")
        names = [name for name, _ in _named_parameters(unet, text_encoder)]
        ema_state = ema.state_dict()
        save_file({n: s.detach().cpu().contiguous() for n, s in zip(names, ema_state.pop("shadow_params"))},
                  str(tmp / "ema.safetensors"))
        tensors, plain = optimizer_state_to_files(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state = {
            "step": step,
            "optimizer": plain,
            "lr_scheduler": lr_scheduler.state_dict(),
            "ema": ema_state,
            "architecture": cfg.architecture(),
            "config": config_to_dict(cfg),
        }
        # written last: its presence marks a finished checkpoint even without the rename
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))

    atomic_write_folder(folder, write)


def load_training_state(folder: Path, unet, text_encoder, ema, optimizer, lr_scheduler) -> int:
    """Restore EMA, optimizer and LR schedule from a checkpoint (weights come from its unet/ and
    text_encoder/ folders); returns the step it was written at."""
    from safetensors.torch import load_file

    state = json.loads((folder / STATE_FILE).read_text())
    names = [name for name, _ in _named_parameters(unet, text_encoder)]
    shadow = load_file(str(folder / "ema.safetensors"))
    ema.load_state_dict({**state["ema"], "shadow_params": [shadow[n] for n in names]})
    optimizer.load_state_dict(optimizer_state_from_files(load_file(str(folder / "optimizer.safetensors")),
                                                         state["optimizer"]))
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    return int(state["step"])


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
    """Train; returns a summary (final step, last loss, samples/s, peak RSS, output folders)."""
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(threads)  # main() may be called in-process (tests, notebooks)


def _train(cfg: FoundationTrainConfig) -> Dict[str, object]:
    from accelerate import Accelerator
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from ..data.dataset import ImageTextDataset

    # 1. Processes, folders, data
    # `accelerate launch --multi_gpu` on a machine without GPUs: accelerate only sets up gloo DDP over
    # CPU processes when asked for the CPU, otherwise every process trains alone as rank 0
    several_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=several_processes and not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    check_batch_size(cfg, world)
    output_dir = Path(cfg.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
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
    unet.train()
    text_encoder.train()

    # 3. Optimizer, schedule, EMA (over both models: the saved pipeline pairs EMA UNet and EMA text encoder)
    params = [p for _, p in _named_parameters(unet, text_encoder)]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.lr_warmup_steps, cfg.max_train_steps)
    ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=cfg.ema_power)
    start_step = 0
    if resume_from is not None:
        start_step = load_training_state(resume_from, unet, text_encoder, ema, optimizer, lr_scheduler)
    # the LR scheduler is stepped by hand once per optimizer step, so accelerate does not wrap it
    unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    ema.to(accelerator.device)
    raw_unet, raw_text_encoder = accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder)

    end_step = final_step(cfg)
    loader = step_loader(dataset, cfg, start_step, end_step, rank, world, collate)
    prompts = _pick_validation_prompts(cfg, captions)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, str(output_dir / "config.yaml"))

    def with_ema_weights(fn):
        ema.store(params)
        ema.copy_to(params)
        try:
            return fn()
        finally:
            ema.restore(params)

    def write_checkpoint(step: int) -> None:
        if accelerator.is_main_process:
            # the pipeline first: a checkpoint marks step ``step`` done, so a kill between the two writes
            # makes the rerun redo the steps and rewrite the pipeline (never a stale one beside a finished run)
            with_ema_weights(lambda: save_pipeline(output_dir / "pipeline", raw_unet, raw_text_encoder, tokenizer,
                                                   noise_scheduler))
            save_checkpoint(checkpoint_dir / f"checkpoint-{step:06d}", step, raw_unet, raw_text_encoder, tokenizer,
                            ema, optimizer, lr_scheduler, cfg)
            prune_checkpoints(checkpoint_dir, cfg.checkpoints_total_limit)
        accelerator.wait_for_everyone()

    def write_samples(step: int) -> None:
        if accelerator.is_main_process:
            def sample():
                raw_unet.eval()
                try:
                    return sample_ddim(raw_unet, raw_text_encoder, tokenizer,
                                       [p for p in prompts for _ in range(cfg.validation_images_per_prompt)],
                                       noise_scheduler.config, cfg.validation_inference_steps,
                                       cfg.validation_guidance_scale, torch.Generator().manual_seed(cfg.seed))
                finally:
                    raw_unet.train()

            images = with_ema_weights(sample)  # (P * k, 3, H, W), prompt-major
            (output_dir / "samples").mkdir(parents=True, exist_ok=True)
            # one column per prompt, one row per seed
            images = images.view(len(prompts), cfg.validation_images_per_prompt, *images.shape[1:]).transpose(0, 1)
            save_grid(images.reshape(-1, *images.shape[2:]), str(output_dir / "samples" / f"step-{step:06d}.png"),
                      ncol=len(prompts))
            (output_dir / "samples" / "prompts.txt").write_text("\n".join(prompts) + "\n")
        accelerator.wait_for_everyone()

    # 4. Training loop: every random draw of step s comes from step_generator(seed, s, rank)
    progress = tqdm(total=cfg.max_train_steps, initial=start_step, disable=not accelerator.is_main_process,
                    desc="train-foundation")
    log_path = output_dir / "log.jsonl"
    started = time.time()
    window_start, window_steps = time.time(), 0
    samples_per_s, last_loss, step = 0.0, float("nan"), start_step
    for step, batch in zip(range(start_step, end_step), loader):
        generator = step_generator(cfg.seed, step, rank)
        x0 = batch["pixel_values"].to(accelerator.device)  # (b, 3, H, W) in [-1, 1]
        drop = torch.rand(len(batch["caption"]), generator=generator) < cfg.caption_dropout
        captions_in = ["" if d else c for d, c in zip(drop.tolist(), batch["caption"])]
        t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        if cfg.noise_offset:
            noise = noise + cfg.noise_offset * torch.randn((*x0.shape[:2], 1, 1), generator=generator)
        noise = noise.to(accelerator.device)
        t = t.to(accelerator.device)
        x_t = noise_scheduler.add_noise(x0, noise, t)  # sqrt(abar) x0 + sqrt(1 - abar) eps

        with accelerator.autocast():
            text_embeddings = encode_prompts(tokenizer, text_encoder, captions_in)  # (b, 77, D)
            model_output = unet(x_t, t, encoder_hidden_states=text_embeddings).sample  # (b, 6, H, W)
        loss, parts = diffusion_loss(model_output, noise, x0, x_t, t, terms, cfg.vlb_weight, cfg.prediction_type,
                                     cfg.snr_gamma)
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(params)

        done = step + 1
        last_loss = accelerator.reduce(loss.detach(), "mean").item()  # mean over processes
        window_steps += 1
        if window_steps == 10 or done == end_step:
            samples_per_s = window_steps * cfg.batch_size / (time.time() - window_start)
            window_start, window_steps = time.time(), 0
        lr = lr_scheduler.get_last_lr()[0]
        progress.update(1)
        progress.set_postfix(loss=f"{last_loss:.4f}", mse=f"{parts['mse']:.4f}", lr=f"{lr:.2e}",
                             samples_s=f"{samples_per_s:.1f}")
        if accelerator.is_main_process and (done % cfg.log_every == 0 or done == end_step):
            record = {"step": done, "loss": last_loss, **parts, "lr": lr, "grad_norm": float(grad_norm),
                      "samples_per_s": samples_per_s, "peak_rss_mb": peak_rss_mb(),
                      "minutes": (time.time() - started) / 60, "cpu_seconds": time.process_time()}
            append_log(log_path, record)

        if cfg.max_minutes and (time.time() - started) / 60 >= cfg.max_minutes:
            accelerator.set_trigger()
        out_of_time = accelerator.check_trigger()
        wrote = False
        if done % cfg.checkpointing_steps == 0 or done == end_step or out_of_time:
            write_checkpoint(done)
            wrote = True
        if cfg.validation_steps and (done % cfg.validation_steps == 0 or done == cfg.max_train_steps):
            write_samples(done)
            wrote = True
        if wrote:  # samples/s measures training steps only
            window_start, window_steps = time.time(), 0
        step = done
        if out_of_time:
            break
    progress.close()
    accelerator.end_training()
    return {
        "process_index": rank,
        "step": step,
        "loss": last_loss,
        "samples_per_s": samples_per_s,
        "peak_rss_mb": peak_rss_mb(),
        "pipeline": str(output_dir / "pipeline"),
        "checkpoint": str(latest_checkpoint(checkpoint_dir)),
    }


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def add_parser(subparsers) -> None:
    """Register ``train-foundation`` with the ``diffusers-mv3d`` sub-command parser."""
    add_trainer_parser(subparsers, "train-foundation",
                       help="train the pixel-space text-to-image foundation model (an IFPipeline folder)",
                       description=__doc__, config_class=FoundationTrainConfig, run_from_args=run_from_args)


def run_from_args(args) -> int:
    import sys

    try:
        cfg = resolve_or_exit(FoundationTrainConfig, args)
    except ValueError as error:
        print(f"diffusers-mv3d train-foundation: error: {error}", file=sys.stderr)
        return 2
    if cfg is None:
        return 0
    summary = main(cfg)
    if summary["process_index"] == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(script_main("train-foundation", "train_foundation", add_parser, run_from_args))
