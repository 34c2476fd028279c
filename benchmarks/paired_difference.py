"""Paired differences between two evaluation runs of the same prompts and seeds.

Two settings sampled from the same prompts and seeds start from the same initial noise, so the
difference of a metric object by object varies far less than the metric does across objects; its mean
and standard error say whether a setting changed quality beyond seed noise more sharply than two
unpaired means. Each input is ``results.json`` of ``diffusers-mv3d evaluate`` (``objects``), the
``.json`` of ``benchmarks/score_saved_views.py`` (``records``) or the ``--records`` file of
``benchmarks/score_reconstructor.py`` (``records`` keyed by tuning object, image-to-multiview), with
the variant to take from it (records without one match any name).

    python benchmarks/paired_difference.py runs/eval-cost/full-cost-scores.json full-cost runs/eval-neus3/results.json neus3
    python benchmarks/paired_difference.py runs/i2mv-a.json generated runs/i2mv-b.json generated
"""

import argparse
import json
import math
from pathlib import Path
from typing import Dict, List, Tuple

METRICS = ("vh_iou", "recon_psnr", "photo_psnr", "category_accuracy", "colour_accuracy")
IMAGE_TO_MULTIVIEW_METRICS = ("photo_psnr", "ssim", "silhouette_iou", "volume_iou", "chamfer_l1")
ALL_METRICS = tuple(dict.fromkeys(METRICS + IMAGE_TO_MULTIVIEW_METRICS))


def load_objects(path: str, variant: str) -> Dict[Tuple[int, int], dict]:
    """``{(prompt or tuning-object index, seed): record}`` of one variant."""
    data = json.loads(Path(path).read_text())
    records = data.get("objects") or data.get("records") or []
    return {(r["prompt_index"] if "prompt_index" in r else r["object_index"], r["seed"]): r
            for r in records if r.get("variant", variant) == variant}


def shared_metrics(baseline: Dict, candidate: Dict) -> List[str]:
    """The metrics both runs' records hold: the evaluation's, or the image-to-multiview scores'."""
    first = [next(iter(records.values()), {}) for records in (baseline, candidate)]
    metrics = [m for m in ALL_METRICS if all(m in record for record in first)]
    if not metrics:
        raise ValueError(f"the runs share none of the metrics {ALL_METRICS}")
    return metrics


def paired(baseline: Dict, candidate: Dict, metric: str) -> Tuple[float, float, int]:
    """Mean of ``candidate - baseline`` over the objects both hold, its standard error, and their count."""
    keys = sorted(set(baseline) & set(candidate))
    if len(keys) < 2:
        raise ValueError(f"the runs share {len(keys)} objects (same prompt index and seed); need at least 2")
    differences = [candidate[k][metric] - baseline[k][metric] for k in keys]
    differences = [d for d in differences if d == d]  # a mesh with no surface has no Chamfer (NaN)
    if len(differences) < 2:
        raise ValueError(f"{metric}: {len(differences)} of the {len(keys)} shared objects have a value; need at least 2")
    mean = sum(differences) / len(differences)
    spread = math.sqrt(sum((d - mean) ** 2 for d in differences) / (len(differences) - 1))
    return mean, spread / math.sqrt(len(differences)), len(differences)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", help="results.json (or score_saved_views .json) of the reference run")
    parser.add_argument("baseline_variant")
    parser.add_argument("candidate", help="results.json of the run compared with it")
    parser.add_argument("candidate_variant")
    args = parser.parse_args()
    baseline = load_objects(args.baseline, args.baseline_variant)
    candidate = load_objects(args.candidate, args.candidate_variant)
    print(f"{args.candidate_variant} ({args.candidate}) - {args.baseline_variant} ({args.baseline}), object by object:")
    for metric in shared_metrics(baseline, candidate):
        mean, error, count = paired(baseline, candidate, metric)
        print(f"  {metric}: {mean:+.3f} (s.e. {error:.3f}, {count} objects, {abs(mean) / error if error else 0:.1f} s.e.)")


if __name__ == "__main__":
    main()
