"""Train the feed-forward reconstructor of §3.5: a :class:`LatentSparseNeuS` on *clean* views.

The same class as the NeuS inside TuneMV3D, here in pixel space (3 channels) at timestep 0: it
encodes the 8 input views of an object once and renders random rays (``--rays-per-view`` pixels,
the same in every view) of all 16 views, supervised by the rendered colours (MSE), the masks (BCE on
the opacity, ``--mask-loss-weight``) and the eikonal term ``(|grad sdf| - 1)^2`` at
``--eikonal-points`` random points in the object cube (``--eikonal-weight``; a double backward, but
at 256 points a step it costs ~nothing next to the rays: not the ray-sample normals of CPU-FACTS). At
generation time it turns the generated views into an SDF, and :func:`~diffusers_mv3d.mesh.mesh_from_neus` into
the mesh.

Launch::

    diffusers-mv3d render --split objects3d --num-objects 2000 --resolution 32 --out data/objects3d
    diffusers-mv3d train-reconstructor --config configs/reconstructor-tiny.yaml
    diffusers-mv3d train-reconstructor --config configs/reconstructor-tiny.yaml --resume latest
    diffusers-mv3d train-reconstructor --config configs/reconstructor-tiny.yaml --dry-run
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        -m diffusers_mv3d.cli train-reconstructor --config configs/reconstructor-tiny.yaml

Outputs under ``--output-dir``: ``model/`` (``reconstructor/`` via ``save_pretrained`` and a README.md
model card; rewritten at every checkpoint), ``checkpoints/checkpoint-NNNNNN/`` (safetensors + JSON),
``samples/step-NNNNNN.png`` (rows: input views, their renders, novel views, their renders, opacity)
and ``step-NNNNNN.glb`` (the validation object's mesh), ``log.jsonl`` and ``config.yaml``.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ..cameras import Cameras
from ..mesh import mesh_from_neus
from ..io_utils import atomic_write_folder
from .checkpointing import check_architecture, resolve_resume
from .common import (
    add_trainer_parser,
    check_batch_size,
    final_step,
    make_accelerator,
    run_trainer,
    script_main,
    step_loader,
)
from .config import command_line, config_to_dict
from .loop import (
    check_common_settings,
    check_log_and_hub_settings,
    check_optimisation_settings,
    finish_run,
    load_multiview_dataset,
    prepare_training,
    run_paths,
    setting_check,
    train_loop,
    write_run_config,
)
from ..hub import losses_from_log, write_model_card
from .train_tunemv3d import gather_pixels, render_losses

__all__ = ["ReconstructorTrainConfig", "ReconstructorStep", "add_parser", "build_reconstructor", "main", "reconstruction_losses"]

LOSS_KEYS = ("loss", "loss_reconstruction", "loss_mask", "loss_eikonal")


@dataclass
class ReconstructorTrainConfig:
    """Every setting of ``diffusers-mv3d train-reconstructor`` (flags are the field names with dashes)."""

    # data and outputs
    data_dir: str = "data/objects3d"
    """Multi-view object folders written by `diffusers-mv3d render --split objects3d` (or chairs3d)."""
    output_dir: str = "runs/reconstructor-tiny"
    """Where model/, checkpoints/, samples/, log.jsonl and config.yaml go."""
    resolution: int = 32
    """Views are resized to this square size in pixels."""
    num_input_views: int = 8
    """Views an object the reconstructor encodes."""
    num_supervision_views: int = 8
    """Further views an object that only supervise renders (novel views)."""
    num_workers: int = 0
    """DataLoader worker processes (0 loads in the training process)."""

    # optimisation
    max_train_steps: int = 20000
    """Optimizer steps of the whole run (the schedule spans these)."""
    batch_size: int = 4
    """Global batch in objects an optimizer step, split evenly across processes."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate."""
    lr_scheduler: str = "cosine"
    """After the warm-up: constant, or cosine decay to 0 at max_train_steps."""
    lr_warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this."""
    seed: int = 0
    """Seeds the initial weights and, with the step number, each step's batch order, rays and eikonal points."""
    mixed_precision: str = "no"
    """Accelerator mixed precision: no, fp16 or bf16 (use no on CPUs)."""

    # losses
    rays_per_view: int = 128
    """Random pixels rendered in every input and supervision view a step (the same pixels in each view)."""
    mask_loss_weight: float = 0.1
    """Weight of the BCE between the rendered opacity and the object masks."""
    eikonal_weight: float = 0.1
    """Weight of the eikonal term (|grad sdf| - 1)^2 at random points in the object cube (keeps the SDF a distance for meshing); 0 skips it."""
    eikonal_points: int = 256
    """Random points an object for the eikonal term."""

    # the NeuS (its config is saved with the weights)
    feature_channels: int = 16
    """Channels of the encoded view features."""
    encoder_channels: int = 32
    """Width of the view encoder."""
    encoder_downsample: int = 2
    """Stride of the view encoder (features at resolution / stride)."""
    hidden_dim: int = 64
    """Width of the SDF and colour MLPs."""
    num_sdf_layers: int = 3
    """Depth of the SDF MLP."""
    num_color_layers: int = 2
    """Depth of the colour MLP."""
    num_frequencies: int = 4
    """Positional-encoding frequencies of the 3D points."""
    num_coarse_samples: int = 16
    """Stratified samples a ray."""
    num_importance_samples: int = 8
    """Importance samples a ray (from the coarse weights)."""
    init_radius: float = 0.5
    """Radius of the initial SDF sphere."""
    chunk_size: int = 16384
    """Rays rendered at once (bounds peak memory, not the result)."""

    # checkpoints, validation, stopping, Hub
    checkpointing_steps: int = 250
    """Write a checkpoint (and refresh model/) every this many steps, and at the end."""
    checkpoints_total_limit: int = 3
    """Keep only the newest this many checkpoints (0 keeps all)."""
    resume: Optional[str] = None
    """Continue from a checkpoint: "latest" (the newest under output_dir/checkpoints, or a fresh start if none) or a checkpoint folder."""
    stop_at_step: int = 0
    """Stop (after writing a checkpoint) at this step although the schedule runs to max_train_steps; 0 = do not."""
    max_minutes: float = 0.0
    """Stop (after writing a checkpoint) once this many minutes of training have passed; 0 = no limit."""
    validation_steps: int = 500
    """Render the validation object's views (and mesh) every this many steps and at the end (0 = never)."""
    validation_mesh_resolution: int = 48
    """Marching-cubes grid of the validation mesh (0 = no mesh)."""
    log_every: int = 10
    """Append the losses, lr, samples/s and peak RSS to log.jsonl every this many steps."""
    push_to_hub: bool = False
    """Upload model/ to the Hub at the end (huggingface_hub upload, as ModelMixin.push_to_hub)."""
    hub_model_id: Optional[str] = None
    """Hub repository (owner/name) of --push-to-hub."""
    hub_private: bool = False
    """Create the Hub repository private."""

    def __post_init__(self) -> None:
        check = setting_check(self)

        check(bool(self.data_dir), "data_dir", "must name a folder")
        check(bool(self.output_dir), "output_dir", "must name a folder")
        check(self.resolution > 0, "resolution", "must be > 0")
        check(self.num_input_views >= 1, "num_input_views", "must be >= 1")
        check(self.num_supervision_views >= 0, "num_supervision_views", "must be >= 0")
        check(self.num_workers >= 0, "num_workers", "must be >= 0")
        check(self.max_train_steps > 0, "max_train_steps", "must be > 0")
        check(self.batch_size > 0, "batch_size", "must be > 0")
        check(self.learning_rate > 0, "learning_rate", "must be > 0")
        check_optimisation_settings(self, check)
        check(self.rays_per_view >= 1, "rays_per_view", "must be >= 1")
        check(self.mask_loss_weight >= 0, "mask_loss_weight", "must be >= 0")
        check(self.eikonal_weight >= 0, "eikonal_weight", "must be >= 0")
        check(self.eikonal_points >= 1, "eikonal_points", "must be >= 1")
        for name in ("feature_channels", "encoder_channels", "encoder_downsample", "hidden_dim", "num_sdf_layers",
                     "num_color_layers", "chunk_size"):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        check(self.num_frequencies >= 0, "num_frequencies", "must be >= 0")
        check(self.num_coarse_samples >= 2, "num_coarse_samples", "must be >= 2")
        check(self.num_importance_samples >= 0, "num_importance_samples", "must be >= 0")
        check(0 < self.init_radius < 1, "init_radius", "must be in (0, 1) (inside the unit bounding sphere)")
        check_common_settings(self, check)
        check(self.validation_mesh_resolution == 0 or self.validation_mesh_resolution >= 8,
              "validation_mesh_resolution", "must be 0 or >= 8")
        check_log_and_hub_settings(self, check)

    def architecture(self) -> Dict[str, object]:
        """The settings that fix the weights' shapes (a resumed run must keep them)."""
        names = ("feature_channels", "encoder_channels", "encoder_downsample", "hidden_dim", "num_sdf_layers",
                 "num_color_layers", "num_frequencies", "num_coarse_samples", "num_importance_samples", "init_radius")
        return {name: config_to_dict(self)[name] for name in names}


def build_reconstructor(cfg: ReconstructorTrainConfig):
    """A fresh pixel-space :class:`LatentSparseNeuS` (3 channels, white background), seeded by ``--seed``."""
    from ..models.latent_sparse_neus import LatentSparseNeuS

    torch.manual_seed(cfg.seed)
    return LatentSparseNeuS(
        in_channels=3,
        feature_channels=cfg.feature_channels,
        encoder_channels=cfg.encoder_channels,
        encoder_downsample=cfg.encoder_downsample,
        hidden_dim=cfg.hidden_dim,
        num_sdf_layers=cfg.num_sdf_layers,
        num_color_layers=cfg.num_color_layers,
        num_frequencies=cfg.num_frequencies,
        num_coarse_samples=cfg.num_coarse_samples,
        num_importance_samples=cfg.num_importance_samples,
        render_resolution=None,  # full resolution: the reconstructor renders what it is given
        init_radius=cfg.init_radius,
        background=1.0,
        chunk_size=cfg.chunk_size,
    )


class ReconstructorStep(torch.nn.Module):
    """The reconstructor's trained forward as one module (what DDP wraps): encode the clean input views
    at t = 0, render rays of the query cameras, and the SDF gradients at the eikonal points."""

    def __init__(self, neus):
        super().__init__()
        self.neus = neus

    def forward(self, views, cameras, query_cameras, pixel_indices, eikonal_points=None):
        """
        Args:
            views: ``[B, V, 3, H, W]`` clean views in [-1, 1]; cameras ``[B, V]`` at ``H x W``.
            query_cameras: ``[B, Vq]``; pixel_indices: ``[N]`` row-major pixels rendered in each.
            eikonal_points: ``[B, P, 3]`` world points or None.

        Returns:
            a dict: ``colors [B, Vq, N, 3]``, ``opacity [B, Vq, N]`` and ``sdf_gradients [B, P, 3]``.
        """
        context = self.neus.encode(views, 0, cameras)
        rays = self.neus.render(context, query_cameras, pixel_indices)
        out = {"colors": rays.colors, "opacity": rays.opacity}
        if eikonal_points is not None:
            points = eikonal_points.requires_grad_(True)
            sdf = self.neus.sdf(points, context)
            (out["sdf_gradients"],) = torch.autograd.grad(sdf.sum(), points, create_graph=True)
        return out


def reconstruction_losses(step_module, batch: Dict, cfg: ReconstructorTrainConfig, generator: torch.Generator,
                          device: torch.device) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The weighted reconstructor loss of one :func:`collate_multiview` batch and its parts (floats)."""
    images = batch["images"].to(device)  # B V 3 H W
    targets = torch.cat([images, batch["supervision_images"].to(device)], 1)  # B (V + Vs) 3 H W
    masks = torch.cat([batch["masks"], batch["supervision_masks"]], 1).to(device)
    cameras = batch["cameras"].to(device)
    query = Cameras.cat([cameras, batch["supervision_cameras"].to(device)], dim=1)  # B (V + Vs)
    b, (height, width) = images.shape[0], images.shape[-2:]
    # every random draw of the step, in a fixed order
    pixel_indices = torch.randperm(height * width, generator=generator)[: min(cfg.rays_per_view, height * width)]
    points = torch.rand(b, cfg.eikonal_points, 3, generator=generator) * 2 - 1  # the object cube [-1, 1]^3
    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))  # NeuS ray jitter (global RNG)

    out = step_module(images, cameras, query, pixel_indices.to(device),
                      points.to(device) if cfg.eikonal_weight > 0 else None)
    loss_reconstruction, loss_mask = render_losses(out["colors"], out["opacity"], gather_pixels(targets, pixel_indices.to(device)),
                                                   gather_pixels(masks, pixel_indices.to(device))[..., 0])
    loss = loss_reconstruction + cfg.mask_loss_weight * loss_mask
    parts = {"loss_reconstruction": loss_reconstruction.item(), "loss_mask": loss_mask.item()}
    if "sdf_gradients" in out:
        loss_eikonal = ((out["sdf_gradients"].norm(dim=-1) - 1.0) ** 2).mean()
        loss = loss + cfg.eikonal_weight * loss_eikonal
        parts["loss_eikonal"] = loss_eikonal.item()
    return loss, parts


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(a.float(), b.float()).clamp(min=1e-10)
    return float(10 * torch.log10(4.0 / mse))


@torch.no_grad()
def validation_renders(neus, item: Dict, device: torch.device, mesh_resolution: int = 0):
    """Full renders of the validation object's input and supervision views.

    Returns ``(grid [5 V, 3, H, W], metrics, mesh or None)``: rows of input views, their renders,
    supervision views, their renders (padded to V columns) and opacity of the input views.
    """
    views = item["images"][None].to(device)
    cameras = item["cameras"].to(device).expand(1)
    query = Cameras.cat([cameras, item["supervision_cameras"].to(device).expand(1)], dim=1)
    was_training = neus.training
    neus.eval()
    try:
        context = neus.encode(views, 0, cameras)
        rays = neus.render(context, query)
        mesh = None
        if mesh_resolution:
            try:
                mesh = mesh_from_neus(neus, context, mesh_resolution)
            except ValueError:  # an SDF without a surface yet (early training)
                mesh = None
    finally:
        neus.train(was_training)
    v, (h, w) = views.shape[1], views.shape[-2:]
    rendered = rays.colors[0].reshape(-1, h, w, 3).permute(0, 3, 1, 2)  # (V + Vs) 3 H W
    opacity = rays.opacity[0].reshape(-1, 1, h, w)[:v].expand(-1, 3, -1, -1) * 2 - 1
    truth = torch.cat([views[0], item["supervision_images"].to(device)])
    metrics = {"val_input_psnr": psnr(rendered[:v], truth[:v])}
    if len(truth) > v:
        metrics["val_novel_psnr"] = psnr(rendered[v:], truth[v:])

    def row(images: torch.Tensor) -> torch.Tensor:  # pad / cut to V columns
        if len(images) >= v:
            return images[:v]
        return torch.cat([images, torch.ones(v - len(images), 3, h, w, device=images.device)])

    grid = torch.cat([row(truth[:v]), row(rendered[:v]), row(truth[v:]), row(rendered[v:]), opacity])
    return grid.clamp(-1, 1), metrics, mesh


USAGE = """
from diffusers_mv3d.mesh import mesh_from_neus
from diffusers_mv3d.models.latent_sparse_neus import LatentSparseNeuS

reconstructor = LatentSparseNeuS.from_pretrained("PATH", subfolder="reconstructor")
context = reconstructor.encode(views, 0, cameras)       # views [1, V, 3, H, W] in [-1, 1]
mesh = mesh_from_neus(reconstructor, context, resolution=128)
"""


def save_model_folder(folder: Path, neus, cfg: ReconstructorTrainConfig, step: int, log_path: Path) -> None:
    """``model/``: ``reconstructor/`` (save_pretrained, safetensors) and README.md, atomically."""

    def write(tmp: Path) -> None:
        neus.save_pretrained(tmp / "reconstructor", safe_serialization=True)
        write_model_card(
            tmp,
            title="TuneMV3D reconstructor: feed-forward SparseNeuS on clean views",
            description=("The post-processing model of TuneMV3D §3.5: a LatentSparseNeuS trained on clean multi-view "
                         "renders (pixel space, t = 0) that turns generated views into an SDF and a mesh in one "
                         "forward pass. The `reconstructor` component of a TuneMV3DPipeline."),
            base_model="none (trained from scratch)",
            data=cfg.data_dir,
            steps=step,
            losses=losses_from_log(log_path, LOSS_KEYS),
            command=command_line("diffusers-mv3d train-reconstructor", cfg),
            components={"reconstructor": "LatentSparseNeuS (diffusers_mv3d), in_channels 3"},
            settings=cfg,
            tags=("diffusers", "diffusers-mv3d", "tunemv3d", "sparseneus", "image-to-3d"),
            usage=USAGE,
        )

    atomic_write_folder(folder, write)


def validation_outputs(neus, item: Dict, cfg: ReconstructorTrainConfig, device: torch.device, step: int,
                       samples_dir: Path) -> Tuple[torch.Tensor, Dict[str, object]]:
    """The validation grid and its log record; writes the mesh to ``samples_dir/step-NNNNNN.glb`` (when there is one)."""
    grid, metrics, mesh = validation_renders(neus, item, device, cfg.validation_mesh_resolution)
    if mesh is not None:
        mesh.export(str(samples_dir / f"step-{step:06d}.glb"))
    return grid, {**metrics, "mesh_faces": 0 if mesh is None else len(mesh.faces)}


def main(cfg: ReconstructorTrainConfig) -> Dict[str, object]:
    """Train; returns a summary (final step, last losses, samples/s, peak RSS, folders, weights hash)."""
    from ..data.dataset import collate_multiview
    from ..models.latent_sparse_neus import LatentSparseNeuS

    # 1. Processes, folders, data
    accelerator = make_accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    check_batch_size(cfg, world)
    device = accelerator.device
    _, _, log_path = run_paths(cfg)
    dataset = load_multiview_dataset(cfg)
    resume_from = resolve_resume(cfg)

    # 2. Model: fresh, or the weights of the checkpoint
    if resume_from is None:
        neus = build_reconstructor(cfg)
    else:
        check_architecture(cfg, resume_from)
        neus = LatentSparseNeuS.from_pretrained(resume_from / "reconstructor")
    step_module = ReconstructorStep(neus).to(device).train()

    # 3. Optimizer, schedule
    optimizer = torch.optim.AdamW(neus.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.999),
                                  weight_decay=cfg.weight_decay)
    step_module, optimizer, lr_scheduler, start_step = prepare_training(accelerator, cfg, step_module, optimizer,
                                                                   resume_from)
    raw = accelerator.unwrap_model(step_module)
    models = {"reconstructor": raw.neus}

    end_step = final_step(cfg)
    loader = step_loader(dataset, cfg, start_step, end_step, rank, world, collate_multiview)
    write_run_config(accelerator, cfg)

    def save_model(folder: Path, step: int) -> None:
        save_model_folder(folder, raw.neus, cfg, step, log_path)

    def validate(step: int, samples_dir: Path) -> Tuple[torch.Tensor, Dict[str, object]]:
        return validation_outputs(raw.neus, dataset[0], cfg, device, step, samples_dir)

    # 4. Training loop: every random draw of step s comes from step_generator(seed, s, rank)
    result = train_loop(
        cfg, accelerator, "train-reconstructor", models, list(raw.parameters()), optimizer, lr_scheduler, loader,
        start_step, end_step,
        compute_losses=lambda batch, generator: reconstruction_losses(step_module, batch, cfg, generator, device),
        save_model=save_model, validate=validate,
    )
    return finish_run(accelerator, cfg, result, models, "TuneMV3D reconstructor")


def add_parser(subparsers) -> None:
    """Register ``train-reconstructor`` with the ``diffusers-mv3d`` sub-command parser."""
    add_trainer_parser(
        subparsers, "train-reconstructor",
        help="train the feed-forward SparseNeuS reconstructor (views -> SDF -> mesh, §3.5)",
        description=__doc__, config_class=ReconstructorTrainConfig, run_from_args=run_from_args,
    )


def run_from_args(args) -> int:
    return run_trainer("train-reconstructor", ReconstructorTrainConfig, main, args)


if __name__ == "__main__":
    import sys

    sys.exit(script_main("train-reconstructor", "train_reconstructor", add_parser, run_from_args))
