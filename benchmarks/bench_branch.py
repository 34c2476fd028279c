"""Forward time of the TuneMV3D branch (LatentSparseNeuS + MultiViewControlNetModel) against the frozen
UNet, for 8 views of one object with classifier-free guidance (the branch and UNet see 16 images, the
NeuS 8), at the embedded-default sizes with random weights. Prints a markdown table.

    python benchmarks/bench_branch.py --resolutions 32 64 --threads 2
"""

import argparse
import platform
import time
from datetime import date

import torch

from diffusers_mv3d import default_cameras
from diffusers_mv3d.training.branch import build_branch_from_unet
from diffusers_mv3d.training.commands import FoundationTrainConfig, TuneMV3DTrainConfig
from diffusers_mv3d.training.foundation_model import build_unet


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"`python benchmarks/bench_branch.py --resolutions {' '.join(map(str, args.resolutions))} --threads {args.threads}`"
          f" on {platform.machine()}, {args.threads} threads, {date.today()}; {args.views} views, CFG (x2 batch).\n")
    print("| image | NeuS render | params unet / controlnet / neus | neus s | controlnet s | unet s | (neus + controlnet) / unet |")
    print("|---|---|---|---|---|---|---|")
    for resolution in args.resolutions:
        torch.manual_seed(0)
        unet = build_unet(FoundationTrainConfig(resolution=resolution)).eval()
        tune = TuneMV3DTrainConfig()
        tune.neus_render_resolution = tune.neus_render_resolution * resolution // 32
        controlnet, neus = build_branch_from_unet(unet, 3, False, tune, tune.seed)
        controlnet.eval(), neus.eval()
        cameras = default_cameras(args.views, resolution)
        views = torch.randn(1, args.views, 3, resolution, resolution)
        text = torch.randn(2, 77, unet.config.cross_attention_dim)
        with torch.no_grad():
            render = neus(views, 500, cameras)
            double = lambda x: torch.cat([x, x])  # noqa: E731
            t_neus = seconds(lambda: neus(views, 500, cameras), args.repeats)
            t_branch = seconds(lambda: controlnet(double(views), 500, text, cameras, double(render.x0),
                                                  double(render.sample_points), double(render.sample_weights)), args.repeats)
            t_unet = seconds(lambda: unet(double(views).flatten(0, 1), 500, text.repeat_interleave(args.views, 0)), args.repeats)
        count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
        print(f"| {resolution}x{resolution} | {tune.neus_render_resolution}x{tune.neus_render_resolution} | "
              f"{count(unet):.2f}M / {count(controlnet):.2f}M / {count(neus):.3f}M | {t_neus:.3f} | {t_branch:.3f} | "
              f"{t_unet:.3f} | {(t_neus + t_branch) / t_unet:.2f} |")


if __name__ == "__main__":
    main()
