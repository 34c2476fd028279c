"""Score views that ``diffusers-mv3d evaluate`` saved, without sampling them again.

``evaluate --out DIR`` saves every object's views as one PNG row, ``DIR/views/<variant>/<prompt>-s<seed>.png``.
This script reads such a folder and computes the same consistency and fidelity metrics as
``evaluate`` (``score_views`` and the attribute classifier, with the evaluation's default settings),
for a run that was stopped before its report: the views are final, only the scores are missing.
The PNGs are 8-bit, as the views of every other report are not, which moves the figures by far less
than their seed noise.

    python benchmarks/score_saved_views.py runs/eval-cost/views/full-cost --steps 50 --num-threads 1
"""

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffusers_mv3d.cameras import default_cameras
from diffusers_mv3d.evaluation.evaluate import _fidelity_record, _load_classifier, summarize
from diffusers_mv3d.evaluation.metrics import score_views
from diffusers_mv3d.evaluation.settings import EvaluationConfig, load_prompt_set


def load_row(path: Path, views: int) -> torch.Tensor:
    """One saved row ``[H, V W, 3]`` uint8 -> views ``[V, 3, H, W]`` in [0, 1]."""
    row = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)
    height = row.shape[0]
    return row.reshape(height, views, -1, 3).permute(1, 3, 0, 2).contiguous()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("views_dir", type=Path, help="a views/<variant> folder written by diffusers-mv3d evaluate")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50, help="the steps the views were sampled with (recorded only)")
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write the records and summary as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)
    cfg = EvaluationConfig(model="saved views", steps=args.steps, views=args.views)
    prompts, _ = load_prompt_set(cfg.prompts)
    classifier, _ = _load_classifier(cfg)
    records = []
    start = time.perf_counter()
    for path in sorted(args.views_dir.glob("*-s*.png")):
        p, seed = map(int, re.fullmatch(r"(\d+)-s(\d+)", path.stem).groups())
        images = load_row(path, args.views)
        cameras = default_cameras(args.views, images.shape[-1])
        prompt = prompts[p]
        record = {"prompt_index": p, "prompt": prompt.text, "in_split": prompt.in_split, "seed": seed, "seconds": None}
        record.update(score_views(images, cameras, cfg))
        record.update(_fidelity_record(images, prompt, classifier, cfg))
        records.append(record)
    summary = summarize(records)
    a, i, o = summary["all"], summary["in_split"], summary["out_of_split"]
    print(f"{args.views_dir} ({len(records)} objects, scored in {time.perf_counter() - start:.0f} s):\n")
    print("| VH-IoU | coverage | photo dB | recon dB | category acc in / out | colour acc in / out |")
    print("|---|---|---|---|---|---|")
    print(f"| {a['vh_iou']:.3f} | {a['coverage']:.2f} | {a['photo_psnr']:.1f} | {a['recon_psnr']:.1f} | "
          f"{i['category_accuracy']:.2f} / {o['category_accuracy']:.2f} | {i['colour_accuracy']:.2f} / {o['colour_accuracy']:.2f} |")
    if args.out is not None:
        args.out.write_text(json.dumps({"records": records, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
