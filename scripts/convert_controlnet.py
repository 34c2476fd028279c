"""Start a TuneMV3D branch (MultiViewControlNetModel) from an existing diffusers ControlNetModel.

The logic is :func:`diffusers_mv3d.assembly.convert_controlnet`; this is its command line.

    python scripts/convert_controlnet.py --controlnet lllyasviel/sd-controlnet-canny \\
        --unet runs/sd15 --out runs/controlnet-from-canny --geometry-attention-levels 1
    # then a pipeline with it (fresh NeuS), ready for training
    python scripts/assemble_pipeline.py --base runs/sd15 --controlnet runs/controlnet-from-canny --out runs/sd15-mv

Every tensor whose name and shape match is copied exactly (the ControlNet lives under ``encoder.``);
geometry-aware attention is new (zero output); a conditioning embedding made for other inputs (a
canny ControlNet's 3-channel images, 8x downsampled) is re-initialised with a zero output conv. The
report (copied / initialised / skipped) is printed and saved as ``--out``/conversion_report.json.
"""

import argparse
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert_controlnet.py",
        description="Convert a diffusers ControlNetModel checkpoint into a MultiViewControlNetModel (TuneMV3D branch).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--controlnet", required=True, help="folder or Hub id of a diffusers ControlNetModel")
    parser.add_argument("--unet", default=None,
                        help="the UNet the branch will tune (a UNet folder, or a pipeline folder with unet/): checked for "
                             "compatibility; its in_channels are the condition's (default: the ControlNet's in_channels)")
    parser.add_argument("--out", required=True, help="folder for the MultiViewControlNetModel (save_pretrained)")
    parser.add_argument("--geometry-attention-levels", type=int, nargs="+", default=[1],
                        help="down blocks after which geometry-aware attention runs")
    parser.add_argument("--geometry-attention-heads", type=int, default=1, help="heads of each geometry-aware attention")
    parser.add_argument("--geometry-attention-neighbourhood", type=int, default=3,
                        help="side n of the n x n pixel frustum a query attends through (odd)")
    parser.add_argument("--geometry-attention-samples", type=int, default=1, help="NeuS samples kept a ray")
    parser.add_argument("--conditioning-channels", type=int, nargs="+", default=[16],
                        help="channels of a re-initialised conditioning embedding (one stage keeps the resolution)")
    parser.add_argument("--zero-residuals", action="store_true",
                        help="zero the copied residual convs so the branch starts adding exactly zero")
    parser.add_argument("--seed", type=int, default=0, help="seeds the initialised tensors")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from diffusers_mv3d.assembly import convert_controlnet  # after parsing: --help stays fast

    try:
        _, report = convert_controlnet(
            args.controlnet, unet=args.unet, out=args.out,
            geometry_attention_levels=args.geometry_attention_levels,
            geometry_attention_heads=args.geometry_attention_heads,
            geometry_attention_neighbourhood=args.geometry_attention_neighbourhood,
            geometry_attention_samples=args.geometry_attention_samples,
            conditioning_embedding_out_channels=args.conditioning_channels,
            zero_residuals=args.zero_residuals, seed=args.seed,
        )
    except ValueError as error:
        parser.error(str(error))
    print(report.summary())
    print(f"wrote {args.out} (load: MultiViewControlNetModel.from_pretrained({args.out!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
