"""``diffusers-mv3d evaluate``: multi-view quality of a pipeline on a fixed prompt set (DESIGN.md §6).

For every *variant* (below), every prompt of the prompt set and every seed, one object of ``views``
views is generated (or, for the two references, rendered) at the default orbit cameras and scored:

* consistency, independent of the model (:mod:`.consistency`): visual-hull IoU (with the masks'
  ``coverage``, without which a view of pure noise looks consistent), photo-consistency of the
  hull's surface, and the held-out-view reconstruction PSNR (views ``held_out`` = 1 and 5);
* fidelity (:func:`.classifier.fidelity`): category and colour accuracy of the attribute classifier
  on the views against the prompt's labels, split into prompts whose (category, colour) some 3D
  tuning split holds ("in-split") and prompts only the 2D foundation data holds ("out-of-split",
  creativity kept);
* the wall time of generating one object.

Variants (one flag value each, all on the same prompts, seeds and initial noise):

=====================  ===========================================================================
``foundation``         the frozen UNet alone sampling every view independently: the pipeline's own
                       UNet (or ``--foundation``'s), the same DDIM loop, CFG and initial noise (one
                       noise a view), as ``benchmarks/bench_cost.py::plain_unet_seconds``
``tunemv3d``           the pipeline as saved (its K and alpha)
``k0`` ... ``k1``      consistency ratio K = 0, 0.25, 0.5, 1 (alpha from the model)
``alpha3/15``          consistency scale alpha = 3, 15 (K from the model)
``no-attention``       the branch without GeometryAwareAttention (:func:`without_geometry_attention`)
``no-neus``            the branch without the NeuS condition and samples, K = 0 (:func:`without_neus`)
``ground-truth``       renders of held-out ``eval3d`` objects of the prompts' attributes
                       (:func:`ground_truth_object`) at the same cameras: the metrics' ceiling
``negative-control``   views alternating between two different ground-truth objects: must score low
=====================  ===========================================================================

With ``image_to_multiview = N`` it also runs image-to-multiview on the first N ``eval3d`` objects
(:func:`image_to_multiview`): view 0 of the ground-truth renders is the reference; the other views
are scored against the renders (PSNR, SSIM) and the mesh against the object's mesh (Chamfer-L1,
volume IoU: :func:`chamfer_l1`, :func:`volume_iou`).

The prompt set is ``benchmarks/prompts.py`` (``PROMPTS``, ``SEEDS``) unless ``--prompts`` names
another ``.py`` or a ``.json`` list of ``{"text", "category", "colour"}``.

    diffusers-mv3d evaluate --model pipelines/tunemv3d-tiny --out outputs/eval
    diffusers-mv3d evaluate --model runs/foundation-tiny/pipeline --out /tmp/smoke --steps 5 --seeds 0 \\
        --variants foundation tunemv3d ground-truth negative-control      # a foundation folder: fresh branch
    python benchmarks/bench_quality.py --model pipelines/tunemv3d-tiny --out docs/results_quality.md

Cost per object (8 views of 32 px, one busy CPU core): VH-IoU at 64^3 ~1 s, photo-consistency ~1 s,
reconstruction PSNR ~2.5 s a 100 fitting steps; generation as ``bench_cost.py`` measures.
"""

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import shlex
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..cameras import Cameras, default_cameras
from ..data.splits import is_in_3d_split, split_entry, split_objects
from ..data.world import ProceduralObject, generate_object
from ..io_utils import atomic_write
from ..training.config import add_dataclass_arguments, config_to_dict, resolve_or_exit
from .consistency import (
    _torch_threads,
    foreground_masks,
    photo_consistency,
    reconstruction_psnr,
    visual_hull_iou,
    voxel_centers,
)

__all__ = [
    "DEFAULT_CLASSIFIER",
    "DEFAULT_PROMPTS",
    "EvalPrompt",
    "EvaluationConfig",
    "REFERENCE_VARIANTS",
    "VARIANTS",
    "chamfer_l1",
    "evaluate",
    "ground_truth_object",
    "image_to_multiview",
    "load_pipeline",
    "load_prompt_set",
    "markdown_report",
    "render_object",
    "sample_foundation",
    "score_views",
    "volume_iou",
    "voxelize_mesh",
    "without_geometry_attention",
    "without_neus",
    "write_results",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROMPTS = REPO_ROOT / "benchmarks" / "prompts.py"
DEFAULT_CLASSIFIER = Path(__file__).resolve().parent / "attribute_classifier"

VARIANTS: Dict[str, str] = {
    "foundation": "frozen UNet alone, views sampled independently (same DDIM loop, CFG, noise)",
    "tunemv3d": "the pipeline as saved",
    "k0": "consistency ratio K = 0",
    "k0.25": "consistency ratio K = 0.25",
    "k0.5": "consistency ratio K = 0.5",
    "k1": "consistency ratio K = 1",
    "alpha3": "consistency scale alpha = 3",
    "alpha15": "consistency scale alpha = 15",
    "no-attention": "branch without GeometryAwareAttention",
    "no-neus": "branch without the NeuS condition and samples, K = 0",
    "ground-truth": "renders of held-out eval3d objects with the prompts' attributes",
    "negative-control": "views alternating between two different ground-truth objects",
}
REFERENCE_VARIANTS = ("ground-truth", "negative-control")
_RATIOS = {"k0": 0.0, "k0.25": 0.25, "k0.5": 0.5, "k1": 1.0}
_SCALES = {"alpha3": 3.0, "alpha15": 15.0}


# ---------------------------------------------------------------------------------------------
# 1. The prompt set
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalPrompt:
    """One prompt of the evaluation set with the attributes it asks for.

    Args:
        text: the caption given to the pipeline.
        category: a :data:`~diffusers_mv3d.data.world.CATEGORIES` name (the classifier's label).
        colour: a :data:`~diffusers_mv3d.data.palette.PALETTE` name (the classifier's label).
    """

    text: str
    category: str
    colour: str

    def __post_init__(self):
        is_in_3d_split(self.category, self.colour)  # raises ValueError on unknown names

    @property
    def in_split(self) -> bool:
        """Whether some 3D tuning split holds this (category, colour); False: foundation2d only."""
        return is_in_3d_split(self.category, self.colour)

    @property
    def attributes(self) -> Dict[str, str]:
        return {"category": self.category, "colour": self.colour}


def load_prompt_set(path: Optional[str] = None) -> Tuple[List[EvalPrompt], Tuple[int, ...]]:
    """``(prompts, seeds)`` from a ``.py`` file (``PROMPTS``, optional ``SEEDS``) or a ``.json`` file
    (a list of ``{"text", "category", "colour"}``, or ``{"prompts": [...], "seeds": [...]}``).

    The default is the repository's ``benchmarks/prompts.py``. Seeds default to ``(0,)`` when the file
    gives none.
    """
    path = str(path or DEFAULT_PROMPTS)
    if not os.path.isfile(path):
        raise ValueError(f"--prompts {path!r}: no such file (the default lives in the repository's benchmarks/)")
    seeds: Sequence[int] = (0,)
    if path.endswith(".py"):
        spec = importlib.util.spec_from_file_location("_mv3d_eval_prompts", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        entries, seeds = getattr(module, "PROMPTS", None), getattr(module, "SEEDS", seeds)
        if entries is None:
            raise ValueError(f"--prompts {path!r} defines no PROMPTS")
    elif path.endswith(".json"):
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        entries = data.get("prompts") if isinstance(data, dict) else data
        seeds = data.get("seeds", seeds) if isinstance(data, dict) else seeds
    else:
        raise ValueError(f"--prompts expects a .py or .json file, got {path!r}")
    prompts = []
    for entry in entries or ():
        if isinstance(entry, EvalPrompt):
            prompts.append(entry)
        elif isinstance(entry, dict):
            prompts.append(EvalPrompt(entry["text"], entry["category"], entry["colour"]))
        else:
            prompts.append(EvalPrompt(*entry))
    if not prompts:
        raise ValueError(f"--prompts {path!r} holds no prompts")
    return prompts, tuple(int(s) for s in seeds)


# ---------------------------------------------------------------------------------------------
# 2. Settings
# ---------------------------------------------------------------------------------------------
@dataclass
class EvaluationConfig:
    """Settings of one evaluation (the flags of ``diffusers-mv3d evaluate`` and ``bench_quality.py``)."""

    model: str = ""
    """TuneMV3D pipeline folder or Hub id; a text-to-image folder without controlnet/ gets a fresh branch (smoke runs)."""
    foundation: Optional[str] = None
    """Text-to-image folder whose UNet samples the foundation variant (default: the model's own frozen UNet)."""
    classifier: Optional[str] = None
    """AttributeClassifier folder for fidelity (default: the package's evaluation/attribute_classifier/)."""
    fidelity: bool = True
    """Score fidelity (skipped with a warning when the classifier is missing)."""
    prompts: Optional[str] = None
    """Prompt-set file, .py (PROMPTS, SEEDS) or .json (default: benchmarks/prompts.py)."""
    variants: Tuple[str, ...] = tuple(VARIANTS)
    """Variants to run: foundation tunemv3d k0 k0.25 k0.5 k1 alpha3 alpha15 no-attention no-neus ground-truth negative-control."""
    views: int = 8
    """Views an object (default orbit: elevation 20, azimuth every 360/views degrees)."""
    steps: int = 50
    """DDIM steps."""
    guidance_scale: float = 3.0
    """Classifier-free guidance on the text."""
    seeds: Tuple[int, ...] = ()
    """Sampling seeds, the same for every variant (empty: the prompt set's SEEDS)."""
    held_out: Tuple[int, ...] = (1, 5)
    """Views the reconstruction PSNR holds out (taken modulo views)."""
    mask_threshold: float = 0.05
    """Foreground when a channel is darker than white by more than this (foreground_masks)."""
    hull_resolution: int = 64
    """Voxels a side for the visual-hull IoU and photo-consistency."""
    recon_steps: int = 200
    """Fitting steps of the reconstruction PSNR's voxel field (DESIGN.md figures use 400)."""
    recon_resolution: int = 32
    """Voxels a side of the reconstruction PSNR's field."""
    image_to_multiview: int = 0
    """Also run image-to-multiview on this many held-out eval3d objects (0: skip)."""
    image_to_multiview_caption: bool = False
    """Give the object's caption with the reference image (default: the image alone)."""
    mesh_resolution: int = 64
    """Marching-cubes grid of the image-to-multiview meshes."""
    mesh_iou_resolution: int = 32
    """Voxels a side of [-1, 1]^3 for the volume IoU."""
    chamfer_points: int = 10000
    """Surface samples a mesh for the Chamfer-L1 distance."""
    device: str = "auto"
    """Device of the pipeline: auto (cuda when available), cpu, cuda, ... (metrics run on the CPU)."""
    num_threads: int = 0
    """torch.set_num_threads for the run; 0 keeps torch's default (on a busy machine 1 can be several times faster)."""

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("--model is required: a TuneMV3D pipeline folder (or a text-to-image folder)")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"--variants must name some of {list(VARIANTS)}, got {list(self.variants)}")
        if self.views < 2:
            raise ValueError(f"--views must be >= 2 (the reconstruction PSNR holds some out), got {self.views}")
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if len({h % self.views for h in self.held_out}) >= self.views or not self.held_out:
            raise ValueError(f"--held-out {list(self.held_out)} must name some but not all of the {self.views} views")
        if self.num_threads < 0:
            raise ValueError(f"--num-threads must be >= 0 (0: torch's default), got {self.num_threads}")
        if self.image_to_multiview < 0:
            raise ValueError(f"--image-to-multiview must be >= 0, got {self.image_to_multiview}")
        for name in ("hull_resolution", "recon_resolution", "mesh_resolution", "mesh_iou_resolution", "chamfer_points"):
            if getattr(self, name) < 2:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 2, got {getattr(self, name)}")


# ---------------------------------------------------------------------------------------------
# 3. Pipelines and variants
# ---------------------------------------------------------------------------------------------
def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_pipeline(model: str, device: str = "cpu", flag: str = "--model"):
    """A :class:`TuneMV3DPipeline` from a pipeline folder or Hub id; a text-to-image folder without
    ``controlnet/`` is assembled with a fresh branch (:func:`~diffusers_mv3d.conversion.assemble_pipeline`;
    it adds zero, so every branch variant then samples as the foundation does). Returns
    ``(pipe, fresh_branch)``."""
    from ..conversion import assemble_pipeline
    from ..pipelines import TuneMV3DPipeline

    if os.path.isdir(model) and not os.path.isdir(os.path.join(model, "controlnet")):
        warnings.warn(f"{flag} {model!r} has no controlnet/: assembling it with a fresh branch (adds zero)")
        pipe, fresh = assemble_pipeline(model), True
    else:
        try:
            pipe, fresh = TuneMV3DPipeline.from_pretrained(model), False
        except Exception as error:  # diffusers / hub errors: one message naming the flag
            raise ValueError(f"{flag} {model!r} could not be loaded as a TuneMV3D pipeline ({type(error).__name__}: {error})") from error
    pipe = pipe.to(_resolve_device(device))
    pipe.set_progress_bar_config(disable=True)
    return pipe, fresh


@contextlib.contextmanager
def without_geometry_attention(pipe) -> Iterator[Any]:
    """Run the branch without GeometryAwareAttention: the controlnet's ``geometry_attention``
    ModuleDict is swapped for an empty one inside the block (the branch then skips every attention
    layer, as it does without NeuS samples) and put back afterwards, the same objects."""
    controlnet = pipe.controlnet
    saved = controlnet.geometry_attention
    controlnet.geometry_attention = nn.ModuleDict()
    try:
        yield pipe
    finally:
        controlnet.geometry_attention = saved


def _no_neus_output(*args, **kwargs) -> None:
    """What the NeuS 'renders' inside :func:`without_neus`: nothing."""
    return None


@contextlib.contextmanager
def without_neus(pipe) -> Iterator[Any]:
    """Run the branch without the NeuS condition and samples.

    Inside the block ``pipe.neus(...)`` returns ``None`` (an instance attribute ``forward`` shadows
    the class's, which ``nn.Module.__call__`` calls), so every denoising step calls
    ``predict_noise(..., neus_output=None)``: the branch sees neither the NeuS render nor the sample
    points, exactly the "without NeuS" pass of consistency guidance (§3.3), and the NeuS costs
    nothing. Call the pipeline with ``consistency_ratio=0`` inside it (guidance against the same
    prediction would be a no-op). ``neus.encode`` (meshes) is untouched. A ``forward`` already set on
    the instance (accelerate's offload hooks) is put back afterwards.
    """
    neus = pipe.neus
    had_forward = "forward" in neus.__dict__
    saved = neus.__dict__.get("forward")
    neus.forward = _no_neus_output
    try:
        yield pipe
    finally:
        if had_forward:
            neus.forward = saved
        else:
            del neus.forward


def _variant_context(pipe, variant: str):
    if variant == "no-attention":
        return without_geometry_attention(pipe)
    if variant == "no-neus":
        return without_neus(pipe)
    return contextlib.nullcontext(pipe)


def variant_call_arguments(variant: str) -> Dict[str, Any]:
    """The pipeline-call arguments of a generated variant (``{}``: the model's K and alpha)."""
    if variant in _RATIOS:
        return {"consistency_ratio": _RATIOS[variant]}
    if variant in _SCALES:
        return {"consistency_scale": _SCALES[variant]}
    if variant == "no-neus":
        return {"consistency_ratio": 0.0}
    return {}


def variant_settings(pipe, variant: str) -> str:
    """``K ..., alpha ...`` as a variant samples (``-`` for the foundation and the references)."""
    if variant == "foundation" or variant in REFERENCE_VARIANTS:
        return "-"
    config = pipe.scheduler.config
    arguments = variant_call_arguments(variant)
    ratio = arguments.get("consistency_ratio", config.get("consistency_ratio"))
    scale = arguments.get("consistency_scale", config.get("consistency_scale"))
    return f"K {ratio:g}, alpha {scale:g}"


@torch.no_grad()
def sample_foundation(
    pipe, prompt: str, num_views: int, num_inference_steps: int, guidance_scale: float, generator: torch.Generator
) -> torch.Tensor:
    """The frozen UNet alone sampling ``num_views`` images of ``prompt`` independently -> ``[V, 3, H, W]`` in ``[0, 1]``.

    The same loop as the pipeline's without the branch: a fresh ``DDIMScheduler`` from the
    pipeline's inner scheduler config, classifier-free guidance with the empty negative prompt, and
    the pipeline's initial noise (``randn [1, V, C, h, w]`` from ``generator``, one noise a view). A
    pipeline whose branch adds zero (a fresh one) gives the same images.
    """
    from diffusers import DDIMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    device, dtype = pipe.device, pipe.unet.dtype
    scheduler = DDIMScheduler.from_config(pipe.scheduler.inner.config)
    scheduler.set_timesteps(num_inference_steps, device=device)
    size, channels = pipe.unet.config.sample_size, pipe.unet.config.in_channels
    x = randn_tensor((1, num_views, channels, size, size), generator=generator, device=device, dtype=dtype)
    x = x[0] * scheduler.init_noise_sigma  # [V, C, h, w]
    do_cfg = guidance_scale > 1.0
    text = pipe.encode_prompt([prompt], device)
    if do_cfg:
        text = torch.cat([pipe.encode_prompt([""], device), text])
    text = text.repeat_interleave(num_views, 0)  # [(2) V, L, D]
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        doubled = torch.cat([model_input] * 2) if do_cfg else model_input
        noise = pipe.unet(doubled, t, text).sample[:, :channels]  # drop a learned variance (IF)
        if do_cfg:
            uncond, cond = noise.chunk(2)
            noise = uncond + guidance_scale * (cond - uncond)
        x = scheduler.step(noise, t, x, generator=generator).prev_sample
    return ((pipe.decode_views(x).float().clamp(-1, 1) + 1) / 2).cpu()


def generate_views(pipe, variant: str, prompt: str, num_views: int, steps: int, guidance_scale: float, seed: int,
                   foundation_pipe=None) -> torch.Tensor:
    """One object of a generated variant -> ``[V, 3, H, W]`` in ``[0, 1]`` on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    if variant == "foundation":
        return sample_foundation(foundation_pipe or pipe, prompt, num_views, steps, guidance_scale, generator)
    with _variant_context(pipe, variant):
        out = pipe(prompt, num_views=num_views, num_inference_steps=steps, guidance_scale=guidance_scale,
                   generator=generator, output_type="pt", **variant_call_arguments(variant))
    return out.images.cpu()


# ---------------------------------------------------------------------------------------------
# 4. References: ground-truth renders
# ---------------------------------------------------------------------------------------------
_EVAL3D_SCAN = 20000  # eval3d entries searched for a prompt's (category, colour)


def ground_truth_object(prompt: EvalPrompt, index: int = 0) -> Tuple[str, ProceduralObject]:
    """``(object_id, object)``: the ``index``-th held-out ``eval3d`` object of the prompt's category and colour.

    For an out-of-split prompt (no 3D split holds its category or colour) it is the prompt's
    category and colour built from the seed of the ``index``-th ``eval3d`` entry: a shape in the
    held-out seed range, never in any training split.
    """
    if prompt.in_split:
        found = 0
        for i in range(_EVAL3D_SCAN):
            object_id, category, colour, object_seed = split_entry("eval3d", i)
            if (category, colour) == (prompt.category, prompt.colour):
                if found == index:
                    return object_id, generate_object(category, object_seed, colour)
                found += 1
    object_seed = split_entry("eval3d", index)[3]
    return f"eval3d-seed{index}-{prompt.category}-{prompt.colour}", generate_object(prompt.category, object_seed, prompt.colour)


def render_object(obj: ProceduralObject, cameras: Cameras, antialias: int = 2) -> torch.Tensor:
    """Ground-truth views ``[V, 3, H, W]`` in ``[0, 1]`` on white (as the training renders)."""
    from ..data.render import render_views

    rgba = render_views(obj.mesh, cameras, background="white", antialias=antialias).rgba
    return torch.from_numpy(rgba[..., :3]).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------
# 5. Metrics: one object's views, meshes, images
# ---------------------------------------------------------------------------------------------
def score_views(images: torch.Tensor, cameras: Cameras, cfg: EvaluationConfig) -> Dict[str, float]:
    """Consistency of one object's views ``[V, 3, H, W]`` in ``[0, 1]``: VH-IoU, coverage, photo dB, recon dB."""
    signed = images.float() * 2.0 - 1.0
    masks = foreground_masks(signed, cfg.mask_threshold)
    hull = visual_hull_iou(masks, cameras, cfg.hull_resolution, return_details=True)
    photo = photo_consistency(signed, masks, cameras, cfg.hull_resolution)
    recon = reconstruction_psnr(signed, masks, cameras, cfg.held_out, grid_resolution=cfg.recon_resolution,
                                steps=cfg.recon_steps)
    return {"vh_iou": hull.iou, "coverage": float(hull.coverage.mean()), "photo_psnr": photo, "recon_psnr": recon}


def _as_trimesh_points(mesh, count: int, seed: int) -> np.ndarray:
    import trimesh

    if mesh is None or len(mesh.faces) == 0 or mesh.area <= 0:
        raise ValueError("the mesh has no surface to sample")
    points, _ = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points)


def chamfer_l1(mesh_a, mesh_b, num_points: int = 10000, seed: int = 0) -> float:
    """Chamfer-L1 distance of two meshes (Occupancy Networks' definition), world units.

    With ``A``, ``B`` ``num_points`` points sampled uniformly on each surface (the same ``seed``)::

        CD = (mean_{a in A} min_{b in B} |a - b| + mean_{b in B} min_{a in A} |b - a|) / 2

    Euclidean distances, not squared; 0 for the same mesh (the same samples). Raises ``ValueError``
    for a mesh without surface.
    """
    from scipy.spatial import cKDTree

    a, b = _as_trimesh_points(mesh_a, num_points, seed), _as_trimesh_points(mesh_b, num_points, seed)
    a_to_b, _ = cKDTree(b).query(a)
    b_to_a, _ = cKDTree(a).query(b)
    return float(0.5 * (a_to_b.mean() + b_to_a.mean()))


def voxelize_mesh(mesh, resolution: int = 32) -> np.ndarray:
    """Occupancy ``[R, R, R]`` bool (indexed x, y, z) of the voxel centres of ``[-1, 1]^3`` inside ``mesh``.

    The centres follow :func:`~.consistency.voxel_centers`. A centre is inside when it is inside
    some connected component (``trimesh``'s ray-parity ``contains``, component by component:
    procedural objects are unions of overlapping closed parts, where parity over the whole mesh
    would call the overlaps outside). Only centres in a component's bounding box are tested.
    """
    centers = voxel_centers(resolution).reshape(-1, 3).numpy().astype(np.float64)
    inside = np.zeros(len(centers), dtype=bool)
    if mesh is not None and len(mesh.faces):
        for part in mesh.split(only_watertight=False):
            low, high = part.bounds
            in_box = np.all((centers >= low) & (centers <= high), axis=1)
            if in_box.any():
                inside[in_box] |= part.contains(centers[in_box])
    return inside.reshape(resolution, resolution, resolution)


def volume_iou(mesh_a, mesh_b, resolution: int = 32) -> float:
    """``|A & B| / |A | B|`` of the two meshes' occupancies at ``resolution^3`` (:func:`voxelize_mesh`); 1 when both are empty."""
    a, b = voxelize_mesh(mesh_a, resolution), voxelize_mesh(mesh_b, resolution)
    union = int((a | b).sum())
    return 1.0 if union == 0 else float((a & b).sum() / union)


def _image_psnr_ssim(prediction: torch.Tensor, target: torch.Tensor) -> Tuple[float, float]:
    """Mean over views of PSNR and SSIM (skimage, data range 1) of ``[V, 3, H, W]`` images in ``[0, 1]``."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnrs, ssims = [], []
    for p, t in zip(prediction.permute(0, 2, 3, 1).double().numpy(), target.permute(0, 2, 3, 1).double().numpy()):
        side = min(t.shape[:2])
        window = min(7, side if side % 2 else side - 1)
        psnrs.append(peak_signal_noise_ratio(t, p.clip(0, 1), data_range=1.0))
        ssims.append(structural_similarity(t, p.clip(0, 1), data_range=1.0, channel_axis=-1, win_size=window))
    return float(np.mean(psnrs)), float(np.mean(ssims))


# ---------------------------------------------------------------------------------------------
# 6. The evaluation
# ---------------------------------------------------------------------------------------------
def _short_path(path: str) -> str:
    """``path`` relative to the repository when inside it (reports read the same on every machine)."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return path


def _load_classifier(cfg: EvaluationConfig):
    from .classifier import AttributeClassifier

    if not cfg.fidelity:
        return None, "skipped (--no-fidelity)"
    path = cfg.classifier or str(DEFAULT_CLASSIFIER)
    if not os.path.isfile(os.path.join(path, "config.json")):
        warnings.warn(f"no attribute classifier at {path!r}: fidelity is skipped (train one, or pass --classifier DIR)")
        return None, f"missing ({_short_path(path)}), fidelity skipped"
    try:
        return AttributeClassifier.from_pretrained(path).eval(), _short_path(path)
    except Exception as error:
        raise ValueError(f"--classifier {path!r} could not be loaded ({type(error).__name__}: {error})") from error


def _fidelity_record(images: torch.Tensor, prompt: EvalPrompt, classifier) -> Dict[str, float]:
    """Fractions of one object's views classified as the prompt's category and colour."""
    from .classifier import fidelity

    if classifier is None:
        return {"category_accuracy": float("nan"), "colour_accuracy": float("nan")}
    result = fidelity(images.float() * 2.0 - 1.0, [prompt.attributes] * images.shape[0], classifier)
    return {"category_accuracy": result["category_accuracy"], "colour_accuracy": result["colour_accuracy"]}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def evaluate(cfg: EvaluationConfig, views_dir: Optional[str] = None, pipe=None) -> Dict[str, Any]:
    """Run every variant of ``cfg`` on the prompt set; return the results (what :func:`write_results` writes).

    Args:
        cfg: the settings.
        views_dir: when given, each object's views are saved there as ``{variant}/{prompt}-s{seed}.png``.
        pipe: an already loaded pipeline to use instead of ``cfg.model`` (tests).

    Returns:
        ``{"config", "prompts", "seeds", "variants": {name: summary}, "objects": [records],
        "image_to_multiview": {...} or None, "model": {...}, "classifier", "machine", "date"}``.
    """
    with _torch_threads(cfg.num_threads or None):
        return _evaluate(cfg, views_dir, pipe)


def _evaluate(cfg: EvaluationConfig, views_dir: Optional[str], pipe) -> Dict[str, Any]:
    prompts, prompt_seeds = load_prompt_set(cfg.prompts)
    seeds = tuple(cfg.seeds) or prompt_seeds
    fresh = False
    if pipe is None:
        pipe, fresh = load_pipeline(cfg.model, cfg.device)
    foundation_pipe = None
    if cfg.foundation and "foundation" in cfg.variants:
        foundation_pipe, _ = load_pipeline(cfg.foundation, cfg.device, flag="--foundation")
        if foundation_pipe.image_size != pipe.image_size:
            raise ValueError(f"--foundation makes {foundation_pipe.image_size}-px views but --model {pipe.image_size}-px")
    classifier, classifier_note = _load_classifier(cfg)
    cameras = default_cameras(cfg.views, pipe.image_size)
    objects: List[Dict[str, Any]] = []

    if any(v not in REFERENCE_VARIANTS for v in cfg.variants):  # warm-up: first-call costs stay out of the timings
        pipe(prompts[0].text, num_views=cfg.views, num_inference_steps=1, output_type="pt", guidance_scale=cfg.guidance_scale)

    renders: Dict[Tuple[int, int], torch.Tensor] = {}

    def ground_truth(p: int, k: int) -> torch.Tensor:
        """Views of the ``k``-th ground-truth object of prompt ``p`` (rendered once)."""
        if (p, k) not in renders:
            renders[p, k] = render_object(ground_truth_object(prompts[p], k)[1], cameras)
        return renders[p, k]

    for variant in cfg.variants:
        start_variant = time.perf_counter()
        for p, prompt in enumerate(prompts):
            for k, seed in enumerate(seeds):
                start = time.perf_counter()
                if variant == "ground-truth":
                    images = ground_truth(p, k)
                elif variant == "negative-control":  # even views of this object, odd views of another
                    partner = ground_truth((p + 1) % len(prompts), k) if len(prompts) > 1 else ground_truth(p, k + 1)
                    images = ground_truth(p, k).clone()
                    images[1::2] = partner[1::2]
                else:
                    images = generate_views(pipe, variant, prompt.text, cfg.views, cfg.steps, cfg.guidance_scale, seed,
                                            foundation_pipe)
                seconds = time.perf_counter() - start
                record = {"variant": variant, "prompt_index": p, "prompt": prompt.text, "category": prompt.category,
                          "colour": prompt.colour, "in_split": prompt.in_split, "seed": seed,
                          "seconds": None if variant in REFERENCE_VARIANTS else seconds}
                record.update(score_views(images, cameras, cfg))
                record.update(_fidelity_record(images, prompt, classifier))
                objects.append(record)
                if views_dir is not None:
                    _save_views(images, Path(views_dir) / variant / f"{p:02d}-s{seed}.png")
        _log(f"evaluate: {variant}: {len(prompts) * len(seeds)} objects in {time.perf_counter() - start_variant:.1f} s")

    i2mv = image_to_multiview(pipe, cfg, seeds[0]) if cfg.image_to_multiview else None
    return {
        "config": config_to_dict(cfg),
        "prompts": [dict(asdict(p), in_split=p.in_split) for p in prompts],
        "seeds": list(seeds),
        "model": {"path": cfg.model, "fresh_branch": fresh, "image_size": pipe.image_size,
                  "scheduler": {k: pipe.scheduler.config.get(k) for k in ("consistency_ratio", "consistency_scale")}},
        "classifier": classifier_note,
        "variants": {v: summarize([o for o in objects if o["variant"] == v]) for v in cfg.variants},
        "settings": {v: variant_settings(pipe, v) for v in cfg.variants},
        "objects": objects,
        "image_to_multiview": i2mv,
        "machine": machine_description(pipe.device),
        "date": str(date.today()),
    }


def _save_views(images: torch.Tensor, path: Path) -> None:
    from PIL import Image

    row = (images.permute(2, 0, 3, 1).reshape(images.shape[2], -1, 3).clamp(0, 1) * 255).round().byte().numpy()  # [H, V W, 3]
    atomic_write(path, lambda tmp: Image.fromarray(row).save(tmp, format="PNG"))


def _mean(values: Sequence[Optional[float]]) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


_METRICS = ("vh_iou", "coverage", "photo_psnr", "recon_psnr", "category_accuracy", "colour_accuracy", "seconds")


def summarize(records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Means of every metric over a variant's objects: ``all``, ``in_split`` and ``out_of_split``.

    Every object has the same number of views, so the mean of per-object accuracies is the pooled
    accuracy over views.
    """
    groups = {"all": list(records), "in_split": [r for r in records if r["in_split"]],
              "out_of_split": [r for r in records if not r["in_split"]]}
    return {name: dict({m: _mean([r[m] for r in group]) for m in _METRICS}, objects=len(group))
            for name, group in groups.items()}


def image_to_multiview(pipe, cfg: EvaluationConfig, seed: int = 0) -> Dict[str, Any]:
    """Image-to-multiview (§3.4) on the first ``cfg.image_to_multiview`` held-out ``eval3d`` objects.

    Each object is rendered at the ``cfg.views`` default cameras; view 0 is given as ``image=``; the
    other views are scored against the renders (PSNR, SSIM), and the mesh (``return_mesh=True``)
    against the object's mesh (:func:`chamfer_l1`, :func:`volume_iou`). A mesh step that finds no
    surface (an untrained NeuS) scores nan / 0 and is counted in ``meshes_failed``. The row
    ``reference copied`` predicts every view as the reference: the floor the images must beat.
    """
    cameras = default_cameras(cfg.views, pipe.image_size)
    records = []
    for object_id, obj in split_objects("eval3d", cfg.image_to_multiview):
        target = render_object(obj, cameras)  # [V, 3, H, W] in [0, 1]
        arguments = dict(prompt=obj.caption if cfg.image_to_multiview_caption else None, image=target[0],
                         num_views=cfg.views, cameras=cameras, num_inference_steps=cfg.steps,
                         guidance_scale=cfg.guidance_scale, output_type="pt")
        start = time.perf_counter()
        try:
            out = pipe(**arguments, return_mesh=True, mesh_resolution=cfg.mesh_resolution,
                       generator=torch.Generator().manual_seed(seed))
            mesh = out.mesh
        except ValueError as error:  # no surface in the SDF
            _log(f"evaluate: image-to-multiview {object_id}: no mesh ({error}); views only")
            out, mesh = pipe(**arguments, generator=torch.Generator().manual_seed(seed)), None
        seconds = time.perf_counter() - start
        images = out.images.cpu()
        psnr, ssim = _image_psnr_ssim(images[1:], target[1:])
        copied_psnr, copied_ssim = _image_psnr_ssim(target[:1].expand_as(target[1:]), target[1:])
        try:
            chamfer = chamfer_l1(mesh, obj.mesh, cfg.chamfer_points)
        except ValueError:
            chamfer = float("nan")
        iou = volume_iou(mesh, obj.mesh, cfg.mesh_iou_resolution) if mesh is not None else 0.0
        records.append({"object_id": object_id, "caption": obj.caption, "seconds": seconds, "psnr": psnr, "ssim": ssim,
                        "chamfer_l1": chamfer, "volume_iou": iou, "mesh": mesh is not None,
                        "copied_psnr": copied_psnr, "copied_ssim": copied_ssim})
    _log(f"evaluate: image-to-multiview: {len(records)} objects")
    keys = ("psnr", "ssim", "chamfer_l1", "volume_iou", "seconds", "copied_psnr", "copied_ssim")
    return {"objects": records, "mean": {k: _mean([r[k] for r in records]) for k in keys},
            "meshes_failed": sum(not r["mesh"] for r in records), "seed": seed}


# ---------------------------------------------------------------------------------------------
# 7. Reporting
# ---------------------------------------------------------------------------------------------
def machine_description(device: Optional[torch.device] = None) -> str:
    """``platform, processor, N cores, T torch threads[, GPU name]``."""
    text = (f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads")
    if device is not None and torch.device(device).type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


def _fmt(value: Optional[float], digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def markdown_report(results: Dict[str, Any], command: str) -> str:
    """The results as markdown: the command, machine and date, the variants table, image-to-multiview."""
    cfg = results["config"]
    prompts = results["prompts"]
    num_in = sum(p["in_split"] for p in prompts)
    size = results["model"]["image_size"]
    lines = [
        f"## Multi-view quality ({cfg['views']} views, {size}x{size}, {cfg['steps']} DDIM steps, CFG {cfg['guidance_scale']:g})",
        "",
        f"`{command}` on {results['machine']}, {results['date']}.",
        "",
        f"Model `{cfg['model']}`" + (" (fresh branch: adds zero, samples as the foundation)" if results["model"]["fresh_branch"] else "")
        + f"; classifier: {results['classifier']}. {len(prompts)} prompts ({num_in} in a 3D split, "
        f"{len(prompts) - num_in} only in foundation2d) x seeds {' '.join(map(str, results['seeds']))}; "
        f"VH-IoU and photo-consistency at {cfg['hull_resolution']}^3, reconstruction PSNR holds out views "
        f"{' '.join(map(str, cfg['held_out']))} ({cfg['recon_steps']} fitting steps).",
        "",
        "| variant | settings | VH-IoU | coverage | photo dB | recon dB | category acc in / out | colour acc in / out | s / object |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, summary in results["variants"].items():
        total, inside, outside = summary["all"], summary["in_split"], summary["out_of_split"]
        lines.append(
            f"| {variant} | {results['settings'][variant]} | {_fmt(total['vh_iou'], 3)} | {_fmt(total['coverage'], 2)} | "
            f"{_fmt(total['photo_psnr'], 1)} | {_fmt(total['recon_psnr'], 1)} | "
            f"{_fmt(inside['category_accuracy'], 2)} / {_fmt(outside['category_accuracy'], 2)} | "
            f"{_fmt(inside['colour_accuracy'], 2)} / {_fmt(outside['colour_accuracy'], 2)} | {_fmt(total['seconds'], 2)} |"
        )
    lines += [
        "",
        "Consistency in / out of the 3D splits (VH-IoU, recon dB):",
        "",
        "| variant | VH-IoU in | VH-IoU out | recon dB in | recon dB out |",
        "|---|---|---|---|---|",
    ]
    for variant, summary in results["variants"].items():
        inside, outside = summary["in_split"], summary["out_of_split"]
        lines.append(f"| {variant} | {_fmt(inside['vh_iou'], 3)} | {_fmt(outside['vh_iou'], 3)} | "
                     f"{_fmt(inside['recon_psnr'], 1)} | {_fmt(outside['recon_psnr'], 1)} |")
    lines += ["", "Variants: " + "; ".join(f"`{v}`: {VARIANTS[v]}" for v in results["variants"]) + ". "
              "Coverage is the mean fraction of foreground pixels (near 1: no background, VH-IoU then trivially "
              "high). Accuracies are the classifier's on every view against the prompt's labels; the "
              "ground-truth row is its ceiling. References are rendered, not timed."]
    i2mv = results.get("image_to_multiview")
    if i2mv:
        mean = i2mv["mean"]
        lines += [
            "",
            f"### Image-to-multiview ({len(i2mv['objects'])} held-out eval3d objects, view 0 given, views 1-{cfg['views'] - 1} scored)",
            "",
            "| method | PSNR dB | SSIM | Chamfer-L1 | volume IoU | s / object |",
            "|---|---|---|---|---|---|",
            f"| tunemv3d | {_fmt(mean['psnr'], 2)} | {_fmt(mean['ssim'], 3)} | {_fmt(mean['chamfer_l1'], 4)} | "
            f"{_fmt(mean['volume_iou'], 3)} | {_fmt(mean['seconds'], 2)} |",
            f"| reference view copied | {_fmt(mean['copied_psnr'], 2)} | {_fmt(mean['copied_ssim'], 3)} | - | - | - |",
            "",
            f"Meshes: marching cubes at {cfg['mesh_resolution']}^3; Chamfer-L1 on {cfg['chamfer_points']} surface "
            f"samples a mesh (world units, the object fits a sphere of radius 0.9); volume IoU at "
            f"{cfg['mesh_iou_resolution']}^3 in [-1, 1]^3; {i2mv['meshes_failed']} of {len(i2mv['objects'])} meshes failed "
            "(no surface).",
        ]
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    """NaN -> None (strict JSON), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_results(results: Dict[str, Any], markdown_path: str, json_path: str, command: str) -> str:
    """Write the markdown report and the JSON results (atomically); return the markdown."""
    text = markdown_report(results, command)
    payload = json.dumps(_plain(dict(results, command=command)), indent=1)
    atomic_write(markdown_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(payload, encoding="utf-8"))
    return text


# ---------------------------------------------------------------------------------------------
# 8. Command line
# ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser, out_help: str) -> argparse.ArgumentParser:
    """The flags of :class:`EvaluationConfig` (plus ``--config``, ``--dry-run``) and ``--out``."""
    add_dataclass_arguments(parser, EvaluationConfig)
    parser.add_argument("--out", required=True, help=out_help)
    return parser


def resolve(args: argparse.Namespace) -> Optional[EvaluationConfig]:
    """The settings from the flags (``None`` after ``--dry-run``); exits with the error naming the flag."""
    try:
        return resolve_or_exit(EvaluationConfig, args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def given_flags(args: argparse.Namespace) -> str:
    """The flags given on the command line, as a shell string (``--config``, then the settings, then ``--out``)."""
    words: List[str] = []
    if getattr(args, "config", None):
        words += ["--config", args.config]
    for name in EvaluationConfig.__dataclass_fields__:
        if name in vars(args):
            value = getattr(args, name)
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                words.append(flag if value else "--no-" + flag[2:])
            elif isinstance(value, (list, tuple)):
                words += [flag, *map(str, value)]
            else:
                words += [flag, "none" if value is None else str(value)]
    if getattr(args, "out", None):
        words += ["--out", str(args.out)]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    cfg = resolve(args)
    if cfg is None:
        return 0
    out = Path(args.out)
    results = evaluate(cfg, views_dir=str(out / "views"))
    command = "diffusers-mv3d evaluate " + given_flags(args)
    print(write_results(results, str(out / "results.md"), str(out / "results.json"), command), end="")
    print(f"wrote {out / 'results.md'}, {out / 'results.json'} and {out / 'views'}/", file=sys.stderr)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``evaluate`` on a sub-command parser (for ``diffusers_mv3d.cli``)."""
    parser = subparsers.add_parser(
        "evaluate", help="consistency, fidelity and image-to-multiview figures of a pipeline on the fixed prompt set",
        description=__doc__.split("\n\n")[0],
    )
    add_arguments(parser, "output folder: results.md, results.json and views/ (one PNG row an object)")
    parser.set_defaults(func=run)
    return parser
