"""Where the time of ``diffusers-mv3d generate`` goes: imports, loading, sampling, mesh, turntable.

Runs the same calls as ``generate`` (the embedded default unless ``--model``) stage by stage and prints
each stage's wall time and process CPU time (CPU seconds stay meaningful on a busy machine, where wall
time does not).

    python benchmarks/bench_generate.py --threads 2 --steps 30
"""

import argparse
import os
import time

_clock = [time.perf_counter(), time.process_time()]
_rows = []


def mark(stage: str) -> None:
    """Record the wall and CPU seconds since the previous mark."""
    wall, cpu = time.perf_counter(), time.process_time()
    _rows.append((stage, wall - _clock[0], cpu - _clock[1]))
    _clock[:] = [wall, cpu]


import torch  # noqa: E402  (imports are a stage of their own)

from diffusers_mv3d.generate import load_pipeline  # noqa: E402
from diffusers_mv3d.mesh import export_mesh, save_turntable_gif, turntable_frames  # noqa: E402

mark("imports")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="pipeline folder (default: the embedded one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default="/tmp/bench_generate", help="folder for mesh.glb and turntable.gif")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    mark("loading")
    result = pipe("a red chair with armrests", num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0),
                  output_type="pt")
    mark("sampling")
    latents = pipe.encode_views(result.images * 2 - 1)[None]
    mesh = pipe._reconstruct_meshes(latents, result.cameras, 64)
    mark("mesh")
    os.makedirs(args.out, exist_ok=True)
    export_mesh(mesh, os.path.join(args.out, "mesh.glb"))
    mark("mesh.glb")
    frames = turntable_frames(mesh, num_frames=24, resolution=128)
    mark("turntable")
    save_turntable_gif(frames, os.path.join(args.out, "turntable.gif"))
    mark("gif")
    print(f"`python benchmarks/bench_generate.py --threads {args.threads} --steps {args.steps}`\n")
    print("| stage | wall s | CPU s |\n|---|---|---|")
    for stage, wall, cpu in _rows:
        print(f"| {stage} | {wall:.2f} | {cpu:.2f} |")
    print(f"| total | {sum(r[1] for r in _rows):.2f} | {sum(r[2] for r in _rows):.2f} |")


if __name__ == "__main__":
    main()
