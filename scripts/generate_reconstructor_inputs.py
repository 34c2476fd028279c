"""Image-to-multiview views of training objects: inputs for ``train-reconstructor --generated-views-dir``.

The reconstructor meshes what the pipeline generates, and generated views disagree with the object (and
with each other) where renders do not. This writes, for each of the first ``--objects`` object folders
of ``--data`` (sorted by name), the pipeline's image-to-multiview views of the object's fixed input
views: view 0 is the object's render (clamped, as ``generate --image`` clamps it) and the other views
are sampled, with the object's caption (``--no-caption``: the image alone). The result,
``OUT/<object id>/000.png ...`` (RGB), pairs generated inputs with the object's renders, which stay the
reconstructor's targets.

    python scripts/generate_reconstructor_inputs.py --pipeline pipelines/tunemv3d-tiny \\
        --data data/objects3d --objects 150 --out data/objects3d-generated --num-threads 1

Each object folder is written whole or not at all (a temporary name, then a rename); a folder already
there is skipped, so an interrupted run continues where it stopped. Object ``i`` is sampled with seed
``--seed + i``.
"""

import argparse
import os
import sys
import time

import torch
from tqdm.auto import tqdm


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="generate_reconstructor_inputs.py",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="a TuneMV3D pipeline folder")
    parser.add_argument("--data", required=True, help="object folders written by `diffusers-mv3d render`")
    parser.add_argument("--out", required=True, help="where OUT/<object id>/NNN.png go")
    parser.add_argument("--objects", type=int, default=100, help="the first this many objects (sorted by name)")
    parser.add_argument("--steps", type=int, default=30, help="sampling steps")
    parser.add_argument("--caption", action=argparse.BooleanOptionalAction, default=True,
                        help="give the object's caption with its view 0")
    parser.add_argument("--seed", type=int, default=0, help="object i is sampled with seed SEED + i")
    parser.add_argument("--num-threads", type=int, default=0, help="torch threads (0: torch's default)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.objects < 1:
        raise SystemExit(f"--objects must be >= 1, got {args.objects}")
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    from diffusers_mv3d import TuneMV3DPipeline
    from diffusers_mv3d.data.dataset import MultiViewDataset
    from diffusers_mv3d.data.format import view_name
    from diffusers_mv3d.io_utils import atomic_write_folder

    pipe = TuneMV3DPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    dataset = MultiViewDataset(args.data, resolution=pipe.image_size, num_supervision_views=0)
    count = min(args.objects, len(dataset))
    start, written = time.perf_counter(), 0
    for index in tqdm(range(count), desc="generate inputs"):
        item = dataset[index]
        folder = os.path.join(args.out, item["object_id"])
        if os.path.isdir(folder):
            continue
        views = pipe(prompt=item["caption"] if args.caption else None, image=(item["images"][0] + 1) / 2,
                     num_views=len(item["images"]), cameras=item["cameras"], num_inference_steps=args.steps,
                     generator=torch.Generator().manual_seed(args.seed + index)).images

        def write(tmp, views=views):
            for v, image in enumerate(views):
                image.save(tmp / f"{view_name(v)}.png")

        atomic_write_folder(folder, write)
        written += 1
    print(f"wrote {written} object folders to {args.out} ({count - written} were there) in "
          f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
