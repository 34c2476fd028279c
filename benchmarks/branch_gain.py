"""How much the TuneMV3D branch improves the frozen UNet's denoising, with and without a clean reference.

On unseen ``objects3d`` objects (indices from 1,000,000 on; never the evaluation's ``eval3d`` objects)
the 8 default views are noised at one timestep; with ``reference`` view 0 stays clean (t = 0), as the
pipeline clamps it in image-to-multiview. Figures: the PSNR of the one-step x0 estimate of the noisy
views against the renders, for

- ``unet``: the frozen foundation alone (no residuals);
- ``branch, no NeuS``: the branch without its centralized condition (what consistency guidance
  subtracts, §3.3);
- ``branch``: the full branch (NeuS render + geometry-aware attention);
- ``NeuS x0``: the NeuS's own render of the clean views (the centralized condition, eq. 3) against
  the renders pooled to its size.

A branch that carries information between views beats ``unet`` most at high t with a reference;
equal figures mean its residuals are not used. Paired over the same objects, noise and prompts.

    python benchmarks/branch_gain.py pipelines/tunemv3d-tiny --objects 8 --timesteps 300 600 900 --num-threads 1
"""

import argparse
from typing import Dict, List

import torch
import torch.nn.functional as F

from diffusers_mv3d import TuneMV3DPipeline
from diffusers_mv3d.cameras import default_cameras
from diffusers_mv3d.data.splits import TUNING_START, split_object
from diffusers_mv3d.evaluation.variants import render_object
from diffusers_mv3d.foundation import predicted_x0

MODES = ("unet", "branch, no NeuS", "branch", "NeuS x0")


def psnr(a: torch.Tensor, b: torch.Tensor, size: int = 0) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), both area-pooled to ``size`` px first when > 0."""
    a = a.clamp(-1, 1)
    if size > 0:
        a, b = F.adaptive_avg_pool2d(a, size), F.adaptive_avg_pool2d(b, size)
    return float(10 * torch.log10(4.0 / ((a - b) ** 2).mean()))


@torch.no_grad()
def gains(pipe, views: torch.Tensor, text: torch.Tensor, t: int, reference: bool, seed: int,
          score_size: int = 0) -> Dict[str, float]:
    """PSNR of the views' x0 estimates under each mode (at ``score_size`` px when > 0); ``views [V, 3, H, W]`` in [-1, 1]."""
    scheduler = pipe.scheduler.inner
    num_views = views.shape[0]
    cameras = default_cameras(num_views, views.shape[-1])[None]
    noise = torch.randn(views.shape, generator=torch.Generator().manual_seed(seed))
    view_t = torch.full((1, num_views), t, dtype=torch.long)
    if reference:
        view_t[0, 0] = 0
    noisy = scheduler.add_noise(views, noise, view_t[0])
    if reference:
        noisy[0] = views[0]
    latents = noisy[None]
    scored = slice(1, None) if reference else slice(None)
    neus_output = pipe.neus(latents, view_t, cameras)
    outputs = {
        "unet": pipe.unet_noise(latents, view_t, text, None, None),
        "branch, no NeuS": pipe.predict_noise(latents, view_t, text, cameras, None),
        "branch": pipe.predict_noise(latents, view_t, text, cameras, neus_output),
    }
    scored_t = view_t[0, scored]
    scores = {mode: psnr(predicted_x0(scheduler, noisy[scored], out[0, scored], scored_t), views[scored], score_size)
              for mode, out in outputs.items()}
    render = neus_output.x0[0, scored]  # the centralized condition: NeuS's x0 at its render size
    scores["NeuS x0"] = psnr(render, F.adaptive_avg_pool2d(views[scored], render.shape[-2:]), score_size)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="TuneMV3D pipeline folders")
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[300, 600, 900])
    parser.add_argument("--no-caption", action="store_true", help="empty prompts (image-to-multiview's default)")
    parser.add_argument("--score-size", type=int, default=0,
                        help="pool every estimate and target to this size before the PSNR (0: full size; "
                             "the NeuS render's size compares it with the branch at equal detail)")
    parser.add_argument("--num-threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    objects = [split_object("objects3d", TUNING_START + i)[1] for i in range(args.objects)]
    rows: List[str] = []
    for model in args.models:
        pipe = TuneMV3DPipeline.from_pretrained(model)
        if pipe.vae is not None:
            parser.error(f"{model} is a latent pipeline; this benchmark noises pixel renders (pixel pipelines only)")
        pipe.neus.eval()
        size = pipe.image_size
        renders = [render_object(obj, default_cameras(8, size)) * 2 - 1 for obj in objects]
        texts = [pipe.encode_prompt("" if args.no_caption else obj.caption, do_classifier_free_guidance=False)[0]
                 for obj in objects]
        for reference in (False, True):
            for t in args.timesteps:
                runs = [gains(pipe, views, text, t, reference, seed, args.score_size)
                        for seed, (views, text) in enumerate(zip(renders, texts))]
                mean = {mode: sum(r[mode] for r in runs) / len(runs) for mode in MODES}
                rows.append(f"| {model} | {'view 0' if reference else 'none'} | {t} | "
                            + " | ".join(f"{mean[mode]:.2f}" for mode in MODES) + " |")
                print(rows[-1], flush=True)
    print(f"\n{args.objects} unseen objects3d objects, {'empty prompts' if args.no_caption else 'their captions'}; "
          "PSNR (dB) of the one-step x0 estimate of the noisy views\n")
    print("| model | clean reference | t | " + " | ".join(MODES) + " |\n|---|---|---|" + "---|" * len(MODES))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
