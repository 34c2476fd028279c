"""Plumbing the trainers share besides the runner (:mod:`.runner`): the reproducible batch stream, sample
grids and the command line.

Every random draw of a run is a function of ``(seed, step)`` (and the process index), so a resumed run
continues exactly where the checkpoint left off: :func:`global_batch_indices` picks a step's objects,
:func:`step_generator` seeds a step's noise, caption dropout, rays.
"""

import math
from contextlib import contextmanager
import sys
from typing import Callable, Iterator, List, Type

import torch

from .config import add_dataclass_arguments, resolve_or_exit

__all__ = [
    "StepBatchSampler",
    "add_trainer_parser",
    "eval_mode",
    "final_step",
    "global_batch_indices",
    "run_trainer",
    "save_grid",
    "script_main",
    "step_generator",
    "step_loader",
]


# ----------------------------------------------------------------------------------------------
# Data: a reproducible stream of batches, a function of (seed, step) only
# ----------------------------------------------------------------------------------------------


def global_batch_indices(step: int, batch_size: int, num_items: int, seed: int) -> List[int]:
    """Dataset indices of step ``step``: slice [step*B, (step+1)*B) of an endless concatenation of
    permutations, one per epoch, each seeded by (seed, epoch)."""
    indices: List[int] = []
    start = step * batch_size
    while len(indices) < batch_size:
        epoch, offset = divmod(start + len(indices), num_items)
        perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        indices.extend(perm[offset : offset + batch_size - len(indices)].tolist())
    return indices


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields this process's share (every ``num_processes``-th index) of the global batch of each step."""

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int, end_step: int,
                 process_index: int = 0, num_processes: int = 1):
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start_step, self.end_step = start_step, end_step
        self.process_index, self.num_processes = process_index, num_processes

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def __iter__(self) -> Iterator[List[int]]:
        for step in range(self.start_step, self.end_step):
            batch = global_batch_indices(step, self.batch_size, self.num_items, self.seed)
            yield batch[self.process_index :: self.num_processes]


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run a block with ``module.eval()`` (validation), then put back the train/eval mode it had."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def step_generator(seed: int, step: int, process_index: int) -> torch.Generator:
    """The generator of one step's caption dropout, timesteps and noise on one process."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + process_index)


def final_step(cfg) -> int:
    """The step a run stops at: ``max_train_steps``, or ``stop_at_step`` when that is set and earlier."""
    return cfg.max_train_steps if cfg.stop_at_step == 0 else min(cfg.stop_at_step, cfg.max_train_steps)


def step_loader(dataset, cfg, start_step: int, stop_step: int, rank: int, world: int,
                collate_fn: Callable) -> torch.utils.data.DataLoader:
    """A DataLoader of steps ``start_step .. stop_step - 1``, this process's share of each global batch."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=StepBatchSampler(len(dataset), cfg.batch_size, cfg.seed, start_step, stop_step, rank, world),
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
    )


# ----------------------------------------------------------------------------------------------
# Validation grids
# ----------------------------------------------------------------------------------------------


def save_grid(images: torch.Tensor, path: str, ncol: int, upscale: int = 4) -> None:
    """Write images [N, 3, H, W] in [-1, 1] as one PNG, ``ncol`` per row, nearest-upscaled."""
    from PIL import Image

    n, _, h, w = images.shape
    nrow = math.ceil(n / ncol)
    grid = torch.ones(3, nrow * h, ncol * w)
    for i, image in enumerate(images.float().cpu()):
        r, c = divmod(i, ncol)
        grid[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = (image + 1) / 2
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(array).resize((ncol * w * upscale, nrow * h * upscale), Image.NEAREST).save(path)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def add_trainer_parser(subparsers, command: str, help: str, description: str, config_class: Type,
                       main: Callable) -> None:
    """Register a trainer's sub-command: its flags are ``config_class``'s fields (with ``--config``,
    ``--dry-run``); it runs ``main(settings)`` (:func:`run_trainer`)."""
    import argparse

    parser = subparsers.add_parser(
        command,
        help=help,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataclass_arguments(parser, config_class)
    parser.set_defaults(func=lambda args: run_trainer(command, config_class, main, args))


def run_trainer(command: str, config_class: Type, main: Callable, args) -> int:
    """Resolve the settings, train, print the summary; a user error (a ValueError naming its flag) exits 2.

    Every process prints its own summary line (DDP ranks each print theirs), in one write so that the
    ranks' lines do not interleave.
    """
    import json

    try:
        cfg = resolve_or_exit(config_class, args)
        if cfg is None:
            return 0
        summary = main(cfg)
    except ValueError as error:
        if not str(error).startswith("--"):  # not a user error naming its flag: keep the traceback
            raise
        print(f"diffusers-mv3d {command}: error: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()
    return 0


def script_main(command: str) -> int:
    """``python -m diffusers_mv3d.training.<trainer> FLAGS``: ``diffusers-mv3d <command> FLAGS``."""
    from ..cli import main

    return main([command, *sys.argv[1:]])
