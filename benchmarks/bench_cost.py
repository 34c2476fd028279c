"""Cost of TuneMV3D sampling against the frozen UNet alone, in one process (DESIGN.md §3 "Cost", §6).

For the embedded-default sizes (or a pipeline folder with --model) and random weights of those sizes,
times ``pipe(...)`` (8 views, CFG, K = 0 and K = 0.5) and the plain UNet doing the same views and steps
(the same DDIM loop, no branch, no NeuS), and splits the pipeline's time by component with forward
hooks. Prints a markdown table for docs/results.md.

    python benchmarks/bench_cost.py --resolution 32 --steps 50
    python benchmarks/bench_cost.py --model pipelines/tunemv3d-tiny --steps 50 --mesh
"""

import argparse
import platform
import resource
import time
from collections import defaultdict
from datetime import date
from types import SimpleNamespace

import torch
from diffusers import DDIMScheduler

from diffusers_mv3d import TuneMV3DPipeline
from diffusers_mv3d.schedulers import ConsistencyGuidanceScheduler
from diffusers_mv3d.training.text import build_text_encoder, train_word_tokenizer
from diffusers_mv3d.training.train_foundation import FoundationTrainConfig, build_unet
from diffusers_mv3d.training.train_tunemv3d import TuneMV3DTrainConfig, build_branch


def random_pipeline(resolution: int) -> TuneMV3DPipeline:
    """The embedded-default architecture with random weights (a fresh branch from the UNet)."""
    torch.manual_seed(0)
    foundation = FoundationTrainConfig(resolution=resolution)
    tune = TuneMV3DTrainConfig()
    unet = build_unet(foundation)
    tokenizer = train_word_tokenizer(["a red chair with armrests"])
    text_encoder = build_text_encoder(tokenizer, foundation.text_hidden_size, foundation.text_layers, foundation.text_heads)
    tune.neus_render_resolution = tune.neus_render_resolution * resolution // 32
    controlnet, neus = build_branch(SimpleNamespace(unet=unet, channels=3, vae=None), tune)
    scheduler = ConsistencyGuidanceScheduler.wrap(DDIMScheduler(beta_schedule="squaredcos_cap_v2"))
    pipe = TuneMV3DPipeline(unet, controlnet, neus, scheduler, text_encoder, tokenizer)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe


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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=None, help="pipeline folder; random embedded-default weights if unset")
    parser.add_argument("--resolution", type=int, default=32, help="image size of the random model")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--mesh", action="store_true", help="also time return_mesh=True")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    pipe = TuneMV3DPipeline.from_pretrained(args.model) if args.model else random_pipeline(args.resolution)
    pipe.set_progress_bar_config(disable=True)
    counts = {n: sum(p.numel() for p in getattr(pipe, n).parameters()) for n in ("unet", "controlnet", "neus")}

    pipe("warm up", num_views=args.views, num_inference_steps=2)
    baseline = plain_unet_seconds(pipe, args.views, args.steps, args.guidance_scale)
    rows = []
    for ratio in (0.0, 0.5):
        totals, handles = timed_components(pipe)
        start = time.perf_counter()
        pipe("a red chair", num_views=args.views, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
             consistency_ratio=ratio, return_mesh=args.mesh and ratio == 0.5, generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - start
        for handle in handles:
            handle.remove()
        rows.append((ratio, seconds, dict(totals)))

    size = pipe.image_size
    print(f"## Sampling cost ({args.views} views, {size}x{size}, {args.steps} DDIM steps, CFG {args.guidance_scale})\n")
    flags = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                     for k, v in vars(args).items() if v not in (None, False))
    print(f"`python benchmarks/bench_cost.py {flags}`"
          f" on {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {date.today()}.\n")
    print(f"Parameters: unet {counts['unet'] / 1e6:.2f}M (frozen), controlnet {counts['controlnet'] / 1e6:.2f}M, "
          f"neus {counts['neus'] / 1e6:.3f}M.\n")
    print("| run | wall s | / frozen UNet | neus s | controlnet s | unet s | other s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| frozen UNet alone | {baseline:.1f} | 1.00 | - | - | {baseline:.1f} | - |")
    for ratio, seconds, totals in rows:
        other = seconds - sum(totals.get(k, 0.0) for k in ("neus", "controlnet", "unet", "text_encoder"))
        label = f"TuneMV3D K={ratio}" + (" + mesh" if args.mesh and ratio == 0.5 else "")
        print(f"| {label} | {seconds:.1f} | {seconds / baseline:.2f} | {totals.get('neus', 0):.1f} | "
              f"{totals.get('controlnet', 0):.1f} | {totals.get('unet', 0):.1f} | {other:.1f} |")
    print(f"\nPeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB.")


if __name__ == "__main__":
    main()
