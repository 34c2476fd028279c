"""Score mesh reconstructors (§3.5) on unseen tuning objects: volume IoU and Chamfer-L1 of their meshes.

The objects are tuning objects (:func:`~diffusers_mv3d.data.splits.tuning_objects`: ``objects3d``
objects from index 1,000,000 on that none of the first ``--seen-objects3d`` objects, the training
renders, equals; the evaluation's image-to-multiview objects are ``eval3d``, the test set, never used
here). Each object is rendered at the pipeline's default cameras (8 views, elevation 20) and meshed from:

- ``white``: the renders as the training data has them (the reconstructor's ceiling);
- ``tinted``: the same renders recomposited over a random colour a view (what a young branch's
  generated views look like);
- ``generated``: the views a TuneMV3D pipeline generates from view 0 (image-to-multiview, as
  ``diffusers-mv3d evaluate --image-to-multiview`` runs it; needs ``--pipeline``; their PSNR / SSIM
  against the renders is printed beside copying the reference, as the evaluation reports it, with
  their silhouettes' IoU and area against the renders' silhouettes, beside the reference's;
  ``--pose-table`` adds which render view each generated view resembles most, as an offset around
  the orbit: whether the views turn the object or repeat other poses; ``--records`` writes each
  object's figures, views and meshes, as JSON for ``benchmarks/paired_difference.py``);
- ``negative control``: the white renders of the *next* object, scored against this one (what an
  unrelated shape of the same world scores).

Meshes: marching cubes of the SDF's level set at the reconstructor's ``mesh_level`` (0 unless saved
otherwise; ``--mesh-levels``: other levels, a row each) at 64^3 (``--mesh-resolution``),
carved to the input views' silhouettes as the pipeline carves them (``--carve-contours``: the mask
values the carved surface follows, a table row each; ``--no-mesh-carving``: the SDF as it is), volume
IoU at 32^3 in [-1, 1]^3, Chamfer-L1 on 10000 surface points (the evaluation's settings). A
reconstructor is a folder with ``reconstructor/`` (a pipeline folder or ``train-reconstructor``'s
``model/``). ``--visual-hull`` adds the views' visual hull as a row (the same carving of an SDF that
holds everything: no reconstructor), which says what a reconstructor adds to carving.

    python benchmarks/score_reconstructor.py pipelines/tunemv3d-tiny runs/reconstructor-v2-tiny/model \
        --pipeline pipelines/tunemv3d-tiny --objects 16 --num-threads 1
"""

import argparse
import json
import time
from typing import Dict, List, Optional, Sequence

import torch

from diffusers_mv3d.cameras import default_cameras
from diffusers_mv3d.data.splits import tuning_objects
from diffusers_mv3d.captioning import RetrievalCaptioner, caption_references
from diffusers_mv3d.evaluation.classifier import AttributeClassifier
from diffusers_mv3d.evaluation.consistency import foreground_masks, mask_iou
from diffusers_mv3d.evaluation.metrics import image_psnr_ssim, mesh_scores
from diffusers_mv3d.evaluation.settings import DEFAULT_CLASSIFIER, EvaluationConfig
from diffusers_mv3d.evaluation.variants import render_object
from diffusers_mv3d.io_utils import atomic_write_text
from diffusers_mv3d.mesh import CARVE_CONTOUR, mesh_from_neus, visual_hull_mesh
from diffusers_mv3d.models.latent_sparse_neus import LatentSparseNeuS
from diffusers_mv3d.training.train_reconstructor import over_background

INPUTS = ("white", "tinted", "generated", "negative-control")


def tinted(views: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``views [V, 3, H, W]`` on white recomposited over a random colour a view (``masks [V, 1, H, W]`` = alpha),
    as ``train-reconstructor --tinted-background-share`` does."""
    colours = torch.rand(1, views.shape[0], 3, 1, 1, generator=generator)
    return over_background(views[None], masks[None], colours, torch.tensor([True]))[0]


def silhouettes(views: torch.Tensor) -> torch.Tensor:
    """Foreground masks ``[V, H, W]`` of ``views [V, 3, H, W]`` in ``[0, 1]`` against each view's border colour,
    as the pipeline carves its meshes."""
    return foreground_masks(views * 2 - 1, background="border")


@torch.no_grad()
def reconstruction_scores(model: LatentSparseNeuS, views: torch.Tensor, cameras, target_mesh,
                          cfg: EvaluationConfig, level: Optional[float] = None,
                          carve_contour: Optional[float] = CARVE_CONTOUR) -> Dict[str, float]:
    """Mesh ``views [V, 3, H, W]`` in ``[0, 1]`` with ``model`` (the SDF's ``level`` set, the model's own by
    default, carved to the ``carve_contour`` of the views' silhouettes unless it is ``None``) and score it
    against ``target_mesh``."""
    context = model.encode(views[None] * 2 - 1, 0, cameras[None])
    masks = None if carve_contour is None else silhouettes(views)
    try:
        mesh = mesh_from_neus(model, context, resolution=cfg.mesh_resolution, level=level, masks=masks, cameras=cameras,
                              carve_contour=carve_contour or CARVE_CONTOUR)  # unused without masks
    except ValueError:  # no surface
        mesh = None
    return scored(mesh, target_mesh, cfg)


def scored(mesh, target_mesh, cfg: EvaluationConfig) -> Dict[str, float]:
    """Volume IoU and Chamfer-L1 of ``mesh`` (``None``: no surface) against ``target_mesh``, at the evaluation's settings."""
    chamfer, iou = mesh_scores(mesh, target_mesh, cfg.chamfer_points, cfg.mesh_iou_resolution)
    return {"volume_iou": iou, "chamfer_l1": chamfer, "failed": float(mesh is None)}


def visual_hull_scores(views: torch.Tensor, cameras, target_mesh, cfg: EvaluationConfig, contour: float) -> Dict[str, float]:
    """Score the visual hull of ``views [V, 3, H, W]`` in ``[0, 1]`` (their border-colour silhouettes carved at
    ``contour``, no SDF: :func:`~diffusers_mv3d.mesh.visual_hull_mesh`) against ``target_mesh``."""
    masks = silhouettes(views)
    try:
        mesh = visual_hull_mesh(masks, cameras, resolution=cfg.mesh_resolution, contour=contour)
    except ValueError:  # no surface
        mesh = None
    return scored(mesh, target_mesh, cfg)


def silhouette_agreement(generated: torch.Tensor, renders: torch.Tensor) -> List[float]:
    """Mean IoU and area ratio of the foreground masks of ``generated`` against ``renders`` (both
    ``[V, 3, H, W]`` in [0, 1], masks against the views' border colour as the meshes are carved)."""
    ours, theirs = silhouettes(generated), silhouettes(renders)
    areas = ours.flatten(1).sum(-1).float() / theirs.flatten(1).sum(-1).float().clamp(min=1)
    return [mask_iou(ours, theirs).mean().item(), areas.mean().item()]


def copy_reference(views: torch.Tensor) -> torch.Tensor:
    """View 0 of ``views [V, ...]`` in place of views 1 to V-1 (the baseline generated views are scored beside)."""
    return views[:1].expand_as(views[1:])


def pose_offsets(generated: torch.Tensor, renders: torch.Tensor) -> torch.Tensor:
    """``[V, V]`` counts: row i, column k is 1 where the render view ``(i + k) mod V`` matches generated
    view i best (least squared error); a model that turns the object right puts every count in column 0.
    A tie with view i's own render counts as the right pose: an object with a symmetry has renders that
    are equal (a table's view 4 is its view 0), and the first of equals is not the better match."""
    views = generated.shape[0]
    mse = ((generated[:, None] - renders[None]) ** 2).flatten(2).mean(-1)  # [V generated, V renders]
    own = torch.arange(views)
    best = torch.where(mse[own, own] <= mse.min(1).values, own, mse.argmin(1))
    counts = torch.zeros(views, views, dtype=torch.long)
    counts[own, (best - own) % views] = 1
    return counts


def column_means(rows: Sequence[Sequence[float]]) -> List[float]:
    """The mean of each column of ``rows`` (one row an object)."""
    return [sum(column) / len(rows) for column in zip(*rows)]


def generated_views(pipe, views: torch.Tensor, cameras, steps: int, seed: int, caption=None, **options) -> torch.Tensor:
    """Image-to-multiview from ``views[0]`` (and ``caption`` when given), ``[V, 3, H, W]`` in [0, 1]."""
    out = pipe(prompt=caption, image=views[0], num_views=views.shape[0], cameras=cameras, num_inference_steps=steps,
               output_type="pt", generator=torch.Generator().manual_seed(seed), **options)
    return out.images.cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="folders holding reconstructor/")
    parser.add_argument("--objects", type=int, default=16, help="unseen objects3d objects (default 16)")
    parser.add_argument("--first", type=int, default=0, help="skip this many tuning objects (default 0)")
    parser.add_argument("--seen-objects3d", type=int, default=2000,
                        help="skip objects equal to one of the first this many objects3d objects (the training "
                             "renders; default 2000; 0: take them as they come, as before 2026-12-04)")
    parser.add_argument("--pipeline", default=None, help="a TuneMV3D pipeline folder for the generated input")
    parser.add_argument("--steps", type=int, default=30, help="sampling steps of the generated views (default 30)")
    parser.add_argument("--consistency-ratio", type=float, default=None,
                        help="K of the generated views (default: the pipeline's saved one)")
    parser.add_argument("--consistency-scale", type=float, default=None,
                        help="alpha of the generated views (default: the pipeline's saved one)")
    parser.add_argument("--neus-interval", type=int, default=None,
                        help="render the NeuS condition every this many steps (default: the pipeline's, 3)")
    parser.add_argument("--eta", type=float, default=None,
                        help="DDIM eta of the generated views (default: the pipeline's saved one)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance of the generated views (default: the pipeline's saved one)")
    parser.add_argument("--caption", action="store_true", help="give the object's caption with the image")
    parser.add_argument("--auto-caption", action="store_true",
                        help="give the image's auto-caption (as generate --image does without a prompt)")
    parser.add_argument("--captioner", default=None,
                        help="with --auto-caption: a RetrievalCaptioner folder, or 'none' for the attribute classifier's "
                             "caption (default: the pipeline's captioner, the classifier's without one)")
    parser.add_argument("--resolution", type=int, default=32, help="view size in pixels (default 32)")
    parser.add_argument("--mesh-resolution", type=int, default=None,
                        help="marching-cubes grid side (default: the evaluation's, 64)")
    parser.add_argument("--mesh-levels", type=float, nargs="+", default=[None],
                        help="SDF values meshed, a row each (default: each reconstructor's own mesh_level, 0 unless "
                             "saved otherwise)")
    parser.add_argument("--mesh-carving", action=argparse.BooleanOptionalAction, default=True,
                        help="carve the SDF to the input views' silhouettes, as the pipeline does (default: yes)")
    parser.add_argument("--carve-contours", type=float, nargs="+", default=[CARVE_CONTOUR],
                        help=f"mask values in (0, 1) the carved surface follows, a row each (default: the pipeline's, "
                             f"{CARVE_CONTOUR})")
    parser.add_argument("--visual-hull", action="store_true",
                        help="add rows for the views' visual hull (the carving alone, no SDF): what the "
                             "reconstructors add to carving")
    parser.add_argument("--pose-table", action="store_true",
                        help="also print, for each generated view, which render view matches it best (as an "
                             "offset around the orbit): whether the views turn the object or repeat other poses")
    parser.add_argument("--records", default=None, metavar="JSON",
                        help="write each object's generated-view figures (photo_psnr, ssim, silhouette_iou) and its "
                             "mesh's (volume_iou, chamfer_l1: the first reconstructor, level and contour) to this "
                             "file, for benchmarks/paired_difference.py (needs --pipeline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.caption and args.auto_caption:
        parser.error("--caption and --auto-caption exclude each other")
    if args.first < 0:
        parser.error(f"--first must be >= 0, got {args.first}")
    if args.objects < 2:
        parser.error(f"--objects must be >= 2 (the negative control pairs neighbours), got {args.objects}")
    if args.pose_table and not args.pipeline:
        parser.error("--pose-table scores generated views: it needs --pipeline")
    if args.records and not args.pipeline:
        parser.error("--records holds the generated views' figures: it needs --pipeline")
    if args.visual_hull and not args.mesh_carving:
        parser.error("--visual-hull is the carving alone: it needs --mesh-carving")
    if not all(0 < c < 1 for c in args.carve_contours):
        parser.error(f"--carve-contours must lie in (0, 1), got {args.carve_contours}")
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)

    models = {name: LatentSparseNeuS.from_pretrained(name, subfolder="reconstructor").eval() for name in args.models}
    size, pipe = args.resolution, None
    if args.pipeline:
        from diffusers_mv3d import TuneMV3DPipeline

        pipe = TuneMV3DPipeline.from_pretrained(args.pipeline)
        pipe.set_progress_bar_config(disable=True)
        if pipe.image_size != size:
            parser.error(f"--resolution is {size} but the pipeline generates {pipe.image_size} px views")
    mesh_settings = {} if args.mesh_resolution is None else {"mesh_resolution": args.mesh_resolution}
    cfg = EvaluationConfig(model=args.models[0], **mesh_settings)  # only its mesh settings are read
    cameras = default_cameras(8, size)
    generator = torch.Generator().manual_seed(args.seed)
    picked = tuning_objects(args.objects, args.first, args.seen_objects3d)
    objects = [obj for _, obj in picked]
    renders = [{"views": rgba[:, :3], "masks": rgba[:, 3:]}
               for rgba in (render_object(obj, cameras, alpha=True) for obj in objects)]
    inputs = {"white": [r["views"] for r in renders],
              "tinted": [tinted(r["views"], r["masks"], generator) for r in renders],
              "negative-control": [renders[(i + 1) % len(renders)]["views"] for i in range(len(renders))]}
    if pipe is not None:
        start = time.perf_counter()
        options = {name: value for name, value in [("consistency_ratio", args.consistency_ratio),
                                                   ("consistency_scale", args.consistency_scale), ("eta", args.eta),
                                                   ("guidance_scale", args.guidance_scale),
                                                   ("neus_interval", args.neus_interval)] if value is not None}
        captions = [obj.caption if args.caption else None for obj in objects]
        if args.auto_caption:
            classifier = AttributeClassifier.from_pretrained(DEFAULT_CLASSIFIER)
            if args.captioner == "none":
                captioner = None
            elif args.captioner is not None:
                captioner = RetrievalCaptioner.from_pretrained(args.captioner)
            else:
                captioner = getattr(pipe, "captioner", None)
            captions = caption_references(torch.stack([r["views"][0] for r in renders]) * 2 - 1, classifier, captioner)
            print(f"auto-captions ({'retrieval captioner' if captioner is not None else 'attribute classifier'}): "
                  + "; ".join(captions), flush=True)
        inputs["generated"] = [generated_views(pipe, r["views"], cameras, args.steps, args.seed, caption, **options)
                               for r, caption in zip(renders, captions)]
        pairs = list(zip(inputs["generated"], renders))
        view_scores = [image_psnr_ssim(g[1:], r["views"][1:]) for g, r in pairs]
        psnr, ssim = column_means(view_scores)
        copied_psnr, copied_ssim = column_means([image_psnr_ssim(copy_reference(r["views"]), r["views"][1:]) for r in renders])
        outlines = [silhouette_agreement(g[1:], r["views"][1:]) for g, r in pairs]
        iou, area = column_means(outlines)
        records = [{"object_index": args.first + i, "object": name, "seed": args.seed, "photo_psnr": p, "ssim": s,
                    "silhouette_iou": o[0]} for i, ((name, _), (p, s), o) in enumerate(zip(picked, view_scores, outlines))]
        copied_iou, copied_area = column_means([silhouette_agreement(copy_reference(r["views"]), r["views"][1:])
                                                for r in renders])
        print(f"generated {len(renders)} objects in {time.perf_counter() - start:.0f} s; views 1-7 against the renders: "
              f"PSNR {psnr:.2f} dB, SSIM {ssim:.3f} (reference copied: {copied_psnr:.2f} dB, {copied_ssim:.3f}); "
              f"their silhouettes: IoU {iou:.3f} with the renders', {area:.2f}x their area (reference copied: "
              f"{copied_iou:.3f}, {copied_area:.2f}x)", flush=True)
        if args.pose_table:
            counts = sum(pose_offsets(g, r["views"]) for g, r in pairs)
            print(f"\nbest-matching render view of each generated view, as the offset around the orbit (counts over "
                  f"{len(pairs)} objects; offset 0: the right pose)\n\n| generated view | "
                  + " | ".join(f"+{k}" for k in range(len(counts))) + " |\n|" + "---|" * (len(counts) + 1))
            for i, row in enumerate(counts.tolist()):
                print(f"| {i} | " + " | ".join(str(c) for c in row) + " |")
            print(flush=True)

    rows: List[str] = []
    contours = args.carve_contours if args.mesh_carving else [None]
    scorers = {name if level is None else f"{name} at level {level:g}":
               (lambda views, obj, contour, model=model, level=level:
                reconstruction_scores(model, views, cameras, obj.mesh, cfg, level, contour))
               for name, model in models.items() for level in args.mesh_levels}
    if args.visual_hull:
        scorers["visual hull (no reconstructor)"] = lambda views, obj, contour: visual_hull_scores(
            views, cameras, obj.mesh, cfg, contour)
    for name, score in scorers.items():
        for source, contour in [(s, c) for s in INPUTS if s in inputs for c in contours]:
            scores = [score(views, obj, contour) for views, obj in zip(inputs[source], objects)]
            if args.records and source == "generated" and "volume_iou" not in records[0]:
                for record, s in zip(records, scores):
                    record.update(volume_iou=s["volume_iou"], chamfer_l1=s["chamfer_l1"])
            mean = {k: sum(s[k] for s in scores) / len(scores) for k in ("volume_iou", "failed")}
            chamfers = [s["chamfer_l1"] for s in scores if s["chamfer_l1"] == s["chamfer_l1"]]
            chamfer = sum(chamfers) / len(chamfers) if chamfers else float("nan")
            rows.append(f"| {name} | {source} | {'-' if contour is None else contour} | {mean['volume_iou']:.3f} | {chamfer:.4f} | {int(mean['failed'] * len(scores))} |")
            print(rows[-1], flush=True)
    print(f"\n{args.objects} tuning objects ({picked[0][0]} to {picked[-1][0]}, none equal to the first "
          f"{args.seen_objects3d} objects3d objects), 8 views at {size} px, "
          f"meshes at {cfg.mesh_resolution}^3, SDF level "
          f"{' / '.join('the saved one' if v is None else f'{v:g}' for v in args.mesh_levels)}, "
          f"{'carved to the input silhouettes' if args.mesh_carving else 'not carved'}\n")
    print("| reconstructor | input views | carve contour | volume IoU | Chamfer-L1 | no surface |\n|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.records:
        source = f"{args.pipeline}, meshes by {next(iter(scorers))}"
        atomic_write_text(args.records, json.dumps({"source": source, "records": records}, indent=1))
        print(f"\nwrote {args.records}")


if __name__ == "__main__":
    main()
