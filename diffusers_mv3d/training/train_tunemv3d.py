"""Tune a frozen text-to-image foundation into TuneMV3D (paper §3, DESIGN.md §3 "Training").

The foundation (a diffusers pipeline folder: ours from ``train-foundation``, any Stable Diffusion
folder with ``vae/``, or DeepFloyd-IF stage I) stays frozen: UNet, text encoder and VAE. Two new
models train: ``controlnet`` (:class:`MultiViewControlNetModel`, a copy of the UNet encoder with the
NeuS condition and geometry-aware attention) and ``neus`` (:class:`LatentSparseNeuS`, in the space
the UNet denoises). One step, per object of the batch:

1. 16 rendered views: the 8 input views are noised at one shared t (the foundation's DDPM
   schedule), the 8 others only supervise the NeuS (novel-view reconstruction, §4.1).
2. NeuS encodes the noisy input views once and renders the input cameras in full at
   ``--neus-render-resolution`` (the centralized condition) and a random subset of
   ``--supervision-rays`` pixels of every supervision view.
3. The branch turns the render (and its samples, for the geometry-aware attention) into residuals
   for the frozen UNet; for ``--neus-dropout`` of the objects it runs without the NeuS (the
   consistency-guidance pass of §3.3 then has been trained). ``--caption-dropout`` of the captions
   are empty (classifier-free guidance).
4. Loss = ``--diffusion-loss-weight`` x noise-prediction MSE (epsilon or v, as the foundation's
   scheduler predicts) + ``--reconstruction-loss-weight`` x MSE of the NeuS renders against the
   clean views in the diffusion space (VAE latents x scaling_factor for a latent UNet) +
   ``--mask-loss-weight`` x BCE of the rendered opacity against the object masks.

Launch (the data comes from ``diffusers-mv3d render``, the foundation from ``train-foundation``)::

    diffusers-mv3d render --split objects3d --num-objects 2000 --resolution 32 --out data/objects3d
    diffusers-mv3d train --config configs/tunemv3d-tiny.yaml
    # stopped (Ctrl-C, --stop-at-step, --max-minutes)? continue exactly where the last checkpoint left off
    diffusers-mv3d train --config configs/tunemv3d-tiny.yaml --resume latest
    # see the resolved settings without training
    diffusers-mv3d train --config configs/tunemv3d-tiny.yaml --dry-run
    # a Stable Diffusion foundation (latent space): the render resolution is in latent pixels
    diffusers-mv3d train --config configs/tunemv3d-tiny.yaml --pretrained-model path/to/sd-folder \\
        --resolution 256 --neus-render-resolution 0

    # two processes (DDP; gloo on CPU, NCCL on GPUs); --batch-size stays the global batch
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        -m diffusers_mv3d.cli train --config configs/tunemv3d-tiny.yaml

Outputs under ``--output-dir``: ``model/`` (``controlnet/``, ``neus/`` via ``save_pretrained`` and a
README.md model card; rewritten at every checkpoint, pushed with ``--push-to-hub``),
``checkpoints/checkpoint-NNNNNN/`` (safetensors + JSON, no pickle), ``samples/step-NNNNNN.png``
(validation grids), ``log.jsonl`` and ``config.yaml``.
"""

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ..foundation import Foundation, predicted_x0, prediction_target
from ..hub import write_model_folder
from ..models.views import fold_views, unfold_views
from ..sampling import ddim_scheduler
from .branch import BranchSettings, NeuSSupervisionSettings, TuneMV3DBranch, build_branch_from_unet
from .checkpointing import check_architecture, load_weights_to_continue
from .common import eval_mode, script_main
from .ema import WeightAverage
from .losses import gather_pixels, render_losses
from .runner import (
    StepHooks,
    finish_run,
    prepare_training,
    start_tuning_run,
    train_loop,
)
from .settings import EMASettings, FoundationTuningSettings

__all__ = ["TuneMV3DTrainConfig", "build_branch", "main", "training_losses"]

LOSS_KEYS = ("loss", "loss_diffusion", "loss_reconstruction", "loss_mask")


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------


@dataclass
class TuneMV3DTrainConfig(EMASettings, NeuSSupervisionSettings, BranchSettings, FoundationTuningSettings):
    """Every setting of ``diffusers-mv3d train`` (flags are the field names with dashes): the run's
    (:class:`FoundationTuningSettings`), the EMA's (:class:`EMASettings`, off by default), the branch's
    (:class:`BranchSettings`), its renders' supervision (:class:`NeuSSupervisionSettings`), then these."""

    architecture_settings: ClassVar[tuple] = (
        "pretrained_model", "geometry_attention_levels", "geometry_attention_heads", "geometry_attention_neighbourhood",
        "geometry_attention_samples", "conditioning_channels", "neus_render_resolution", "neus_num_coarse_samples",
        "neus_num_importance_samples", "neus_feature_channels", "neus_encoder_channels", "neus_encoder_downsample",
        "neus_hidden_dim", "neus_num_sdf_layers", "neus_num_color_layers", "neus_num_frequencies")

    output_dir: str = "runs/tunemv3d-tiny"
    """Where model/, checkpoints/, samples/, log.jsonl and config.yaml go."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate of the branch (ControlNet copy, zero convolutions, geometry-aware attention)."""
    neus_learning_rate: float = 1e-3
    """Peak AdamW learning rate of the LatentSparseNeuS."""

    # losses
    diffusion_loss_weight: float = 1.0
    """Weight of the noise-prediction MSE of the frozen UNet + branch on the input views."""
    reconstruction_loss_weight: float = 1.0
    """Weight of the MSE between the NeuS renders and the clean views (all input + supervision views) in the diffusion space."""
    supervision_rays: int = 128
    """Random pixels a supervision view renders a step (the same pixels in each view), at the diffusion-space resolution."""
    neus_dropout: float = 0.1
    """Fraction of objects whose branch runs without the NeuS render and samples (trains the consistency-guidance pass, §3.3)."""
    reference_view_share: float = 0.0
    """Fraction of objects in which 1 to max_reference_views random input views are clean (timestep 0, no noise) and carry no diffusion loss, as the pipeline clamps reference views (§3.4)."""
    max_reference_views: int = 3
    """Most reference views of such an object (each count from 1 equally likely; below num_input_views)."""
    reference_caption_dropout: float = 0.0
    """Fraction of the objects with reference views that also lose their caption (beyond caption_dropout), so the branch learns image-to-multiview from the image alone, as `generate --image` without a prompt asks. 0: off."""
    init_from: Optional[str] = None
    """Start a fresh run from the controlnet/ and neus/ of this folder (a run's model/ or a TuneMV3D pipeline folder such as pipelines/tunemv3d-tiny) instead of a new branch; their configs must match these settings; optimizer, schedule and EMA start anew. Ignored when resuming."""

    at_least = {"diffusion_loss_weight": 0, "reconstruction_loss_weight": 0, "supervision_rays": 1}

    def check_settings(self) -> None:
        self.check(self.num_input_views >= 2, "num_input_views", "must be >= 2 (views must see each other)")
        self.check(self.neus_learning_rate > 0, "neus_learning_rate", "must be > 0")
        self.check(self.diffusion_loss_weight + self.reconstruction_loss_weight + self.mask_loss_weight > 0,
              "diffusion_loss_weight", "and the other loss weights must not all be 0")
        self.check(0.0 <= self.neus_dropout < 1.0, "neus_dropout", "must be in [0, 1)")
        self.check(0.0 <= self.reference_view_share <= 1.0, "reference_view_share", "must be in [0, 1]")
        self.check(0.0 <= self.reference_caption_dropout <= 1.0, "reference_caption_dropout", "must be in [0, 1]")
        self.check(1 <= self.max_reference_views < self.num_input_views, "max_reference_views",
                   f"must be >= 1 and below num_input_views={self.num_input_views} (a view must stay noisy)")
        self.check(self.init_from is None or bool(self.init_from), "init_from", "must name a folder")


def build_branch(foundation: Foundation, cfg: TuneMV3DTrainConfig):
    """Fresh ``controlnet`` (from the frozen UNet) and ``neus`` (in the diffusion space), seeded by ``--seed``."""
    return build_branch_from_unet(foundation.unet, foundation.channels, foundation.vae is not None, cfg, cfg.seed)


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------


def _area_resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``[B, V, C, H, W]`` -> ``[B, V, C, *size]`` (area average; identity at the same size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    folded = F.interpolate(x.flatten(0, 1), size=size, mode="area")
    return folded.reshape(*x.shape[:3], *size)


def step_draws(generator: torch.Generator, batch: int, views: int, channels: int, size: Tuple[int, int],
               num_timesteps: int, num_rays: int, cfg: TuneMV3DTrainConfig) -> Dict[str, torch.Tensor]:
    """Every random draw of one step on one process, in a fixed order (so a resumed run repeats them).

    ``reference_views [B, V]`` marks the clean reference views (§3.4); it is drawn last and only with
    ``reference_view_share > 0``, so runs without references draw what they drew before it existed;
    ``reference_caption_dropout > 0`` then drops the caption of that share of those objects, drawn after.
    """
    height, width = size
    draws = {
        "drop_caption": torch.rand(batch, generator=generator) < cfg.caption_dropout,
        "keep_neus": torch.rand(batch, generator=generator) >= cfg.neus_dropout,
        "timesteps": torch.randint(0, num_timesteps, (batch,), generator=generator),
        "noise": torch.randn((batch, views, channels, height, width), generator=generator),
        "pixel_indices": torch.randperm(height * width, generator=generator)[: min(num_rays, height * width)],
        "global_seed": torch.randint(0, 2**62, (1,), generator=generator),
        "reference_views": torch.zeros(batch, views, dtype=torch.bool),
    }
    if cfg.reference_view_share > 0:
        with_references = torch.rand(batch, generator=generator) < cfg.reference_view_share
        counts = torch.randint(1, cfg.max_reference_views + 1, (batch,), generator=generator) * with_references
        rank = torch.rand(batch, views, generator=generator).argsort(1).argsort(1)  # a random order of the views
        draws["reference_views"] = rank < counts[:, None]
        if cfg.reference_caption_dropout > 0:
            drop = torch.rand(batch, generator=generator) < cfg.reference_caption_dropout
            draws["drop_caption"] = draws["drop_caption"] | (drop & with_references)
    return draws


def training_losses(branch, foundation: Foundation, batch: Dict, cfg: TuneMV3DTrainConfig,
                    generator: torch.Generator, device: torch.device) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The weighted TuneMV3D loss of one batch of :func:`collate_multiview` and its parts (floats).

    ``branch`` is a :class:`TuneMV3DBranch`, possibly DDP-wrapped (the forward must go through the wrapper).
    """
    images = batch["images"].to(device)  # B V 3 H W in [-1, 1]
    supervision = batch["supervision_images"].to(device)  # B Vs 3 H W
    b, v = images.shape[:2]
    space = foundation.space_resolution(images.shape[-1])
    draws = step_draws(generator, b, v, foundation.channels, (space, space),
                       foundation.noise_scheduler.config.num_train_timesteps, cfg.supervision_rays, cfg)
    torch.manual_seed(int(draws["global_seed"]))  # NeuS stratified / importance jitter draws from the global RNG

    # 1. clean views in the diffusion space (VAE latents for a latent model), masks at that resolution
    vae_generator = torch.Generator().manual_seed(int(draws["global_seed"]) % 2**31)
    clean = foundation.to_space(torch.cat([images, supervision], 1), vae_generator)  # B (V + Vs) C h w
    masks = _area_resize(torch.cat([batch["masks"], batch["supervision_masks"]], 1).to(device), (space, space))
    cameras = batch["cameras"].to(device).rescale(space, space)
    supervision_cameras = batch["supervision_cameras"].to(device).rescale(space, space)

    # 2. forward diffusion of the input views, one t an object; reference views stay clean at t = 0 (§3.4)
    x0, references = clean[:, :v], draws["reference_views"].to(device)
    t = draws["timesteps"].to(device)[:, None].expand(b, v).masked_fill(references, 0)  # [B, V]
    noise = draws["noise"].to(device)
    x_t = foundation.noise_scheduler.add_noise(x0.flatten(0, 1), noise.flatten(0, 1), t.flatten()).reshape(x0.shape)
    x_t = torch.where(references[:, :, None, None, None], x0, x_t)
    captions = ["" if drop else caption for drop, caption in zip(draws["drop_caption"].tolist(), batch["caption"])]
    text = foundation.encode_text(captions).to(device)

    # 3. NeuS + branch (the trained part), then the frozen UNet with the residuals
    pixel_indices = draws["pixel_indices"].to(device)
    out = branch(x_t, t, text, cameras, draws["keep_neus"].to(device), supervision_cameras, pixel_indices)
    prediction = foundation.unet_prediction(x_t, t, text, (out["down"], out["mid"]))
    target = unfold_views(prediction_target(foundation.noise_scheduler, fold_views(x0), fold_views(noise), t.flatten()), v)
    loss_diffusion = diffusion_mse(prediction.float(), target.float(), references)

    # 4. NeuS reconstruction: full render of the input views + ray subset of the supervision views
    size = tuple(out["x0"].shape[-2:])
    mse_in, bce_in = render_losses(out["x0"].permute(0, 1, 3, 4, 2), out["opacity"],
                                   _area_resize(x0, size).permute(0, 1, 3, 4, 2), _area_resize(masks[:, :v], size)[:, :, 0])
    if "novel" in out:
        mse_novel, bce_novel = render_losses(out["novel"], out["novel_opacity"], gather_pixels(clean[:, v:], pixel_indices),
                                             gather_pixels(masks[:, v:], pixel_indices)[..., 0])
        vs = supervision.shape[1]
        loss_reconstruction = (v * mse_in + vs * mse_novel) / (v + vs)  # every view weighs the same
        loss_mask = (v * bce_in + vs * bce_novel) / (v + vs)
    else:
        loss_reconstruction, loss_mask = mse_in, bce_in

    loss = (cfg.diffusion_loss_weight * loss_diffusion + cfg.reconstruction_loss_weight * loss_reconstruction
            + cfg.mask_loss_weight * loss_mask)
    parts = {"loss_diffusion": loss_diffusion.item(), "loss_reconstruction": loss_reconstruction.item(),
             "loss_mask": loss_mask.item(), "neus_kept": float(draws["keep_neus"].float().mean()),
             "reference_views": float(references.float().mean())}
    return loss, parts


def diffusion_mse(prediction: torch.Tensor, target: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """MSE over the views ``[B, V, ...]`` that are not references (``references [B, V]`` bool): a clamped
    reference has no noise to predict. Without references, exactly ``F.mse_loss``."""
    if not references.any():
        return F.mse_loss(prediction, target)
    per_view = (prediction - target).pow(2).flatten(2).mean(-1)  # [B, V]
    noisy = (~references).float()
    return (per_view * noisy).sum() / noisy.sum()


# ----------------------------------------------------------------------------------------------
# Output folder and validation
# ----------------------------------------------------------------------------------------------

USAGE = """
from diffusers_mv3d.models.latent_sparse_neus import LatentSparseNeuS
from diffusers_mv3d.models.multiview_controlnet import MultiViewControlNetModel

controlnet = MultiViewControlNetModel.from_pretrained("PATH", subfolder="controlnet")
neus = LatentSparseNeuS.from_pretrained("PATH", subfolder="neus")
# with the base model's unet, text_encoder, tokenizer (and vae): a TuneMV3DPipeline
"""


def save_model_folder(folder: Path, controlnet, neus, cfg: TuneMV3DTrainConfig, step: int, log_path: Path) -> None:
    """``model/``: ``controlnet/`` and ``neus/`` (save_pretrained, safetensors) and README.md, atomically."""
    write_model_folder(
        folder, {"controlnet": controlnet, "neus": neus}, cfg, "diffusers-mv3d train", step, log_path, LOSS_KEYS,
        title="TuneMV3D branch: multi-view ControlNet + latent SparseNeuS",
        description=("The trained parts of TuneMV3D (multi-view 3D generation by tuning a frozen text-to-image "
                     "model): the multi-view ControlNet branch and the latent SparseNeuS, trained with the "
                     "base model frozen. Load them with the base model's UNet, text encoder, tokenizer "
                     "(and VAE) into a TuneMV3DPipeline."),
        base_model=cfg.pretrained_model,
        components={"controlnet": "MultiViewControlNetModel (diffusers_mv3d)",
                    "neus": "LatentSparseNeuS (diffusers_mv3d), renders x0 in the base model's diffusion space"},
        usage=USAGE,
    )


@torch.no_grad()
def pipeline_samples(branch: TuneMV3DBranch, foundation: Foundation, item: Dict, cfg: TuneMV3DTrainConfig,
                     device: torch.device) -> Optional[torch.Tensor]:
    """Views ``[V, 3, H, W]`` in [-1, 1] sampled by :class:`TuneMV3DPipeline` (DDIM, the validation
    caption and cameras, a fixed seed); None when the pipeline is not available."""
    try:
        from ..pipelines import TuneMV3DPipeline
    except ImportError:
        return None
    pipe = TuneMV3DPipeline(unet=foundation.unet, controlnet=branch.controlnet, neus=branch.neus,
                            scheduler=ddim_scheduler(foundation.noise_scheduler.config), text_encoder=foundation.text_encoder,
                            tokenizer=foundation.tokenizer, vae=foundation.vae)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(item["caption"], num_views=len(item["cameras"]), cameras=item["cameras"],
                  num_inference_steps=cfg.validation_inference_steps, guidance_scale=cfg.validation_guidance_scale,
                  generator=torch.Generator().manual_seed(cfg.seed), output_type="pt").images  # V 3 H W in [0, 1]
    height = item["images"].shape[-1]
    if images.shape[-1] != height:
        images = F.interpolate(images, size=(height, height), mode="bilinear", antialias=True, align_corners=False)
    return images.to(device) * 2 - 1


@torch.no_grad()
def validation_grid(branch: TuneMV3DBranch, foundation: Foundation, item: Dict, cfg: TuneMV3DTrainConfig,
                    device: torch.device) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Rows: views sampled by the pipeline (when available, ``--validation-inference-steps`` DDIM steps),
    then per validation t: clean views, noisy views, NeuS x0 render, one-step x0 prediction of the
    frozen UNet + branch (all ``[V, 3, H, W]`` in [-1, 1]); returns ``(images [rows V, 3, H, W], metrics)``.

    Uses a fixed seed and the validation object, so grids of different steps compare.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    images = item["images"][None].to(device)  # 1 V 3 H W
    v, height = images.shape[1], images.shape[-1]
    space = foundation.space_resolution(height)
    clean = foundation.to_space(images, generator)
    cameras = item["cameras"].to(device).rescale(space, space).expand(1)
    text = foundation.encode_text([item["caption"]]).to(device)
    scheduler = foundation.noise_scheduler
    rows, metrics = [], {}

    def show(space_views: torch.Tensor) -> torch.Tensor:  # 1 V C h w -> V 3 H W
        pictures = foundation.to_images(space_views[0])
        if pictures.shape[-1] != height:
            pictures = F.interpolate(pictures, size=(height, height), mode="nearest")
        return pictures

    with eval_mode(branch):
        if cfg.validation_inference_steps:
            sampled = pipeline_samples(branch, foundation, item, cfg, device)
            rows += [] if sampled is None else [sampled]
        for t_value in cfg.validation_timesteps:
            t = torch.tensor([min(t_value, scheduler.config.num_train_timesteps - 1)], device=device)
            noise = torch.randn(clean.shape, generator=generator).to(device)
            x_t = scheduler.add_noise(clean.flatten(0, 1), noise.flatten(0, 1), t.repeat(v)).reshape(clean.shape)
            out = branch(x_t, t, text, cameras, torch.ones(1, dtype=torch.bool, device=device))
            prediction = foundation.unet_prediction(x_t, t, text, (out["down"], out["mid"]))
            x0_pred = predicted_x0(scheduler, x_t, prediction, t)
            rows += [show(clean), show(x_t), show(out["x0"]), show(x0_pred)]
            neus_mse = F.mse_loss(out["x0"], _area_resize(clean, tuple(out["x0"].shape[-2:]))).item()
            metrics[f"val_neus_mse_t{int(t)}"] = neus_mse
            metrics[f"val_x0_mse_t{int(t)}"] = F.mse_loss(x0_pred, clean).item()
    return torch.cat(rows), metrics


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def branch_average(branch: TuneMV3DBranch, cfg: TuneMV3DTrainConfig, resume_from: Optional[Path],
                   device: torch.device) -> Optional[WeightAverage]:
    """The EMA of the branch and NeuS weights with ``--ema-decay`` > 0 (restored when resuming), else None."""
    if cfg.ema_decay == 0:
        return None
    average = WeightAverage(branch, cfg.ema_decay, cfg.ema_power)
    if resume_from is not None:
        if not (resume_from / "ema.safetensors").is_file():
            raise ValueError(f"--ema-decay {cfg.ema_decay}: checkpoint {resume_from} was written without an EMA; "
                             "resume with --ema-decay 0 or start a new --output-dir")
        average.load(resume_from)
    return average.to(device)


def main(cfg: TuneMV3DTrainConfig) -> Dict[str, object]:
    """Train; returns a summary (final step, last losses, samples/s, peak RSS, folders, weights hash)."""
    from ..data.dataset import collate_multiview
    from ..models.latent_sparse_neus import LatentSparseNeuS
    from ..models.multiview_controlnet import MultiViewControlNetModel

    # 1. Processes, folders, data, the frozen foundation
    accelerator, log_path, dataset, resume_from, foundation = start_tuning_run(cfg)
    device = accelerator.device

    # 2. The trained models: fresh, from --init-from, or the weights of the checkpoint
    if resume_from is None:
        controlnet, neus = build_branch(foundation, cfg)
        if cfg.init_from:
            controlnet = load_weights_to_continue(cfg.init_from, "controlnet", controlnet)
            neus = load_weights_to_continue(cfg.init_from, "neus", neus)
    else:
        check_architecture(cfg, resume_from)
        controlnet = MultiViewControlNetModel.from_pretrained(resume_from / "controlnet")
        neus = LatentSparseNeuS.from_pretrained(resume_from / "neus")
    branch = TuneMV3DBranch(controlnet, neus).to(device).train()

    # 3. Optimizer (branch and NeuS learning rates), schedule
    optimizer = torch.optim.AdamW(
        [{"params": list(controlnet.parameters()), "lr": cfg.learning_rate},
         {"params": list(neus.parameters()), "lr": cfg.neus_learning_rate}],
        betas=(0.9, 0.999), weight_decay=cfg.weight_decay,
    )
    branch, optimizer, lr_scheduler, start_step = prepare_training(accelerator, cfg, branch, optimizer,
                                                              resume_from)
    raw = accelerator.unwrap_model(branch)
    models = {"controlnet": raw.controlnet, "neus": raw.neus}
    average = branch_average(raw, cfg, resume_from, device)

    def averaged():  # the EMA weights in the block when there is an EMA
        return average.applied() if average is not None else contextlib.nullcontext()

    def save_model(folder: Path, step: int) -> None:
        with averaged():
            save_model_folder(folder, raw.controlnet, raw.neus, cfg, step, log_path)

    def validate(step: int, samples_dir: Path) -> Tuple[torch.Tensor, Dict[str, float]]:
        with averaged():
            return validation_grid(raw, foundation, dataset[0], cfg, device)

    # 4. Training loop: every random draw of step s comes from step_generator(seed, s, rank)
    hooks = StepHooks(
        compute_losses=lambda batch, generator: training_losses(branch, foundation, batch, cfg, generator, device),
        save_model=save_model, validate=validate, grid_columns=cfg.num_input_views,
        after_step=average.step if average is not None else None,
        checkpoint_extras=average.write if average is not None else None,
    )
    result = train_loop(cfg, accelerator, "train", models, list(raw.parameters()), optimizer, lr_scheduler, dataset,
                        collate_multiview, start_step, hooks)
    return finish_run(accelerator, cfg, result, models, "TuneMV3D branch")


if __name__ == "__main__":
    import sys

    sys.exit(script_main("train"))
