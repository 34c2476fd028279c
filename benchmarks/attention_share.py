"""How much the geometry-aware attention adds to the branch's features while a pipeline samples.

Hooks every ``GeometryAwareAttention`` layer of the branch and records, at each call, the norm of what
it adds (its output minus its input) over the norm of its input features. Near 0 the pairwise
condition (§3.1.2) barely moves the branch, which is what an ablation without it would then show.

    python benchmarks/attention_share.py --model pipelines/tunemv3d-tiny --steps 30 --seeds 0 1
"""

import argparse
from typing import Dict, List

import torch

from diffusers_mv3d import TuneMV3DPipeline

PROMPTS = ("a yellow bench with a slatted seat", "a purple lamp on a round base")
"""Captions outside the evaluation's prompt set (benchmarks/prompts.py)."""


def attention_shares(pipe, prompt: str, steps: int, seed: int) -> Dict[str, List[float]]:
    """``{level: [||out - in|| / ||in|| at each call]}`` of one sampling run."""
    shares: Dict[str, List[float]] = {}
    handles = []
    for level, layer in pipe.controlnet.geometry_attention.items():
        def record(module, args, out, level=level):
            shares.setdefault(level, []).append(((out - args[0]).norm() / args[0].norm()).item())
        handles.append(layer.register_forward_hook(record))
    try:
        pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="np")
    finally:
        for handle in handles:
            handle.remove()
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pipelines/tunemv3d-tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--num-threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)
    pipe = TuneMV3DPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    print("| prompt | seed | level | added / features: first call | mean | last call |\n|---|---|---|---|---|---|")
    for prompt in PROMPTS:
        for seed in args.seeds:
            for level, values in attention_shares(pipe, prompt, args.steps, seed).items():
                print(f"| {prompt} | {seed} | {level} | {values[0]:.3f} | {sum(values) / len(values):.3f} | {values[-1]:.3f} |")


if __name__ == "__main__":
    main()
