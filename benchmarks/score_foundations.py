"""Score text-to-image foundations on prompt fidelity and background whiteness (issue 13's pilot).

Each model folder (an IFPipeline folder written by ``train-foundation``, or a TuneMV3D pipeline whose
frozen foundation is scored) samples one image per (prompt, seed) with DDIM and classifier-free
guidance. The prompts are captions of unseen ``foundation2d`` objects (indices from 1,000,000 on; the
training renders use the first 20,000) and never one of the evaluation's prompts
(``benchmarks/prompts.py``, the test set). Figures per model:

- ``category`` / ``colour``: the attribute classifier's accuracy against the prompt's labels, on the
  samples as they come (a tinted background counts against them, as it does for a user);
- ``white bg``: the fraction of the images' outermost 2-pixel ring within 0.1 of white in every
  channel (the training renders' backgrounds are white);
- ``noise->colour r``: correlation, over images, between the mean of a sample's initial noise and the
  mean brightness of the sample (0 when colours come from the prompt alone; the young foundation's
  colours follow the noise).

Beside them: the ground truth (renders of the same objects, as the training data) and a negative
control (the first model's samples scored against the prompts of other objects).

    python benchmarks/score_foundations.py runs/pilot-*/pipeline --out docs/foundation_pilot.md
    python benchmarks/score_foundations.py pipelines/foundation-v2-tiny --guidance-scale 1 1.5 2 3
"""

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Sequence

import numpy as np
import torch

from diffusers_mv3d.data.render import random_cameras, render_views
from diffusers_mv3d.data.splits import TUNING_START, split_entry
from diffusers_mv3d.data.world import generate_object
from diffusers_mv3d.evaluation.classifier import AttributeClassifier, fidelity
from diffusers_mv3d.evaluation.settings import DEFAULT_CLASSIFIER

EVAL_PROMPTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts.py")


def pilot_objects(count: int) -> List[Dict]:
    """``count`` unseen foundation2d objects ``{"object", "text", "category", "colour"}`` whose caption is not an eval prompt."""
    from diffusers_mv3d.evaluation.settings import load_prompt_set

    eval_texts = {p.text for p in load_prompt_set(EVAL_PROMPTS_FILE)[0]}
    objects, index = [], TUNING_START
    while len(objects) < count:
        _, category, colour, object_seed = split_entry("foundation2d", index)
        obj = generate_object(category, object_seed, colour)
        if obj.caption not in eval_texts:
            objects.append({"object": obj, "seed": object_seed, "text": obj.caption, "category": category, "colour": colour})
        index += 1
    return objects


def white_background_fraction(images: torch.Tensor, ring: int = 2, tolerance: float = 0.1) -> float:
    """Fraction of the outermost ``ring`` pixels of ``images [N, 3, H, W]`` in ``[0, 1]`` within ``tolerance`` of white."""
    mask = torch.ones(images.shape[-2:], dtype=torch.bool)
    mask[ring:-ring, ring:-ring] = False
    border = images[:, :, mask]  # [N, 3, n]
    return float((border >= 1.0 - tolerance).all(dim=1).float().mean())


def noise_colour_correlation(images: torch.Tensor, initial_noise: torch.Tensor) -> float:
    """Pearson r over images between the initial noise's mean and the sample's mean brightness."""
    a, b = initial_noise.flatten(1).mean(1), images.flatten(1).mean(1)
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def ground_truth_images(objects: Sequence[Dict], resolution: int) -> torch.Tensor:
    """One render each, as the foundation data renders them (random pose, white background) -> ``[N, 3, H, W]`` in ``[0, 1]``."""
    images = []
    for item in objects:
        cameras = random_cameras(1, resolution, np.random.default_rng(item["seed"]))
        rgba = render_views(item["object"].mesh, cameras, background="white", antialias=2).rgba[0, :, :, :3]
        images.append(torch.from_numpy(np.ascontiguousarray(rgba)).permute(2, 0, 1).float())
    return torch.stack(images)


@torch.no_grad()
def sample_model(folder: str, prompts: Sequence[str], seeds: Sequence[int], steps: int, guidance: float, eta: float):
    """Samples ``[len(seeds) * len(prompts), 3, H, W]`` in ``[0, 1]`` (seed-major) and their initial noise."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    from diffusers_mv3d.sampling import sample_ddim

    unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet")).eval()
    text_encoder = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(os.path.join(folder, "tokenizer"))
    scheduler_config = _foundation_scheduler_config(folder, DDPMScheduler)
    images, noises = [], []
    for seed in seeds:
        size, channels = unet.config.sample_size, unet.config.in_channels
        noises.append(torch.randn((len(prompts), channels, size, size), generator=torch.Generator().manual_seed(seed)))
        x = sample_ddim(unet, text_encoder, tokenizer, prompts, scheduler_config, steps, guidance,
                        torch.Generator().manual_seed(seed), eta=eta)
        images.append((x + 1) / 2)
    return torch.cat(images), torch.cat(noises)


def _foundation_scheduler_config(folder: str, scheduler_class) -> dict:
    """The foundation's training scheduler config; a TuneMV3D pipeline keeps it inside its wrapper."""
    with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as handle:
        config = json.load(handle)
    if "inner_scheduler_config" in config:
        config = config["inner_scheduler_config"]
    return dict(scheduler_class.from_config(config).config)


def score(images: torch.Tensor, labels: Sequence[Dict], classifier) -> Dict[str, float]:
    result = fidelity(images * 2 - 1, labels, classifier)
    return {"category": result["category_accuracy"], "colour": result["colour_accuracy"],
            "white_bg": white_background_fraction(images)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="foundation pipeline folders (or TuneMV3D pipeline folders)")
    parser.add_argument("--num-prompts", type=int, default=32, help="unseen foundation2d captions (default: 32)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sampling seeds (default: 0 1)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default: 50, as generate)")
    parser.add_argument("--guidance-scale", type=float, nargs="+", default=[3.0],
                        help="CFG scales; each model is scored at each (default: 3.0)")
    parser.add_argument("--eta", type=float, default=1.0, help="DDIM eta (default: 1.0, the shipped pipeline's)")
    parser.add_argument("--num-threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--save-grid", default=None,
                        help="also write a PNG: one row of samples a model and CFG scale (seed 0), ground truth last")
    parser.add_argument("--out", default=None, help="write the table (markdown) here as well")
    args = parser.parse_args(argv)
    for folder in args.models:
        if not os.path.isfile(os.path.join(folder, "unet", "config.json")):
            parser.error(f"models: {folder!r} has no unet/config.json (expected a foundation pipeline folder)")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)

    objects = pilot_objects(args.num_prompts)
    prompts = [item["text"] for item in objects]
    labels = [{"category": item["category"], "colour": item["colour"]} for item in objects] * len(args.seeds)
    classifier = AttributeClassifier.from_pretrained(str(DEFAULT_CLASSIFIER)).eval()
    rows, grids = [], []
    for folder in args.models:
        for guidance in args.guidance_scale:
            started = time.time()
            images, noise = sample_model(folder, prompts, args.seeds, args.steps, guidance, args.eta)
            row = {"model": folder, "cfg": guidance, **score(images, labels, classifier),
                   "noise_r": noise_colour_correlation(images, noise), "seconds": time.time() - started}
            rows.append(row)
            grids.append(images[: len(prompts)])
            print(json.dumps(row), file=sys.stderr)
            if not grids[1:]:
                shifted = labels[1:] + labels[:1]  # every image against a neighbouring object's prompt
                negative = {"model": "negative control (first row's samples, other objects' prompts)", "cfg": guidance,
                            **score(images, shifted, classifier), "white_bg": float("nan"), "noise_r": float("nan")}
    truth = ground_truth_images(objects, resolution=grids[0].shape[-1])
    rows += [{"model": "ground truth (renders of the same objects)", "cfg": float("nan"),
              **score(truth, labels[: len(prompts)], classifier), "noise_r": float("nan")}, negative]
    if args.save_grid:
        from diffusers_mv3d.training.common import save_grid

        save_grid(torch.cat(grids + [truth]) * 2 - 1, args.save_grid, ncol=len(prompts))

    lines = [f"`python benchmarks/score_foundations.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             f"{len(prompts)} unseen foundation2d captions x seeds {args.seeds}, DDIM {args.steps} steps, eta {args.eta}", "",
             "| model | CFG | category | colour | white bg | noise->colour r |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['cfg']:g} | {r['category']:.2f} | {r['colour']:.2f} | {r['white_bg']:.2f} | "
              f"{r['noise_r']:.2f} |" for r in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        from diffusers_mv3d.io_utils import atomic_write

        atomic_write(args.out, lambda path: open(path, "w").write(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
