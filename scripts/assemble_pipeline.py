"""Assemble a TuneMV3DPipeline folder from a diffusers text-to-image pipeline and a TuneMV3D branch.

The logic is :func:`diffusers_mv3d.assembly.assemble_pipeline`; this is its command line.

    # Stable Diffusion 2.1 (a Hub id or a local folder) with a fresh, untrained branch
    python scripts/assemble_pipeline.py --base stabilityai/stable-diffusion-2-1-base --out runs/sd21-tunemv3d
    # our foundation + a trained branch + the reconstructor: the embedded default pipeline
    python scripts/assemble_pipeline.py --base runs/foundation-tiny/pipeline \\
        --branch runs/tunemv3d-tiny/model --reconstructor runs/reconstructor-tiny/model \\
        --captioner runs/captioner --eta 1.0 --out pipelines/tunemv3d-tiny --overwrite \\
        --trained-on "2 CPU cores (AMD EPYC), no GPU"
    # ... and upload the folder to the Hub
    python scripts/assemble_pipeline.py --base ... --branch ... --out DIR --push-to-hub you/tunemv3d-sd21

Load the result with ``TuneMV3DPipeline.from_pretrained(DIR)``.
"""

import argparse
import shlex
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assemble_pipeline.py",
        description="Assemble a TuneMV3DPipeline folder (save_pretrained, safetensors, README.md model card) from "
                    "a frozen diffusers text-to-image pipeline and a trained or fresh TuneMV3D branch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--base", required=True,
                        help="folder or Hub id of a diffusers Stable Diffusion 1.x/2.x or DeepFloyd-IF stage I pipeline, "
                             "or a train-foundation folder (unet/ text_encoder/ tokenizer/ scheduler/, no vae/)")
    parser.add_argument("--branch", default=None,
                        help="trained branch folder or Hub id with controlnet/ and neus/ (and optionally reconstructor/): "
                             "diffusers-mv3d train's OUTPUT_DIR/model; omitted: a fresh branch from the base UNet "
                             "(adds exactly zero)")
    parser.add_argument("--controlnet", default=None,
                        help="a MultiViewControlNetModel folder (e.g. from convert_controlnet.py) used instead of the "
                             "branch's controlnet/")
    parser.add_argument("--reconstructor", default=None,
                        help="reconstructor folder (a LatentSparseNeuS, or train-reconstructor's OUTPUT_DIR/model); "
                             "replaces the branch's reconstructor/")
    parser.add_argument("--captioner", default=None,
                        help="a RetrievalCaptioner folder (diffusers-mv3d build-captioner --out): captions reference images "
                             "given without a prompt (generate --image)")
    parser.add_argument("--out", default=None, help="the pipeline folder to write (required unless --push-to-hub)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    parser.add_argument("--consistency-ratio", type=float, default=0.5,
                        help="K: fraction of the sampling steps that use consistency guidance (saved in the scheduler)")
    parser.add_argument("--consistency-scale", type=float, default=7.5,
                        help="alpha of eq. 4 (saved in the scheduler)")
    parser.add_argument("--eta", type=float, default=0.0,
                        help="DDIM's eta the pipeline samples with by default: 0 deterministic, 1 as stochastic as DDPM "
                             "(saved in the scheduler)")
    parser.add_argument("--guidance-scale", type=float, default=3.0,
                        help="classifier-free guidance scale the pipeline uses when a call gives none, 1 = none "
                             "(saved in the scheduler)")
    parser.add_argument("--neus-render-resolution", type=int, default=None,
                        help="side of the NeuS render that conditions the branch, 0 = the diffusion-space resolution; "
                             "default: the branch's (16 for a fresh branch)")
    parser.add_argument("--reconstructor-mesh-level", type=float, default=None,
                        help="the SDF level the reconstructor's meshes take as the surface (saved in its config as "
                             "mesh_level); default: the reconstructor's own (0 unless saved otherwise)")
    parser.add_argument("--seed", type=int, default=0, help="seeds a fresh branch (as diffusers-mv3d train --seed)")
    parser.add_argument("--variant", default=None, help='weights variant of the base to load, e.g. "fp16"')
    parser.add_argument("--push-to-hub", "--push_to_hub", dest="push_to_hub", default=None, metavar="REPO",
                        help="also upload the folder to this Hub repository (owner/name)")
    parser.add_argument("--private", action="store_true", help="create the --push-to-hub repository private")
    parser.add_argument("--trained-on", default="", metavar="TEXT",
                        help="the machine the trainer folders were trained on, for the model card's training section")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None and args.push_to_hub is None:
        parser.error("--out (or --push-to-hub) is required")
    from diffusers_mv3d.assembly import assemble_pipeline  # after parsing: --help stays fast

    command = shlex.join(["python", "scripts/assemble_pipeline.py"] + list(sys.argv[1:] if argv is None else argv))
    try:
        pipe = assemble_pipeline(
            args.base, branch=args.branch, reconstructor=args.reconstructor, out=args.out, controlnet=args.controlnet,
            consistency_ratio=args.consistency_ratio, consistency_scale=args.consistency_scale, eta=args.eta,
            guidance_scale=args.guidance_scale,
            neus_render_resolution=args.neus_render_resolution, reconstructor_mesh_level=args.reconstructor_mesh_level,
            seed=args.seed, variant=args.variant,
            push_to_hub=args.push_to_hub, private=args.private, overwrite=args.overwrite, command=command,
            trained_on=args.trained_on, captioner=args.captioner,
        )
    except ValueError as error:
        parser.error(str(error))
    space = "latent" if pipe.vae is not None else "pixel"
    print(f"assembled a TuneMV3DPipeline on {args.base} ({space} space, {pipe.image_size}x{pipe.image_size} views; "
          f"branch: {args.branch or args.controlnet or 'fresh'}; reconstructor: "
          f"{'yes' if pipe.reconstructor is not None else 'no'}; captioner: {'yes' if pipe.captioner is not None else 'no'})")
    if args.out:
        print(f"wrote {args.out} (load: TuneMV3DPipeline.from_pretrained({args.out!r}))")
    if args.push_to_hub:
        print(f"pushed to https://huggingface.co/{args.push_to_hub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
