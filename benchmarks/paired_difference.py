"""Paired differences between two evaluation runs of the same prompts and seeds.

Two settings sampled from the same prompts and seeds start from the same initial noise, so the
difference of a metric object by object varies far less than the metric does across objects; its mean
and standard error say whether a setting changed quality beyond seed noise more sharply than two
unpaired means. Each input is ``results.json`` of ``diffusers-mv3d evaluate`` (``objects``) or the
``.json`` of ``benchmarks/score_saved_views.py`` (``records``), with the variant to take from it.

    python benchmarks/paired_difference.py runs/eval-cost/full-cost-scores.json full-cost runs/eval-neus3/results.json neus3
"""

import argparse
import json
import math
from pathlib import Path
from typing import Dict, List, Tuple

METRICS = ("vh_iou", "recon_psnr", "photo_psnr", "category_accuracy", "colour_accuracy")


def load_objects(path: str, variant: str) -> Dict[Tuple[int, int], dict]:
    """``{(prompt index, seed): record}`` of one variant."""
    data = json.loads(Path(path).read_text())
    records = data.get("objects") or data.get("records") or []
    return {(r["prompt_index"], r["seed"]): r for r in records if r.get("variant", variant) == variant}


def paired(baseline: Dict, candidate: Dict, metric: str) -> Tuple[float, float, int]:
    """Mean of ``candidate - baseline`` over the objects both hold, its standard error, and their count."""
    keys = sorted(set(baseline) & set(candidate))
    if len(keys) < 2:
        raise ValueError(f"the runs share {len(keys)} objects (same prompt index and seed); need at least 2")
    differences: List[float] = [candidate[k][metric] - baseline[k][metric] for k in keys]
    mean = sum(differences) / len(differences)
    spread = math.sqrt(sum((d - mean) ** 2 for d in differences) / (len(differences) - 1))
    return mean, spread / math.sqrt(len(differences)), len(keys)


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
    for metric in METRICS:
        mean, error, count = paired(baseline, candidate, metric)
        print(f"  {metric}: {mean:+.3f} (s.e. {error:.3f}, {count} objects, {abs(mean) / error if error else 0:.1f} s.e.)")


if __name__ == "__main__":
    main()
