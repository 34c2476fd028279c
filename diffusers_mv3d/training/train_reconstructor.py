"""Train the feed-forward reconstructor of §3.5: a :class:`LatentSparseNeuS` on *clean* views.

The same class as the NeuS inside TuneMV3D, here in pixel space (3 channels) at timestep 0: it
encodes the 8 input views of an object once and renders random rays (``--rays-per-view`` pixels,
the same in every view) of all 16 views, supervised by the rendered colours (MSE), the masks (BCE on
the opacity, ``--mask-loss-weight``) and the eikonal term ``(|grad sdf| - 1)^2`` at
``--eikonal-points`` random points in the object cube (``--eikonal-weight``; a double backward, but
at 256 points a step it costs ~nothing next to the rays: not the ray-sample normals of CPU-FACTS).
With ``--occupancy-weight`` the SDF is also supervised in 3D, by whether each object's ``mesh.glb``
holds ``--occupancy-points`` points (BCE of ``sigmoid(-50 sdf)``): what no view shows, such as the
space under a seat. At generation time it turns the generated views into an SDF, and
:func:`~diffusers_mv3d.mesh.mesh_from_neus` into the mesh.

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
from typing import ClassVar, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ..cameras import Cameras
from ..hub import write_model_folder
from ..mesh import mesh_from_neus
from .branch import NEUS_SETTINGS, NeuSSettings, NeuSSupervisionSettings, build_neus
from .checkpointing import check_architecture, load_weights_to_continue
from .common import eval_mode, script_main
from .losses import gather_pixels, render_losses
from .runner import (
    StepHooks,
    finish_run,
    prepare_training,
    start_multiview_run,
    train_loop,
)
from .settings import MultiViewRunSettings

__all__ = ["ReconstructorTrainConfig", "ReconstructorStep", "build_reconstructor", "main", "misaligned", "over_background", "reconstruction_losses"]

LOSS_KEYS = ("loss", "loss_reconstruction", "loss_mask", "loss_eikonal", "loss_occupancy")

OCCUPANCY_SHARPNESS = 50.0
"""The occupancy term's logit of "inside" is ``-50 sdf``: its probability goes from 0.1 to 0.9 within
about 0.04 of the surface (the noise of the near-surface samples is 0.02; a voxel of the 32^3 IoU
grid is 0.0625)."""


RENAMED_NEUS_SETTINGS = {name[len("neus_"):]: name for name in NEUS_SETTINGS}
"""The reconstructor's NeuS settings before they took the ``neus_`` spelling of ``train`` (issue 15)."""


@dataclass
class ReconstructorTrainConfig(NeuSSupervisionSettings, NeuSSettings, MultiViewRunSettings):
    """Every setting of ``diffusers-mv3d train-reconstructor`` (flags are the field names with dashes):
    the run's (:class:`MultiViewRunSettings`), the NeuS's (:class:`NeuSSettings`), its renders' supervision
    (:class:`NeuSSupervisionSettings`), then these."""

    renamed_settings: ClassVar[Dict[str, str]] = {**RENAMED_NEUS_SETTINGS, "init_radius": "neus_init_radius"}
    architecture_settings: ClassVar[tuple] = (
        "neus_feature_channels", "neus_encoder_channels", "neus_encoder_downsample", "neus_hidden_dim",
        "neus_num_sdf_layers", "neus_num_color_layers", "neus_num_frequencies", "neus_num_coarse_samples",
        "neus_num_importance_samples", "neus_init_radius")

    output_dir: str = "runs/reconstructor-tiny"
    """Where model/, checkpoints/, samples/, log.jsonl and config.yaml go."""
    batch_size: int = 4
    """Global batch in objects an optimizer step, split evenly across processes."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate."""
    lr_scheduler: str = "cosine"
    """After the warm-up: constant, or cosine decay to 0 at max_train_steps."""

    # losses
    rays_per_view: int = 128
    """Random pixels rendered in every input and supervision view a step (the same pixels in each view)."""
    eikonal_weight: float = 0.1
    """Weight of the eikonal term (|grad sdf| - 1)^2 at random points in the object cube (keeps the SDF a distance for meshing); 0 skips it."""
    eikonal_points: int = 256
    """Random points an object for the eikonal term."""
    occupancy_weight: float = 0.0
    """Weight of the 3D supervision: the BCE between sigmoid(-50 sdf) and whether the object's mesh.glb holds the point, at occupancy_points points an object (half uniform, half near the surface). It teaches what no view shows, such as the empty space under a seat that every view of the orbit sees through the seat. 0 skips it (and needs no meshes)."""
    occupancy_points: int = 512
    """Points an object for the occupancy term (the same points for an object every time it is drawn)."""
    neus_init_radius: float = 0.5
    """Radius of the initial SDF sphere."""
    validation_mesh_resolution: int = 48
    """Marching-cubes grid of the validation mesh (0 = no mesh)."""
    tinted_background_share: float = 0.0
    """Fraction of objects whose input views lie over a random background colour a view (the tints of generated views) while the targets stay on white, so the reconstructor meshes the object, not the background. 0: clean renders only."""
    misaligned_view_share: float = 0.0
    """Fraction of objects whose input views are each shifted and scaled by a random amount (up to misalignment_pixels) while the targets stay put, so the reconstructor learns to mesh views that disagree a little, as generated views do. 0: aligned views only."""
    misalignment_pixels: float = 1.5
    """Largest shift of a misaligned view in pixels (and largest change of its scale, as the same number of pixels at the view's edge)."""
    generated_views_dir: Optional[str] = None
    """A folder of image-to-multiview views of training objects (scripts/generate_reconstructor_inputs.py writes it): the run trains on the objects it holds, and generated_view_share of them a step see the generated views as input while the targets stay the renders."""
    generated_view_share: float = 0.0
    """Fraction of objects whose input views are their generated versions (needs generated_views_dir), so the reconstructor meshes the object the views show, not their disagreements. 0: renders only."""
    init_from: Optional[str] = None
    """Start a fresh run from the reconstructor/ of this folder (a run's model/ or a TuneMV3D pipeline folder such as pipelines/tunemv3d-tiny) instead of a new one; its config must match these settings; optimizer and schedule start anew. Ignored when resuming."""

    at_least = {"num_input_views": 1, "rays_per_view": 1, "eikonal_weight": 0, "eikonal_points": 1,
                "occupancy_weight": 0, "occupancy_points": 2}

    def check_settings(self) -> None:
        self.check(0 < self.neus_init_radius < 1, "neus_init_radius", "must be in (0, 1) (inside the unit bounding sphere)")
        self.check(self.validation_mesh_resolution == 0 or self.validation_mesh_resolution >= 8,
              "validation_mesh_resolution", "must be 0 or >= 8")
        self.check(0.0 <= self.tinted_background_share <= 1.0, "tinted_background_share", "must be in [0, 1]")
        self.check(0.0 <= self.misaligned_view_share <= 1.0, "misaligned_view_share", "must be in [0, 1]")
        self.check(self.misalignment_pixels >= 0, "misalignment_pixels", "must be >= 0")
        self.check(0.0 <= self.generated_view_share <= 1.0, "generated_view_share", "must be in [0, 1]")
        self.check(self.generated_view_share == 0 or bool(self.generated_views_dir), "generated_view_share",
                   "needs generated_views_dir (the generated views to use)")
        self.check(self.init_from is None or bool(self.init_from), "init_from", "must name a folder")


def build_reconstructor(cfg: ReconstructorTrainConfig):
    """A fresh pixel-space :class:`LatentSparseNeuS` (3 channels, white background), seeded by ``--seed``;
    it renders at full resolution (what it is given)."""
    torch.manual_seed(cfg.seed)
    return build_neus(cfg, in_channels=3, background=1.0, render_resolution=None, init_radius=cfg.neus_init_radius)


class ReconstructorStep(torch.nn.Module):
    """The reconstructor's trained forward as one module (what DDP wraps): encode the clean input views
    at t = 0, render rays of the query cameras, the SDF gradients at the eikonal points and the SDF at
    the occupancy points."""

    def __init__(self, neus):
        super().__init__()
        self.neus = neus

    def forward(self, views, cameras, query_cameras, pixel_indices, eikonal_points=None, occupancy_points=None):
        """
        Args:
            views: ``[B, V, 3, H, W]`` clean views in [-1, 1]; cameras ``[B, V]`` at ``H x W``.
            query_cameras: ``[B, Vq]``; pixel_indices: ``[N]`` row-major pixels rendered in each.
            eikonal_points: ``[B, P, 3]`` world points or None.
            occupancy_points: ``[B, Po, 3]`` world points or None.

        Returns:
            a dict: ``colors [B, Vq, N, 3]``, ``opacity [B, Vq, N]``, and with their points
            ``sdf_gradients [B, P, 3]`` and ``occupancy_sdf [B, Po]``.
        """
        context = self.neus.encode(views, 0, cameras)
        rays = self.neus.render(context, query_cameras, pixel_indices)
        out = {"colors": rays.colors, "opacity": rays.opacity}
        if eikonal_points is not None:
            points = eikonal_points.requires_grad_(True)
            sdf = self.neus.sdf(points, context)
            (out["sdf_gradients"],) = torch.autograd.grad(sdf.sum(), points, create_graph=True)
        if occupancy_points is not None:
            out["occupancy_sdf"] = self.neus.sdf(occupancy_points, context)
        return out


def over_background(images: torch.Tensor, masks: torch.Tensor, colours: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """Views ``[B, V, 3, H, W]`` rendered over white, recomposited over ``colours [B, V, 3, 1, 1]`` with their
    ``masks [B, V, 1, H, W]`` (alpha) in the ``objects [B]`` (bool) chosen; the others unchanged."""
    recoloured = images + (1.0 - masks) * (colours - 1.0)  # white (1) -> colour where the alpha is 0
    return torch.where(objects[:, None, None, None, None], recoloured, images)


def misaligned(images: torch.Tensor, offsets: torch.Tensor, scales: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """Views ``[B, V, 3, H, W]`` on white, each scaled about its centre by ``scales [B, V]`` and shifted by
    ``offsets [B, V, 2]`` (x, y in pixels), in the ``objects [B]`` (bool) chosen; the others unchanged.
    What comes into the frame is the border's colour (the white background)."""
    b, v, c, h, w = images.shape
    theta = torch.zeros(b * v, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scales.flatten()  # output pixel -> input pixel
    size = torch.tensor([w, h], dtype=images.dtype, device=images.device)
    theta[:, :, 2] = -2.0 * offsets.reshape(-1, 2) / size / scales.flatten()[:, None]
    grid = F.affine_grid(theta, [b * v, c, h, w], align_corners=False)
    moved = F.grid_sample(images.reshape(b * v, c, h, w), grid, padding_mode="border", align_corners=False)
    return torch.where(objects[:, None, None, None, None], moved.reshape(b, v, c, h, w), images)


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
    if cfg.tinted_background_share > 0:  # drawn last: runs without it draw what they drew before
        tinted = torch.rand(b, generator=generator) < cfg.tinted_background_share
        colours = torch.rand(b, images.shape[1], 3, 1, 1, generator=generator) * 2 - 1
        images = over_background(images, batch["masks"].to(device), colours.to(device), tinted.to(device))
    if cfg.misaligned_view_share > 0:  # drawn after the tints, for the same reason
        chosen = torch.rand(b, generator=generator) < cfg.misaligned_view_share
        offsets = (torch.rand(b, images.shape[1], 2, generator=generator) * 2 - 1) * cfg.misalignment_pixels
        scales = 1 + (torch.rand(b, images.shape[1], generator=generator) * 2 - 1) * cfg.misalignment_pixels / (width / 2)
        images = misaligned(images, offsets.to(device), scales.to(device), chosen.to(device))
    if cfg.generated_view_share > 0:  # drawn last, for the same reason; in place of the (changed) renders
        chosen = (torch.rand(b, generator=generator) < cfg.generated_view_share).to(device)
        images = torch.where(chosen[:, None, None, None, None], batch["generated_images"].to(device), images)

    occupancy_points = batch["occupancy_points"].to(device) if cfg.occupancy_weight > 0 else None
    out = step_module(images, cameras, query, pixel_indices.to(device),
                      points.to(device) if cfg.eikonal_weight > 0 else None, occupancy_points)
    loss_reconstruction, loss_mask = render_losses(out["colors"], out["opacity"], gather_pixels(targets, pixel_indices.to(device)),
                                                   gather_pixels(masks, pixel_indices.to(device))[..., 0])
    loss = loss_reconstruction + cfg.mask_loss_weight * loss_mask
    parts = {"loss_reconstruction": loss_reconstruction.item(), "loss_mask": loss_mask.item()}
    if "sdf_gradients" in out:
        loss_eikonal = ((out["sdf_gradients"].norm(dim=-1) - 1.0) ** 2).mean()
        loss = loss + cfg.eikonal_weight * loss_eikonal
        parts["loss_eikonal"] = loss_eikonal.item()
    if "occupancy_sdf" in out:
        loss_occupancy = F.binary_cross_entropy_with_logits(-OCCUPANCY_SHARPNESS * out["occupancy_sdf"],
                                                            batch["occupancy"].to(device))
        loss = loss + cfg.occupancy_weight * loss_occupancy
        parts["loss_occupancy"] = loss_occupancy.item()
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
    with eval_mode(neus):
        context = neus.encode(views, 0, cameras)
        rays = neus.render(context, query)
        mesh = None
        if mesh_resolution:
            try:
                mesh = mesh_from_neus(neus, context, mesh_resolution)
            except ValueError:  # an SDF without a surface yet (early training)
                mesh = None
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
    write_model_folder(
        folder, {"reconstructor": neus}, cfg, "diffusers-mv3d train-reconstructor", step, log_path, LOSS_KEYS,
        title="TuneMV3D reconstructor: feed-forward SparseNeuS on clean views",
        description=("The post-processing model of TuneMV3D §3.5: a LatentSparseNeuS trained on clean multi-view "
                     "renders (pixel space, t = 0) that turns generated views into an SDF and a mesh in one "
                     "forward pass. The `reconstructor` component of a TuneMV3DPipeline."),
        base_model="none (trained from scratch)",
        components={"reconstructor": "LatentSparseNeuS (diffusers_mv3d), in_channels 3"},
        tags=("diffusers", "diffusers-mv3d", "tunemv3d", "sparseneus", "image-to-3d"),
        usage=USAGE,
    )


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
    accelerator, log_path, dataset, resume_from = start_multiview_run(cfg)
    device = accelerator.device

    # 2. Model: fresh, from --init-from, or the weights of the checkpoint
    if resume_from is None:
        neus = build_reconstructor(cfg)
        if cfg.init_from:
            neus = load_weights_to_continue(cfg.init_from, "reconstructor", neus)
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

    def save_model(folder: Path, step: int) -> None:
        save_model_folder(folder, raw.neus, cfg, step, log_path)

    def validate(step: int, samples_dir: Path) -> Tuple[torch.Tensor, Dict[str, object]]:
        return validation_outputs(raw.neus, dataset[0], cfg, device, step, samples_dir)

    # 4. Training loop: every random draw of step s comes from step_generator(seed, s, rank)
    hooks = StepHooks(
        compute_losses=lambda batch, generator: reconstruction_losses(step_module, batch, cfg, generator, device),
        save_model=save_model, validate=validate, grid_columns=cfg.num_input_views,
    )
    result = train_loop(cfg, accelerator, "train-reconstructor", models, list(raw.parameters()), optimizer,
                        lr_scheduler, dataset, collate_multiview, start_step, hooks)
    return finish_run(accelerator, cfg, result, models, "TuneMV3D reconstructor")


if __name__ == "__main__":
    import sys

    sys.exit(script_main("train-reconstructor"))
