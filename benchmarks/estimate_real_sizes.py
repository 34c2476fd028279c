"""Compute (not measure) the sampling cost of TuneMV3D at real Stable Diffusion 1.5 / 2.1 sizes.

Builds the published UNet configs and a branch made as ``diffusers-mv3d train`` makes it on PyTorch's
``meta`` device (no weights, no arithmetic), counts the floating-point operations of one sampling step
with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions; the NeuS's element-wise
work and grid sampling are not counted), and adds up parameter bytes. The figures in
docs/real_checkpoints.md come from here and are labelled as computed.

    python benchmarks/estimate_real_sizes.py --views 8
"""

import argparse
from types import SimpleNamespace

import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from diffusers_mv3d.cameras import default_cameras
from diffusers_mv3d.training.branch import build_branch_from_unet
from diffusers_mv3d.training.commands import TuneMV3DTrainConfig

# published UNet configs (unet/config.json of stable-diffusion-v1-5 and stabilityai/stable-diffusion-2-1)
SD15 = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SIZES = {"SD 1.5, 512 px (latents 64x64)": (SD15, 77),
         "SD 2.1, 768 px (latents 96x96)": (dict(SD15, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True), 77)}


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def step_flops(unet, controlnet, neus, views: int, text_dim: int, tokens: int):
    """FLOPs of one sampling step: UNet on 2V images (CFG), branch on V (shared) or 2V, NeuS once."""
    size, channels = unet.config.sample_size, unet.config.in_channels
    cameras = default_cameras(views, size)
    x = torch.zeros(1, views, channels, size, size, device="meta")
    t = torch.zeros(1, views, dtype=torch.long, device="meta")
    text = torch.zeros(1, tokens, text_dim, device="meta")
    # the NeuS output on meta tensors: shapes only
    render = neus(x, t, cameras.to(device="meta"))
    branch = lambda b: controlnet(x.expand(b, -1, -1, -1, -1), t.expand(b, -1), text.expand(b, -1, -1),
                                  cameras.to(device="meta"), neus_render=render.x0.expand(b, -1, -1, -1, -1),
                                  sample_points=render.sample_points.expand(b, -1, -1, -1, -1),
                                  sample_weights=render.sample_weights.expand(b, -1, -1, -1))
    folded = torch.zeros(2 * views, channels, size, size, device="meta")
    unet_text = torch.zeros(2 * views, tokens, text_dim, device="meta")
    return dict(
        unet=flops(lambda: unet(folded, torch.zeros(2 * views, dtype=torch.long, device="meta"), unet_text)),
        branch_shared=flops(lambda: branch(1)),
        branch_full=flops(lambda: branch(2)),
        neus=flops(lambda: neus(x, t, cameras.to(device="meta"))),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=8)
    args = parser.parse_args()
    print("| model | UNet params | branch params | UNet TFLOP a step (2V images) | branch TFLOP shared / full | NeuS GFLOP (matmuls) | pipeline / UNet, K = 0: shared / full |")
    print("|---|---|---|---|---|---|---|")
    for name, (config, tokens) in SIZES.items():
        with torch.device("meta"):
            unet = UNet2DConditionModel(**config)
        cfg = TuneMV3DTrainConfig()
        with torch.device("meta"):
            controlnet, neus = build_branch_from_unet(unet, unet.config.in_channels, unet.config.in_channels == 4, cfg, cfg.seed)
        text_dim = unet.config.encoder_hid_dim or unet.config.cross_attention_dim
        f = step_flops(unet, controlnet, neus, args.views, text_dim, tokens)
        params = lambda m: sum(p.numel() for p in m.parameters()) / 1e6
        shared = (f["unet"] + f["branch_shared"] + f["neus"]) / f["unet"]
        full = (f["unet"] + f["branch_full"] + f["neus"]) / f["unet"]
        print(f"| {name} | {params(unet):.0f}M | {params(controlnet):.0f}M | {f['unet'] / 1e12:.2f} | "
              f"{f['branch_shared'] / 1e12:.2f} / {f['branch_full'] / 1e12:.2f} | {f['neus'] / 1e9:.1f} | {shared:.2f} / {full:.2f} |")


if __name__ == "__main__":
    main()
