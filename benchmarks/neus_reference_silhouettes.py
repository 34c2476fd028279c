"""What a TuneMV3D branch's LatentSparseNeuS makes of one clean reference view among noisy ones.

Image-to-multiview starts with view 0 clean (t = 0) and views 1-7 at the first timestep, pure noise
under zero terminal SNR. This script gives the NeuS exactly that input for unseen tuning objects
(view 0 the render, views 1-7 the renders noised to ``--timesteps``) and compares the silhouette of its
render of each view (opacity > 1/2, 16 px) with the render's mask: the geometry the branch is
conditioned on before any view has formed. Area ratios above 1 are a NeuS shape fatter than the object.

    python benchmarks/neus_reference_silhouettes.py pipelines/tunemv3d-tiny --objects 16 --num-threads 1
"""

import argparse
from typing import List

import torch
import torch.nn.functional as F

from diffusers_mv3d.cameras import default_cameras
from diffusers_mv3d.data.splits import tuning_objects
from diffusers_mv3d.evaluation.variants import render_object
from diffusers_mv3d.pipelines import TuneMV3DPipeline


def silhouette_scores(pipe, objects, timestep: int, size: int = 32) -> List[List[float]]:
    """Per view, the mean over ``objects`` of the NeuS silhouette's area ratio and IoU against the masks."""
    cameras = default_cameras(8, size)
    area, iou = torch.zeros(8), torch.zeros(8)
    for index, obj in enumerate(objects):
        rgba = render_object(obj, cameras, alpha=True)
        views = rgba[:, :3] * 2 - 1
        noise = torch.randn(views.shape, generator=torch.Generator().manual_seed(index))
        noisy = pipe.scheduler.add_noise(views, noise, torch.full((8,), timestep))
        noisy[0] = views[0]
        timesteps = torch.full((1, 8), timestep)
        timesteps[0, 0] = 0
        with torch.no_grad():
            opacity = pipe.neus(noisy[None], timesteps, cameras).opacity[0]
        silhouette = opacity > 0.5
        masks = F.interpolate(rgba[:, 3:], size=opacity.shape[-2:], mode="area")[:, 0] > 0.5
        area += silhouette.flatten(1).sum(1) / masks.flatten(1).sum(1).clamp(min=1)
        iou += (silhouette & masks).flatten(1).sum(1) / (silhouette | masks).flatten(1).sum(1).clamp(min=1)
    return [(area / len(objects)).tolist(), (iou / len(objects)).tolist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipelines", nargs="+", help="TuneMV3D pipeline folders")
    parser.add_argument("--objects", type=int, default=16, help="unseen tuning objects (default 16)")
    parser.add_argument("--seen-objects3d", type=int, default=8000,
                        help="skip objects equal to one of the first this many objects3d objects (default 8000)")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[999, 800, 600],
                        help="timesteps of views 1-7 (default 999 800 600)")
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    objects = [obj for _, obj in tuning_objects(args.objects, 0, args.seen_objects3d)]
    print(f"{len(objects)} tuning objects; view 0 clean, views 1-7 noised to t; NeuS silhouette against the mask, "
          "per view 0-7 (area ratio / IoU)\n")
    print("| pipeline | t | area ratio, views 0-7 | IoU, views 0-7 | IoU, views 1-7 |")
    print("|---|---|---|---|---|")
    for folder in args.pipelines:
        pipe = TuneMV3DPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        for timestep in args.timesteps:
            area, iou = silhouette_scores(pipe, objects, timestep)
            print(f"| {folder} | {timestep} | {' '.join(f'{a:.2f}' for a in area)} | "
                  f"{' '.join(f'{v:.2f}' for v in iou)} | {sum(iou[1:]) / 7:.3f} |", flush=True)


if __name__ == "__main__":
    main()
