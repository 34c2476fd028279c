"""Train the two baselines TuneMV3D is measured against (DESIGN.md §6), on the same multi-view data.

Both start from the foundation (a diffusers text-to-image folder, as ``diffusers-mv3d train`` takes)
and train *every* UNet weight on the 8 input views of each ``objects3d`` object with its caption;
the text encoder (and VAE) stay frozen.

``--kind finetune``
    A fully fine-tuned UNet. The views are independent images: each gets its own t and noise. It
    answers: does creativity (prompts outside the 3D splits) survive full fine-tuning?
``--kind mvdream``
    MVDream (Shi et al., "MVDream: Multi-view Diffusion for 3D Generation", 2023): the same fine-tune,
    but the self-attention of every transformer block attends over all views of an object at once
    and a camera MLP of the flattened camera-to-world matrix is added to the timestep embedding
    (:mod:`diffusers_mv3d.models.multiview_self_attention`; at initialisation the UNet equals the
    foundation). As in MVDream, the views of an object share one t.

One step: clean views (VAE latents x scaling_factor for a latent foundation) noised with the
foundation's DDPM schedule, ``--caption-dropout`` of the captions empty (classifier-free guidance),
loss = MSE of the UNet's prediction (epsilon, v or x0, as the foundation's scheduler predicts; an
IF-style learned variance is dropped) against its target.

Launch (the data comes from ``diffusers-mv3d render``, the foundation from ``train-foundation``)::

    diffusers-mv3d train-baseline --config configs/baseline-finetune-tiny.yaml --resume latest
    diffusers-mv3d train-baseline --config configs/baseline-mvdream-tiny.yaml --resume latest
    # in sessions: stop with a checkpoint after 50 minutes; the same command continues exactly
    diffusers-mv3d train-baseline --config configs/baseline-mvdream-tiny.yaml --resume latest --max-minutes 50
    diffusers-mv3d train-baseline --config configs/baseline-mvdream-tiny.yaml --dry-run
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        -m diffusers_mv3d.cli train-baseline --config configs/baseline-finetune-tiny.yaml

Outputs under ``--output-dir``: ``model/`` (a pipeline folder: the trained ``unet/``, the
foundation's other components and ``model_index.json`` copied, ``baseline.json`` with the kind and
the training views, a README.md model card; rewritten at every checkpoint;
:func:`diffusers_mv3d.foundation.load_baseline` and :func:`diffusers_mv3d.sampling.sample_views` load and
sample it, ``diffusers-mv3d evaluate --finetune-model /
--mvdream-model`` score it), ``checkpoints/checkpoint-NNNNNN/`` (safetensors + JSON),
``samples/step-NNNNNN.png`` (validation grids), ``log.jsonl`` and ``config.yaml``.
"""

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Dict, Tuple

import torch
import torch.nn.functional as F

from ..foundation import BASELINE_FILE, Foundation, predicted_x0, prediction_target, unet_on_views
from ..hub import write_model_card
from ..io_utils import atomic_write_folder
from ..models.multiview_self_attention import camera_conditioned_unet, camera_embedding, set_multiview_self_attention
from ..models.views import fold_views, unfold_views
from ..sampling import sample_views
from .checkpointing import check_architecture
from .common import eval_mode, script_main
from .runner import (
    StepHooks,
    finish_run,
    prepare_training,
    start_tuning_run,
    train_loop,
)
from .settings import FoundationTuningSettings

__all__ = [
    "KINDS",
    "BaselineTrainConfig",
    "baseline_losses",
    "build_unet",
    "main",
]

KINDS = ("finetune", "mvdream")
LOSS_KEYS = ("loss",)


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------


@dataclass
class BaselineTrainConfig(FoundationTuningSettings):
    """Every setting of ``diffusers-mv3d train-baseline`` (flags are the field names with dashes): the
    run's (:class:`FoundationTuningSettings`), then these."""

    architecture_settings: ClassVar[tuple] = ("kind", "pretrained_model")

    output_dir: str = "runs/baseline-finetune-tiny"
    """Where model/, checkpoints/, samples/, log.jsonl and config.yaml go."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate of the UNet."""
    kind: str = "finetune"
    """finetune (all UNet weights, views independent) or mvdream (the same + self-attention over all views of an object + camera embedding)."""

    def check_settings(self) -> None:
        self.check(self.kind in KINDS, "kind", "must be finetune or mvdream")
        self.check(self.num_input_views >= (2 if self.kind == "mvdream" else 1), "num_input_views",
              "must be >= 1 (>= 2 with --kind mvdream: the views attend to each other)")

    @property
    def num_supervision_views(self) -> int:
        """The baselines train on the input views only (read by :func:`load_multiview_dataset`)."""
        return 0


# ----------------------------------------------------------------------------------------------
# The trained UNet and its prediction
# ----------------------------------------------------------------------------------------------


def build_unet(foundation_unet, cfg: BaselineTrainConfig):
    """The UNet a fresh run trains: the foundation's itself (finetune), or its camera-conditioned copy
    with self-attention over ``--num-input-views`` views (mvdream; the camera MLP seeded by ``--seed``)."""
    if cfg.kind == "finetune":
        return foundation_unet
    torch.manual_seed(cfg.seed)
    unet = camera_conditioned_unet(foundation_unet)
    set_multiview_self_attention(unet, cfg.num_input_views)
    return unet


def step_draws(generator: torch.Generator, batch: int, views: int, channels: int, size: int, num_timesteps: int,
               cfg: BaselineTrainConfig) -> Dict[str, torch.Tensor]:
    """Every random draw of one step on one process, in a fixed order (so a resumed run repeats them).

    ``timesteps`` is ``[B, V]``: one t a view (finetune) or one an object, shared by its views (mvdream).
    """
    drop_caption = torch.rand(batch, generator=generator) < cfg.caption_dropout
    if cfg.kind == "mvdream":
        timesteps = torch.randint(0, num_timesteps, (batch, 1), generator=generator).expand(batch, views)
    else:
        timesteps = torch.randint(0, num_timesteps, (batch, views), generator=generator)
    return {
        "drop_caption": drop_caption,
        "timesteps": timesteps,
        "noise": torch.randn((batch, views, channels, size, size), generator=generator),
        "global_seed": torch.randint(0, 2**62, (1,), generator=generator),
    }


def baseline_losses(unet, parts: Foundation, batch: Dict, cfg: BaselineTrainConfig, generator: torch.Generator,
                    device: torch.device) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The diffusion loss of one :func:`collate_multiview` batch (``unet`` is the trained, possibly
    DDP-wrapped UNet; ``parts`` gives the frozen text encoder, VAE and noise schedule)."""
    images = batch["images"].to(device)  # B V 3 H W in [-1, 1]
    b, v = images.shape[:2]
    scheduler = parts.noise_scheduler
    draws = step_draws(generator, b, v, parts.channels, parts.space_resolution(images.shape[-1]),
                       scheduler.config.num_train_timesteps, cfg)

    # 1. forward diffusion in the diffusion space (VAE latents for a latent model)
    x0 = parts.to_space(images, torch.Generator().manual_seed(int(draws["global_seed"]) % 2**31))  # B V C h w
    t, noise = draws["timesteps"].to(device), draws["noise"].to(device)
    x_t = unfold_views(scheduler.add_noise(fold_views(x0), fold_views(noise), fold_views(t)), v)
    captions = ["" if drop else caption for drop, caption in zip(draws["drop_caption"].tolist(), batch["caption"])]
    text = parts.encode_text(captions).to(device)
    cameras = camera_embedding(batch["cameras"].to(device)) if cfg.kind == "mvdream" else None  # B V 16

    # 2. the trained UNet against its target
    prediction = unet_on_views(unet, x_t, t, text, cameras)
    target = unfold_views(prediction_target(scheduler, fold_views(x0), fold_views(noise), fold_views(t)), v)
    loss = F.mse_loss(prediction.float(), target.float())
    return loss, {}


# ----------------------------------------------------------------------------------------------
# Output folder and validation
# ----------------------------------------------------------------------------------------------

USAGE = """
import torch
from diffusers_mv3d.foundation import load_baseline
from diffusers_mv3d.sampling import sample_views

baseline = load_baseline("PATH")
views = sample_views(baseline, "a red chair with armrests", num_views=8, num_inference_steps=50,
                     guidance_scale=3.0, generator=torch.manual_seed(0))   # [8, 3, H, W] in [0, 1]
"""

DESCRIPTIONS = {
    "finetune": ("A baseline of TuneMV3D: the foundation's UNet fully fine-tuned on the views of multi-view "
                 "renders (views independent, text encoder frozen)."),
    "mvdream": ("A baseline of TuneMV3D in the style of MVDream: the foundation's UNet fully fine-tuned on "
                "multi-view renders with self-attention over all views of an object and a camera embedding "
                "(flattened camera-to-world matrix, an MLP added to the timestep embedding; text encoder frozen)."),
}


def save_model_folder(folder: Path, unet, cfg: BaselineTrainConfig, step: int, log_path: Path) -> None:
    """``model/``: the foundation's folder with the trained ``unet/``, ``baseline.json`` and README.md, atomically."""
    base = Path(cfg.pretrained_model)

    def write(tmp: Path) -> None:
        for entry in sorted(base.iterdir()):  # text_encoder/, tokenizer/, scheduler/ (vae/, ...) as they are
            if entry.is_dir() and entry.name != "unet" and not entry.name.startswith("."):
                shutil.copytree(entry, tmp / entry.name)
        if (base / "model_index.json").is_file():
            shutil.copy2(base / "model_index.json", tmp / "model_index.json")
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        info = {"kind": cfg.kind, "num_views": cfg.num_input_views, "base_model": cfg.pretrained_model}
        (tmp / BASELINE_FILE).write_text(json.dumps(info, indent=2) + "\n")
        components = {"unet": "UNet2DConditionModel, every weight trained", BASELINE_FILE: "kind and training views"}
        if cfg.kind == "mvdream":
            components["unet"] += (" (class_embed_type projection: the camera MLP; load with load_baseline, which "
                                   "installs the self-attention over views)")
        write_model_card(
            tmp, cfg, "diffusers-mv3d train-baseline", step, log_path, LOSS_KEYS,
            title=f"TuneMV3D baseline: {cfg.kind}",
            description=DESCRIPTIONS[cfg.kind],
            base_model=cfg.pretrained_model,
            components={**components, "others": "the base model's components, unchanged"},
            usage=USAGE,
        )

    atomic_write_folder(folder, write)


@torch.no_grad()
def validation_grid(parts: Foundation, item: Dict, cfg: BaselineTrainConfig,
                    device: torch.device) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Rows: the clean views, views sampled from the caption (``--validation-inference-steps`` DDIM
    steps), then per validation t the noisy views and the one-step x0 prediction (all ``[V, 3, H, W]``
    in [-1, 1]); returns ``(images [rows V, 3, H, W], {"val_x0_mse_t<t>": ...})``. Fixed seed and
    object, so grids of different steps compare."""
    unet, scheduler = parts.unet, parts.noise_scheduler
    generator = torch.Generator().manual_seed(cfg.seed)
    images = item["images"][None].to(device)  # 1 V 3 H W
    v = images.shape[1]
    clean = parts.to_space(images, generator)
    text = parts.encode_text([item["caption"]]).to(device)
    cameras = camera_embedding(item["cameras"].to(device))[None] if cfg.kind == "mvdream" else None  # 1 V 16
    rows, metrics = [images[0]], {}
    with eval_mode(unet):
        if cfg.validation_inference_steps:
            sampled = sample_views(parts, item["caption"], v, item["cameras"], cfg.validation_inference_steps,
                                   cfg.validation_guidance_scale, torch.Generator().manual_seed(cfg.seed))
            rows.append(sampled.to(device) * 2 - 1)
        for t_value in cfg.validation_timesteps:
            t = torch.full((1, v), min(t_value, scheduler.config.num_train_timesteps - 1), device=device)
            noise = torch.randn(clean.shape, generator=generator).to(device)
            x_t = scheduler.add_noise(fold_views(clean), fold_views(noise), fold_views(t))  # V C h w
            prediction = unet_on_views(unet, x_t[None], t, text, cameras)
            x0 = predicted_x0(scheduler, x_t, prediction[0], fold_views(t))
            rows += [parts.to_images(x_t), parts.to_images(x0)]
            metrics[f"val_x0_mse_t{int(t[0, 0])}"] = F.mse_loss(x0, clean[0]).item()
    return torch.cat(rows), metrics


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def main(cfg: BaselineTrainConfig) -> Dict[str, object]:
    """Train; returns a summary (final step, last loss, samples/s, peak RSS, folders, weights hash)."""
    from diffusers import UNet2DConditionModel

    from ..data.dataset import collate_multiview

    # 1. Processes, folders, data, the foundation
    accelerator, log_path, dataset, resume_from, foundation = start_tuning_run(cfg)
    device = accelerator.device

    # 2. The trained UNet: fresh (from the foundation's), or the checkpoint's; text encoder (and VAE) stay frozen
    if resume_from is None:
        unet = build_unet(foundation.unet, cfg)
    else:
        check_architecture(cfg, resume_from)
        unet = UNet2DConditionModel.from_pretrained(resume_from / "unet")
        if cfg.kind == "mvdream":
            set_multiview_self_attention(unet, cfg.num_input_views)
    unet = unet.to(device).requires_grad_(True).train()

    # 3. Optimizer, schedule
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.999),
                                  weight_decay=cfg.weight_decay)
    model, optimizer, lr_scheduler, start_step = prepare_training(accelerator, cfg, unet, optimizer, resume_from)
    raw = accelerator.unwrap_model(model)
    models = {"unet": raw}
    parts = replace(foundation, unet=raw)  # the frozen text encoder (VAE, schedule) with the trained UNet
    del foundation  # (mvdream: frees the foundation's own UNet)

    def save_model(folder: Path, step: int) -> None:
        save_model_folder(folder, raw, cfg, step, log_path)

    def validate(step: int, samples_dir: Path) -> Tuple[torch.Tensor, Dict[str, float]]:
        return validation_grid(parts, dataset[0], cfg, device)

    # 4. Training loop: every random draw of step s comes from step_generator(seed, s, rank)
    hooks = StepHooks(
        compute_losses=lambda batch, generator: baseline_losses(model, parts, batch, cfg, generator, device),
        save_model=save_model, validate=validate, grid_columns=cfg.num_input_views,
    )
    result = train_loop(cfg, accelerator, "train-baseline", models, list(raw.parameters()), optimizer, lr_scheduler,
                        dataset, collate_multiview, start_step, hooks)
    return finish_run(accelerator, cfg, result, models, f"{cfg.kind} baseline")


if __name__ == "__main__":
    import sys

    sys.exit(script_main("train-baseline"))
