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

Foreground masks take each view's border colour as its background (``--mask-background border``):
generated backgrounds are often tinted rather than white, which against white would make every pixel
foreground. The classifier sees the views with that background made white (``--fidelity-on-white``),
as its training renders are.

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
``full-cost``          the paper's sampling at full cost: the branch on both classifier-free-guidance
                       halves and the NeuS rendered every step (``share_branch=False, neus_interval=1``)
``neus1`` / ``neus3``  the NeuS condition rendered every step / every 3 steps (docs/results.md, "Cost
                       of sampling")
``shared-noise``       the views of an object share their initial noise's mean (``shared_noise_tiles=1``);
                       these four sampling variants are not run by default
``finetune``           baseline: the foundation's UNet fully fine-tuned on the multi-view data (the
                       folder ``--finetune-model``; ``diffusers-mv3d train-baseline --kind finetune``)
``mvdream``            baseline: MVDream-style, self-attention over the views + camera embedding
                       (``--mvdream-model``; ``train-baseline --kind mvdream``); both sample with the
                       same DDIM schedule, CFG, initial noise and default cameras; not run by default
``ground-truth``       renders of held-out ``eval3d`` objects of the prompts' attributes
                       (:func:`ground_truth_object`) at the same cameras: the metrics' ceiling
``negative-control``   views alternating between two different ground-truth objects: must score low
=====================  ===========================================================================

With ``image_to_multiview = N`` it also runs image-to-multiview on the first N ``eval3d`` objects
that no training render equals (``seen_objects3d``; :func:`image_to_multiview`): view 0 of the
ground-truth renders is the reference; the other views are scored against the renders (PSNR, SSIM)
and the mesh against the object's mesh (Chamfer-L1, volume IoU: :func:`chamfer_l1`, :func:`volume_iou`).

The prompt set is ``benchmarks/prompts.py`` (``PROMPTS``, ``SEEDS``) unless ``--prompts`` names
another ``.py`` or a ``.json`` list of ``{"text", "category", "colour"}``.

    diffusers-mv3d evaluate --model pipelines/tunemv3d-tiny --out outputs/eval
    diffusers-mv3d evaluate --model pipelines/tunemv3d-tiny --out outputs/baselines \\
        --variants foundation tunemv3d finetune mvdream ground-truth \\
        --finetune-model runs/baseline-finetune-tiny/model --mvdream-model runs/baseline-mvdream-tiny/model
    diffusers-mv3d evaluate --model runs/foundation-tiny/pipeline --out /tmp/smoke --steps 5 --seeds 0 \\
        --variants foundation tunemv3d ground-truth negative-control      # a foundation folder: fresh branch
    python benchmarks/bench_quality.py --model pipelines/tunemv3d-tiny --out docs/results_quality.md

Cost per object (8 views of 32 px, one busy CPU core): VH-IoU at 64^3 ~1 s, photo-consistency ~1 s,
reconstruction PSNR ~2.5 s a 100 fitting steps; generation as ``bench_cost.py`` measures.

The parts: :mod:`.settings` (variant names, prompt set, :class:`EvaluationConfig`), :mod:`.variants`
(pipelines, variants, reference renders), :mod:`.metrics` (one object's metrics) and :mod:`.report`;
this module runs them and is the command line.
"""

import argparse
import math
import os
import shlex
import sys
import time
import warnings
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..cameras import default_cameras
from ..data.splits import split_fingerprints, unseen_split_objects
from ..io_utils import atomic_write
from ..threads import torch_threads
from ..training.config import add_dataclass_arguments, config_to_dict, resolve_or_exit
from .consistency import foreground_masks
from .metrics import chamfer_l1, image_psnr_ssim, mesh_scores, score_views, volume_iou, voxelize_mesh
from .report import machine_description, markdown_report, write_results
from .settings import (
    BASELINE_VARIANTS,
    DEFAULT_CLASSIFIER,
    DEFAULT_PROMPTS,
    DEFAULT_VARIANTS,
    REFERENCE_VARIANTS,
    REPO_ROOT,
    VARIANTS,
    EvalPrompt,
    EvaluationConfig,
    load_prompt_set,
)
from .variants import (
    generate_views,
    ground_truth_object,
    load_baselines,
    load_pipeline,
    render_object,
    sample_foundation,
    variant_settings,
    without_geometry_attention,
    without_neus,
)

__all__ = [
    "BASELINE_VARIANTS",
    "DEFAULT_CLASSIFIER",
    "DEFAULT_PROMPTS",
    "DEFAULT_VARIANTS",
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


# ---------------------------------------------------------------------------------------------
# The evaluation
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


def _fidelity_record(images: torch.Tensor, prompt: EvalPrompt, classifier, cfg: EvaluationConfig) -> Dict[str, float]:
    """Fractions of one object's views classified as the prompt's category and colour; with
    ``cfg.fidelity_on_white`` the views' backgrounds (outside :func:`foreground_masks`) are white first,
    as in the classifier's training renders."""
    from .classifier import fidelity

    if classifier is None:
        return {"category_accuracy": float("nan"), "colour_accuracy": float("nan")}
    signed = images.float() * 2.0 - 1.0
    if cfg.fidelity_on_white:
        masks = foreground_masks(signed, cfg.mask_threshold, cfg.mask_background)
        signed = torch.where(masks[:, None], signed, torch.ones_like(signed))
    result = fidelity(signed, [prompt.attributes] * images.shape[0], classifier)
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
    with torch_threads(cfg.num_threads or None):
        return _evaluate(cfg, views_dir, pipe)


def _evaluate(cfg: EvaluationConfig, views_dir: Optional[str], pipe) -> Dict[str, Any]:
    prompts, prompt_seeds = load_prompt_set(cfg.prompts)
    seeds = tuple(cfg.seeds) or prompt_seeds
    fresh = False
    if pipe is None:
        pipe, fresh = load_pipeline(cfg.model, cfg.device)
    if cfg.guidance_scale is None:  # the pipeline folder's default, for every variant
        cfg = replace(cfg, guidance_scale=float(pipe.scheduler.config.guidance_scale))
    foundation_pipe = None
    if cfg.foundation and "foundation" in cfg.variants:
        foundation_pipe, _ = load_pipeline(cfg.foundation, cfg.device, flag="--foundation")
        if foundation_pipe.image_size != pipe.image_size:
            raise ValueError(f"--foundation makes {foundation_pipe.image_size}-px views but --model {pipe.image_size}-px")
    baselines = load_baselines(cfg, pipe.image_size)
    classifier, classifier_note = _load_classifier(cfg)
    cameras = default_cameras(cfg.views, pipe.image_size)
    objects: List[Dict[str, Any]] = []

    if any(v not in REFERENCE_VARIANTS for v in cfg.variants):  # warm-up: first-call costs stay out of the timings
        pipe(prompts[0].text, num_views=cfg.views, num_inference_steps=1, output_type="pt", guidance_scale=cfg.guidance_scale)
    for variant in baselines:
        generate_views(pipe, variant, prompts[0].text, cfg.views, 1, cfg.guidance_scale, 0, baselines=baselines)

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
                                            foundation_pipe, baselines)
                seconds = time.perf_counter() - start
                record = {"variant": variant, "prompt_index": p, "prompt": prompt.text, "category": prompt.category,
                          "colour": prompt.colour, "in_split": prompt.in_split, "seed": seed,
                          "seconds": None if variant in REFERENCE_VARIANTS else seconds}
                record.update(score_views(images, cameras, cfg))
                record.update(_fidelity_record(images, prompt, classifier, cfg))
                objects.append(record)
                if views_dir is not None:
                    _save_views(images, Path(views_dir) / variant / f"{p:02d}-s{seed}.png")
        _log(f"evaluate: {variant}: {len(prompts) * len(seeds)} objects in {time.perf_counter() - start_variant:.1f} s")

    i2mv = image_to_multiview(pipe, cfg, seeds[0], classifier, views_dir) if cfg.image_to_multiview else None
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


def image_to_multiview(pipe, cfg: EvaluationConfig, seed: int = 0, classifier=None,
                       views_dir: Optional[str] = None) -> Dict[str, Any]:
    """Image-to-multiview (§3.4) on the first ``cfg.image_to_multiview`` held-out ``eval3d`` objects that
    none of the first ``cfg.seen_objects3d`` ``objects3d`` objects (the training renders) equals.

    Each object is rendered at the ``cfg.views`` default cameras; view 0 is given as ``image=``; the
    other views are scored against the renders (PSNR, SSIM), and the mesh (``return_mesh=True``)
    against the object's mesh (:func:`chamfer_l1`, :func:`volume_iou`). A mesh step that finds no
    surface (an untrained NeuS) scores nan / 0 and is counted in ``meshes_failed``. The row
    ``reference copied`` predicts every view as the reference: the floor the images must beat. The
    mesh figures stand beside the renders meshed by the same reconstructor (``renders_*``, its
    ceiling) and the next object's renders meshed (``control_*``, the negative control). The prompt is
    none, the object's caption (``image_to_multiview_caption``) or the reference's auto-caption
    (``image_to_multiview_auto_caption``, :func:`~diffusers_mv3d.captioning.caption_references`: the
    pipeline's ``captioner`` in the ``classifier``'s colour, or the ``classifier``'s caption without one).
    With ``views_dir``, each object's views (view 0 the reference) are saved as
    ``image-to-multiview/{object_id}.png`` and its renders beside them as ``{object_id}-renders.png``.
    """
    from ..captioning import caption_references

    captioner = getattr(pipe, "captioner", None)
    if cfg.image_to_multiview_auto_caption and classifier is None:
        raise ValueError("--image-to-multiview-auto-caption needs the attribute classifier (--classifier DIR)")
    cameras = default_cameras(cfg.views, pipe.image_size)
    records = []
    objects = unseen_split_objects("eval3d", cfg.image_to_multiview, split_fingerprints("objects3d", cfg.seen_objects3d))
    renders = [render_object(obj, cameras) for _, obj in objects]  # [V, 3, H, W] in [0, 1]
    for index, ((object_id, obj), target) in enumerate(zip(objects, renders)):
        prompt = obj.caption if cfg.image_to_multiview_caption else None
        if cfg.image_to_multiview_auto_caption:
            prompt = caption_references(target[:1] * 2 - 1, classifier, captioner)[0]
        arguments = dict(prompt=prompt, image=target[0],
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
        if views_dir is not None:
            _save_views(images, Path(views_dir) / "image-to-multiview" / f"{object_id}.png")
            _save_views(target, Path(views_dir) / "image-to-multiview" / f"{object_id}-renders.png")
        psnr, ssim = image_psnr_ssim(images[1:], target[1:])
        copied_psnr, copied_ssim = image_psnr_ssim(target[:1].expand_as(target[1:]), target[1:])
        chamfer, iou = _mesh_scores(mesh, obj.mesh, cfg)
        # the mesh figures' references: the renders meshed (the reconstructor's ceiling) and, as the
        # negative control, the next object's renders meshed
        truth_chamfer, truth_iou = _mesh_scores(_mesh_or_none(pipe, target, cameras, cfg), obj.mesh, cfg)
        other = renders[(index + 1) % len(renders)] if len(renders) > 1 else None
        control_chamfer, control_iou = _mesh_scores(
            None if other is None else _mesh_or_none(pipe, other, cameras, cfg), obj.mesh, cfg)
        records.append({"object_id": object_id, "caption": obj.caption, "prompt": prompt, "seconds": seconds,
                        "psnr": psnr, "ssim": ssim,
                        "chamfer_l1": chamfer, "volume_iou": iou, "mesh": mesh is not None,
                        "copied_psnr": copied_psnr, "copied_ssim": copied_ssim,
                        "renders_chamfer_l1": truth_chamfer, "renders_volume_iou": truth_iou,
                        "control_chamfer_l1": control_chamfer, "control_volume_iou": control_iou})
    _log(f"evaluate: image-to-multiview: {len(records)} objects")
    keys = ("psnr", "ssim", "chamfer_l1", "volume_iou", "seconds", "copied_psnr", "copied_ssim",
            "renders_chamfer_l1", "renders_volume_iou", "control_chamfer_l1", "control_volume_iou")
    return {"objects": records, "mean": {k: _mean([r[k] for r in records]) for k in keys},
            "meshes_failed": sum(not r["mesh"] for r in records), "seed": seed,
            "auto_captioner": "the pipeline's captioner" if captioner is not None else "the attribute classifier"}


def _mesh_or_none(pipe, views: torch.Tensor, cameras, cfg: EvaluationConfig):
    """The pipeline's §3.5 mesh of ``views [V, 3, H, W]`` in [0, 1], or None when the SDF has no surface."""
    try:
        return pipe.reconstruct_mesh(views, cameras, cfg.mesh_resolution)
    except ValueError:
        return None


def _mesh_scores(mesh, target_mesh, cfg: EvaluationConfig) -> Tuple[float, float]:
    """:func:`mesh_scores` at the evaluation's Chamfer points and IoU grid."""
    return mesh_scores(mesh, target_mesh, cfg.chamfer_points, cfg.mesh_iou_resolution)


# ---------------------------------------------------------------------------------------------
# Command line
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
    if out.exists() and not out.is_dir():  # before any sampling: the work would be lost at the end
        raise ValueError(f"--out {out} is a file, not a folder")
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
