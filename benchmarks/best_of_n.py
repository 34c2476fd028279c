"""Best-of-N image-to-multiview: does keeping the most self-consistent of N samples give better views?

For each tuning object (:func:`~diffusers_mv3d.data.splits.tuning_objects`, as
``benchmarks/score_reconstructor.py`` picks them; never the test set) and each ``--seeds`` seed, the
pipeline generates 8 views from view 0 (with the object's caption under ``--caption``). Each sample
gets its figures against the renders (``photo_psnr``, ``ssim`` of views 1-7, as the image-to-multiview
evaluation scores them) and the evaluation's consistency figures of the views alone, which need no
ground truth (:func:`~diffusers_mv3d.evaluation.metrics.score_views`: VH-IoU, photo-consistency,
held-out reconstruction). The report then says, over the objects:

- each seed's mean against the mean of the other seeds: every object of one seed starts from the same
  initial noise, so one seed's figures can sit above or below the others' for all objects at once;
- for each consistency figure, the views of the seed it ranks first, against the mean over seeds (what
  one sample of a random seed scores) and against the best seed in hindsight (the ceiling of any
  selector).

Records are written after every sample (atomically) and a rerun with the same ``--out`` continues.

    python benchmarks/best_of_n.py --pipeline pipelines/tunemv3d-tiny --objects 32 --seeds 0 1 2 3 \\
        --caption --num-threads 1 --out runs/best-of-n.json
"""

import argparse
import json
import math
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

from diffusers_mv3d.cameras import default_cameras
from diffusers_mv3d.data.splits import tuning_objects
from diffusers_mv3d.evaluation.metrics import image_psnr_ssim, score_views
from diffusers_mv3d.evaluation.settings import EvaluationConfig
from diffusers_mv3d.evaluation.variants import render_object
from diffusers_mv3d.io_utils import atomic_write_text

SELECTORS = ("vh_iou", "consistency_photo_psnr", "recon_psnr")  # higher: more self-consistent views


def mean_and_error(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and its standard error."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def by_object(records: Sequence[dict], seeds: Sequence[int]) -> Dict[int, Dict[int, dict]]:
    """``{object_index: {seed: record}}`` of the objects that hold every one of ``seeds``."""
    table: Dict[int, Dict[int, dict]] = {}
    for record in records:
        table.setdefault(record["object_index"], {})[record["seed"]] = record
    return {obj: samples for obj, samples in table.items() if all(s in samples for s in seeds)}


def seed_effect(table: Dict[int, Dict[int, dict]], seed: int, metric: str = "photo_psnr") -> Tuple[float, float, float]:
    """One seed's mean ``metric``, and its paired difference (mean, s.e.) from the mean of the other seeds."""
    values = [samples[seed][metric] for samples in table.values()]
    differences = [samples[seed][metric] - sum(r[metric] for s, r in samples.items() if s != seed) / (len(samples) - 1)
                   for samples in table.values()]
    return (sum(values) / len(values), *mean_and_error(differences))


def selection(table: Dict[int, Dict[int, dict]], selector: str, metric: str = "photo_psnr") -> Dict[str, float]:
    """``metric`` of the sample each object's ``selector`` ranks first, against a random seed and the best seed."""
    chosen = [max(samples.values(), key=lambda r: r[selector])[metric] for samples in table.values()]
    average = [sum(r[metric] for r in samples.values()) / len(samples) for samples in table.values()]
    best = [max(r[metric] for r in samples.values()) for samples in table.values()]
    gain, error = mean_and_error([c - a for c, a in zip(chosen, average)])
    return {"chosen": sum(chosen) / len(chosen), "random": sum(average) / len(average), "best": sum(best) / len(best),
            "gain": gain, "gain_se": error}


def sample_record(pipe, obj, cameras, seed: int, steps: int, caption: bool, cfg: EvaluationConfig) -> dict:
    """One image-to-multiview sample of ``obj``: its figures against the renders and its self-consistency."""
    renders = render_object(obj, cameras, alpha=True)[:, :3]
    start = time.perf_counter()
    views = pipe(prompt=obj.caption if caption else None, image=renders[0], num_views=renders.shape[0],
                 cameras=cameras, num_inference_steps=steps, output_type="pt",
                 generator=torch.Generator().manual_seed(seed)).images.cpu()
    seconds = time.perf_counter() - start
    psnr, ssim = image_psnr_ssim(views[1:], renders[1:])
    consistency = score_views(views, cameras, cfg)
    return {"seed": seed, "photo_psnr": psnr, "ssim": ssim, "vh_iou": consistency["vh_iou"],
            "consistency_photo_psnr": consistency["photo_psnr"], "recon_psnr": consistency["recon_psnr"],
            "seconds": seconds}


def report(records: Sequence[dict], seeds: Sequence[int]) -> List[str]:
    """The seed and selection tables, as markdown lines."""
    table = by_object(records, seeds)
    lines = [f"{len(table)} objects x seeds {' '.join(map(str, seeds))}, views 1-7 against the renders", "",
             "| seed | PSNR dB | SSIM | PSNR minus the other seeds' (s.e.) |", "|---|---|---|---|"]
    for seed in seeds:
        psnr, difference, error = seed_effect(table, seed)
        ssim = sum(samples[seed]["ssim"] for samples in table.values()) / len(table)
        lines.append(f"| {seed} | {psnr:.2f} | {ssim:.3f} | {difference:+.2f} ({error:.2f}) |")
    lines += ["", "| kept sample | PSNR dB | minus a random seed's (s.e.) |", "|---|---|---|"]
    picks = {selector: selection(table, selector) for selector in SELECTORS}
    lines += [f"| highest {selector} | {p['chosen']:.2f} | {p['gain']:+.2f} ({p['gain_se']:.2f}) |" for selector, p in picks.items()]
    random, best = picks[SELECTORS[0]]["random"], picks[SELECTORS[0]]["best"]  # the same for every selector
    lines += [f"| a random seed (mean over seeds) | {random:.2f} | 0 |",
              f"| the best seed in hindsight (ceiling) | {best:.2f} | {best - random:+.2f} |"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", required=True, help="a TuneMV3D pipeline folder")
    parser.add_argument("--objects", type=int, default=32, help="tuning objects (default 32)")
    parser.add_argument("--seen-objects3d", type=int, default=8000,
                        help="skip objects equal to one of the first this many objects3d objects (default 8000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="samples an object (default 0 1 2 3)")
    parser.add_argument("--steps", type=int, default=30, help="sampling steps (default 30)")
    parser.add_argument("--caption", action="store_true", help="give the object's caption with the image")
    parser.add_argument("--out", required=True, help="records JSON (continued when it exists)")
    parser.add_argument("--num-threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if len(set(args.seeds)) < 2:
        parser.error(f"--seeds needs at least two different seeds, got {args.seeds}")
    if args.objects < 1:
        parser.error(f"--objects must be >= 1, got {args.objects}")
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    from diffusers_mv3d import TuneMV3DPipeline

    pipe = TuneMV3DPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    cfg = EvaluationConfig(model=args.pipeline)
    cameras = default_cameras(8, pipe.image_size)
    out = Path(args.out)
    records = json.loads(out.read_text())["records"] if out.exists() else []
    done = {(r["object_index"], r["seed"]) for r in records}
    for index, (name, obj) in enumerate(tuning_objects(args.objects, 0, args.seen_objects3d)):
        for seed in args.seeds:
            if (index, seed) in done:
                continue
            records.append({"object_index": index, "object": name,
                            **sample_record(pipe, obj, cameras, seed, args.steps, args.caption, cfg)})
            atomic_write_text(out, json.dumps({"pipeline": args.pipeline, "records": records}, indent=1))
            print(f"{name} seed {seed}: {records[-1]['photo_psnr']:.2f} dB", flush=True)
    print("\n".join(report(records, args.seeds)))


if __name__ == "__main__":
    main()
