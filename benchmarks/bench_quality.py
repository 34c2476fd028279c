"""Quality of TuneMV3D sampling against the frozen foundation model, its ablations and ground truth
(DESIGN.md §6): consistency (VH-IoU, photo-consistency, held-out reconstruction PSNR), fidelity
(attribute-classifier accuracy in / out of the 3D splits), wall time, and optionally
image-to-multiview (PSNR / SSIM, Chamfer-L1, volume IoU).

A thin wrapper over :mod:`diffusers_mv3d.evaluation.evaluate` (``diffusers-mv3d evaluate`` runs the
same evaluation). Prints the markdown table (with this command, the machine and the date) and writes
it to ``--out``, with the full results as JSON beside it (``.json``). The prompts and seeds are
``benchmarks/prompts.py``.

    python benchmarks/bench_quality.py --model pipelines/tunemv3d-tiny --out docs/results_quality.md \\
        --model-card pipelines/tunemv3d-tiny/README.md
    python benchmarks/bench_quality.py --model pipelines/tunemv3d-tiny --image-to-multiview 8 \\
        --variants tunemv3d ground-truth --out docs/results_i2mv.md
    python benchmarks/bench_quality.py --model runs/foundation-tiny/pipeline --steps 5 --seeds 0 \\
        --recon-steps 100 --out /tmp/quality_smoke.md        # smoke run: a foundation folder gets a fresh branch
"""

import argparse
import shlex
import sys
from pathlib import Path

from diffusers_mv3d.evaluation.evaluate import add_arguments, evaluate, resolve, write_results
from diffusers_mv3d.evaluation.report import update_model_card


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, "markdown file to write (the JSON results go beside it, .json)")
    parser.add_argument("--views-dir", default=None, help="also save every object's views (PNG rows) under this folder")
    parser.add_argument("--model-card", default=None, metavar="README",
                        help="also write the tables as the '## Quality' section of this model card (e.g. "
                             "pipelines/tunemv3d-tiny/README.md), replacing the one a previous run wrote")
    args = parser.parse_args(argv)
    cfg = resolve(args)
    if cfg is None:
        return 0
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "python benchmarks/bench_quality.py " + shlex.join(argv)
    results = evaluate(cfg, views_dir=args.views_dir)
    out = Path(args.out)
    report = write_results(results, str(out), str(out.with_suffix(".json")), command)
    print(report, end="")
    if args.model_card:
        update_model_card(args.model_card, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
