"""Cost of TuneMV3D sampling against the frozen UNet alone, in one process (DESIGN.md §3 "Cost", §6).

Times ``pipe(...)`` (V views, CFG, K = 0 and K = 0.5) under each sampling lever and the plain frozen
UNet doing the same views and steps (the same DDIM loop and CFG batch, no branch, no NeuS). Runs are
interleaved: every round times the baseline and then each setting, and a setting's ratio is the
median over rounds of its time over the same round's baseline, so a machine that gets busier or
quieter during the run moves both. A per-component split (forward hooks) comes from the last round.
Prints a markdown table for docs/results.md.

    python benchmarks/bench_cost.py --model pipelines/tunemv3d-tiny --steps 50        # the embedded default
    python benchmarks/bench_cost.py --steps 20                                        # its size, random weights
    python benchmarks/bench_cost.py --sd15 --views 4 --steps 2 --rounds 2             # Stable Diffusion 1.5's size

``--sd15`` builds random weights at Stable Diffusion 1.5's size: its UNet config (860M parameters,
latents 32x32 for 256 px views) and a fresh branch made as ``diffusers-mv3d train`` makes it
(``MultiViewControlNetModel.from_unet`` + the default NeuS on 4 latent channels). The views stay in
latent space (``output_type="latent"``, no VAE), as the baseline does.
"""

import argparse
import os
import platform
import resource
import statistics
import time
from collections import defaultdict
from datetime import date

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from diffusers_mv3d import TuneMV3DPipeline
from diffusers_mv3d.schedulers import ConsistencyGuidanceScheduler
from diffusers_mv3d.training.branch import build_branch_from_unet
from diffusers_mv3d.training.commands import FoundationTrainConfig, TuneMV3DTrainConfig
from diffusers_mv3d.training.foundation_model import build_unet
from diffusers_mv3d.training.text import build_text_encoder, train_word_tokenizer

# sampling levers: name -> pipeline-call arguments (the first is the paper's full-cost sampling)
LEVERS = {
    "branch on both CFG halves (full cost)": dict(share_branch=False, neus_interval=1),
    "branch on the conditional half, shared": dict(share_branch=True, neus_interval=1),
    "shared + NeuS every 2 steps": dict(share_branch=True, neus_interval=2),
    "shared + NeuS every 3 steps": dict(share_branch=True, neus_interval=3),
}

# Stable Diffusion 1.5's UNet (runwayml/stable-diffusion-v1-5 unet/config.json), at 256 px views
SD15_UNET = dict(
    sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)


def _pipeline(unet, text_hidden_size: int, text_layers: int, text_heads: int) -> TuneMV3DPipeline:
    """``unet`` frozen, a fresh branch built from it as training builds it, a small text encoder."""
    tokenizer = train_word_tokenizer(["a red chair with armrests"])
    text_encoder = build_text_encoder(tokenizer, text_hidden_size, text_layers, text_heads)
    tune, channels = TuneMV3DTrainConfig(), unet.config.in_channels
    controlnet, neus = build_branch_from_unet(unet, channels, channels != 3, tune, tune.seed)
    scheduler = ConsistencyGuidanceScheduler.wrap(DDIMScheduler(beta_schedule="squaredcos_cap_v2"))
    pipe = TuneMV3DPipeline(unet, controlnet, neus, scheduler, text_encoder, tokenizer)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    return pipe


def random_pipeline(resolution: int) -> TuneMV3DPipeline:
    """The embedded-default architecture with random weights."""
    torch.manual_seed(0)
    foundation = FoundationTrainConfig(resolution=resolution)
    return _pipeline(build_unet(foundation), foundation.text_hidden_size, foundation.text_layers, foundation.text_heads)


def sd15_pipeline() -> TuneMV3DPipeline:
    """Stable Diffusion 1.5's UNet size with random weights (latent space, no VAE)."""
    torch.manual_seed(0)
    return _pipeline(UNet2DConditionModel(**SD15_UNET), 768, 1, 12)


def plain_unet_seconds(pipe: TuneMV3DPipeline, views: int, steps: int, guidance_scale: float) -> float:
    """The frozen UNet sampling ``views`` images independently: the same DDIM loop and CFG batch."""
    scheduler = DDIMScheduler.from_config(pipe.scheduler.inner.config)
    scheduler.set_timesteps(steps)
    size = pipe.unet.config.sample_size
    x = torch.randn(views, pipe.unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with torch.no_grad():
        text = torch.cat(pipe.encode_prompt("a red chair", "cpu")[::-1])
        text = text.repeat_interleave(views, 0)
        for t in scheduler.timesteps:
            noise = pipe.unet(torch.cat([x, x]), t, text).sample[:, : x.shape[1]]
            uncond, cond = noise.chunk(2)
            x = scheduler.step(uncond + guidance_scale * (cond - uncond), t, x).prev_sample
    return time.perf_counter() - start


def timed_components(pipe: TuneMV3DPipeline):
    """Forward hooks that add each component's wall time into a dict."""
    totals, starts = defaultdict(float), {}
    handles = []
    for name in ("neus", "controlnet", "unet", "text_encoder"):
        module = getattr(pipe, name)
        handles.append(module.register_forward_pre_hook(lambda m, a, name=name: starts.__setitem__(name, time.perf_counter())))
        handles.append(module.register_forward_hook(
            lambda m, a, o, name=name: totals.__setitem__(name, totals[name] + time.perf_counter() - starts[name])
        ))
    return totals, handles


def rss_mb() -> float:
    """Resident memory of this process now (MB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="pipeline folder; random embedded-default weights if unset")
    parser.add_argument("--sd15", action="store_true", help="random weights at Stable Diffusion 1.5's size")
    parser.add_argument("--resolution", type=int, default=32, help="image size of the random embedded-default model")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median ratio over them)")
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS), metavar="LEVER",
                        help=f"settings to time (default: all of {list(LEVERS)})")
    args = parser.parse_args()
    if args.model:
        pipe = TuneMV3DPipeline.from_pretrained(args.model)
    else:
        pipe = sd15_pipeline() if args.sd15 else random_pipeline(args.resolution)
    pipe.set_progress_bar_config(disable=True)
    counts = {n: sum(p.numel() for p in getattr(pipe, n).parameters()) for n in ("unet", "controlnet", "neus")}
    output_type = "latent" if args.sd15 else "pil"
    settings = [(lever, ratio) for ratio in (0.0, 0.5) for lever in args.levers]

    with torch.no_grad():
        pipe("warm up", num_views=args.views, num_inference_steps=2, output_type=output_type)
    rss_loaded = rss_mb()
    times, baselines, split = defaultdict(list), [], {}
    for round_index in range(args.rounds):
        baseline = plain_unet_seconds(pipe, args.views, args.steps, args.guidance_scale)
        baselines.append(baseline)
        for lever, ratio in settings:
            totals, handles = timed_components(pipe)
            start = time.perf_counter()
            pipe("a red chair", num_views=args.views, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                 consistency_ratio=ratio, output_type=output_type, generator=torch.Generator().manual_seed(0),
                 **LEVERS[lever])
            seconds = time.perf_counter() - start
            for handle in handles:
                handle.remove()
            times[lever, ratio].append(seconds / baseline)
            split[lever, ratio] = (seconds, dict(totals))
        print(f"round {round_index + 1}/{args.rounds} done (baseline {baseline:.1f} s)", flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    size = pipe.image_size * (8 if args.sd15 else 1)
    label = "Stable Diffusion 1.5 size, random weights" if args.sd15 else (args.model or "embedded-default size, random weights")
    print(f"\n## Sampling cost: {label} ({args.views} views, {size}x{size}, {args.steps} DDIM steps, CFG {args.guidance_scale})\n")
    flags = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {' '.join(map(str, v)) if isinstance(v, list) else v}")
                     for k, v in vars(args).items() if v not in (None, False))
    print(f"`python benchmarks/bench_cost.py {flags}` on {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, {date.today()}; {args.rounds} interleaved rounds.\n")
    print(f"Parameters: unet {counts['unet'] / 1e6:.2f}M (frozen), controlnet {counts['controlnet'] / 1e6:.2f}M, "
          f"neus {counts['neus'] / 1e6:.3f}M.\n")
    print("| K | sampling | / frozen UNet (median) | per round | last round: wall s | neus s | controlnet s | unet s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| - | frozen UNet alone | 1.00 | - | {baselines[-1]:.1f} | - | - | {baselines[-1]:.1f} |")
    for lever, ratio in settings:
        seconds, totals = split[lever, ratio]
        rounds = " ".join(f"{r:.2f}" for r in times[lever, ratio])
        print(f"| {ratio} | {lever} | {statistics.median(times[lever, ratio]):.2f} | {rounds} | {seconds:.1f} | "
              f"{totals.get('neus', 0):.1f} | {totals.get('controlnet', 0):.1f} | {totals.get('unet', 0):.1f} |")
    print(f"\nPeak RSS {peak_mb:.0f} MB ({rss_loaded:.0f} MB after loading and a 2-step warm-up); "
          f"sampling adds at most {(peak_mb - rss_loaded) / args.views:.0f} MB a view over the loaded models.")


if __name__ == "__main__":
    main()
