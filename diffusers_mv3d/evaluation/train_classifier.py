"""Train the fidelity attribute classifier (DESIGN.md §6) on the 2D foundation renders.

The data is an imagefolder (``metadata.jsonl`` with ``file_name``, ``text``, ``category``,
``colour``; :class:`~diffusers_mv3d.data.dataset.ImageTextDataset`), e.g. the output of
``diffusers-mv3d render --split foundation2d``. A seeded ``val_fraction`` of it is held out; the
held-out accuracy is printed and written to ``OUT/metrics.json`` beside the classifier
(``save_pretrained``: ``config.json`` + safetensors) and the resolved settings (``train_config.yaml``).

    python -m diffusers_mv3d.evaluation.train_classifier --data data/foundation2d --out runs/classifier
    python -m diffusers_mv3d.evaluation.train_classifier --data data/foundation2d --out runs/classifier \\
        --steps 3000 --batch-size 128 --dry-run      # print the resolved settings and exit

Labels outside the vocabularies (``data.world.CATEGORIES``, ``data.palette.PALETTE``) or missing
are ignored for that head (``ignore_index=-100``), with a warning giving their count.
"""

import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..io_utils import atomic_write_text
from ..training.config import add_dataclass_arguments, resolve_or_exit, save_config
from .classifier import AttributeClassifier, _label_indices, accuracy_from_logits, classify, fidelity

__all__ = ["ClassifierTrainConfig", "train_attribute_classifier", "evaluate_on_folder", "load_labelled_images", "main"]


@dataclass
class ClassifierTrainConfig:
    """Settings of one classifier training run."""

    data: str = ""
    """Imagefolder of 2D renders: metadata.jsonl with file_name, text, category, colour."""
    out: str = ""
    """Output folder: the classifier (save_pretrained), metrics.json, train_config.yaml."""
    steps: int = 2000
    """Optimiser steps (1,500 of batch 64 on 8,000 foundation2d renders: held-out category 0.92, colour 0.98)."""
    batch_size: int = 64
    """Images a step."""
    learning_rate: float = 2e-3
    """Peak AdamW learning rate (linear warm-up over warmup_steps, then cosine decay to 0)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up steps."""
    val_fraction: float = 0.1
    """Fraction of the images held out (seeded split) for the accuracy evaluation."""
    resolution: int = 32
    """Square side the images are loaded at and the classifier runs at (its sample_size)."""
    block_out_channels: Tuple[int, ...] = (16, 32, 64)
    """CNN channels per level; each level after the first halves the resolution."""
    norm_num_groups: int = 8
    """GroupNorm groups (must divide every block_out_channels entry)."""
    dropout: float = 0.1
    """Dropout before the heads."""
    augment: bool = True
    """Random horizontal flips and shifts of up to max_shift pixels (white fill); never colour changes."""
    max_shift: int = 2
    """Largest random shift in pixels when augmenting."""
    max_images: Optional[int] = None
    """Use only the first N images of the folder (None: all)."""
    seed: int = 0
    """Seed of the split, the initialisation, the batches and the augmentation."""
    log_every: int = 100
    """Print the running loss and accuracy every N steps."""

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("--data is required: an imagefolder with metadata.jsonl")
        if not self.out:
            raise ValueError("--out is required: the folder to write the classifier to")
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must lie in [0, 1), got {self.val_fraction}")
        if self.max_images is not None and self.max_images < 2:
            raise ValueError(f"--max-images must be >= 2 or none, got {self.max_images}")


# ---------------------------------------------------------------------------------- data
def load_labelled_images(
    data_dir: str, resolution: Optional[int] = None, max_images: Optional[int] = None
) -> Tuple[torch.Tensor, List[str], List[str]]:
    """All images of an imagefolder as ``uint8 [N, 3, H, W]`` (0..255 of ``(x + 1) / 2``), with their
    category and colour names (``""`` where missing)."""
    from ..data.dataset import ImageTextDataset

    dataset = ImageTextDataset(data_dir, resolution=resolution)
    count = len(dataset) if max_images is None else min(len(dataset), max_images)
    images, categories, colours = [], [], []
    for i in range(count):
        item = dataset[i]
        images.append(((item["pixel_values"] + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8))
        categories.append(item["category"] or "")
        colours.append(item["colour"] or "")
    return torch.stack(images), categories, colours


def _to_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8 [N, 3, H, W]`` -> float in ``[-1, 1]``."""
    return images.float() / 127.5 - 1.0


def _known_labels(names: Sequence[str], vocabulary: Sequence[str], attribute: str) -> torch.Tensor:
    """Label indices, with names outside ``vocabulary`` ignored (-100) and counted in a warning."""
    known = set(vocabulary)
    unknown = [n for n in names if n and n not in known]
    if unknown:
        warnings.warn(f"{len(unknown)} images have a {attribute} outside the vocabulary (e.g. {unknown[0]!r}): ignored")
    return _label_indices([n if n in known else None for n in names], vocabulary, attribute)


def augment(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and integer-ish shift of up to ``max_shift`` pixels, white fill.

    ``images [B, 3, H, W]`` in ``[-1, 1]``. One affine resampling: ``x' = A x`` with
    ``A = [[f, 0, tx], [0, 1, ty]]``, ``f = +-1``, ``t`` in normalised units; sampling ``images - 1``
    with zero padding and adding 1 back fills with white.
    """
    b, _, h, w = images.shape
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    shift = (torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator).float()) * 2.0 / torch.tensor([w, h])
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = flip, 1.0, shift
    grid = F.affine_grid(theta, (b, 3, h, w), align_corners=False)
    return F.grid_sample(images - 1.0, grid, mode="nearest", padding_mode="zeros", align_corners=False) + 1.0


def _split(num_images: int, val_fraction: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Seeded permutation split: ``(train_indices, val_indices)``."""
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    num_val = 0 if val_fraction == 0 else max(1, round(val_fraction * num_images))
    num_val = min(num_val, num_images - 1)
    return order[num_val:], order[:num_val]


def _learning_rate(cfg: ClassifierTrainConfig, step: int) -> float:
    warmup = min(cfg.warmup_steps, cfg.steps // 2)
    if step < warmup:
        return cfg.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------- training
def main(cfg: ClassifierTrainConfig) -> Dict[str, object]:
    """Train, evaluate on the held-out split, save; returns the metrics written to ``metrics.json``."""
    start = time.time()
    torch.manual_seed(cfg.seed)
    # 1. Data, labels and the split.
    images, category_names, colour_names = load_labelled_images(cfg.data, cfg.resolution, cfg.max_images)
    classifier = AttributeClassifier(
        sample_size=cfg.resolution,
        block_out_channels=tuple(cfg.block_out_channels),
        norm_num_groups=cfg.norm_num_groups,
        dropout=cfg.dropout,
    )
    category_labels = _known_labels(category_names, classifier.config.categories, "category")
    colour_labels = _known_labels(colour_names, classifier.config.colours, "colour")
    train_idx, val_idx = _split(len(images), cfg.val_fraction, cfg.seed)
    print(f"{len(images)} images: {len(train_idx)} train, {len(val_idx)} held out; "
          f"{classifier.num_parameters()} parameters", flush=True)

    # 2. Optimise both heads' cross-entropy on random batches.
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    classifier.train()
    running = {"loss": 0.0, "category": 0.0, "colour": 0.0, "n": 0}
    for step in range(cfg.steps):
        batch = train_idx[torch.randint(0, len(train_idx), (cfg.batch_size,), generator=generator)]
        x = _to_float(images[batch])
        if cfg.augment:
            x = augment(x, cfg.max_shift, generator)
        out = classifier(x)
        y_category, y_colour = category_labels[batch], colour_labels[batch]
        loss = _cross_entropy(out.category_logits, y_category) + _cross_entropy(out.colour_logits, y_colour)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(cfg, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running["loss"] += loss.item()
        running["category"] += _nan_to_zero(accuracy_from_logits(out.category_logits.detach(), y_category)[0])
        running["colour"] += _nan_to_zero(accuracy_from_logits(out.colour_logits.detach(), y_colour)[0])
        running["n"] += 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            n = running["n"]
            print(f"step {step + 1}/{cfg.steps} loss {running['loss'] / n:.4f} "
                  f"category {running['category'] / n:.3f} colour {running['colour'] / n:.3f}", flush=True)
            running = {"loss": 0.0, "category": 0.0, "colour": 0.0, "n": 0}

    # 3. Held-out accuracy, then save.
    metrics: Dict[str, object] = {"steps": cfg.steps, "num_train": len(train_idx), "num_val": len(val_idx)}
    if len(val_idx):
        category_logits, colour_logits = classify(classifier, _to_float(images[val_idx]))
        metrics["val_category_accuracy"], metrics["val_num_category"] = accuracy_from_logits(category_logits, category_labels[val_idx])
        metrics["val_colour_accuracy"], metrics["val_num_colour"] = accuracy_from_logits(colour_logits, colour_labels[val_idx])
        print(f"held out: category {metrics['val_category_accuracy']:.3f} colour {metrics['val_colour_accuracy']:.3f} "
              f"({len(val_idx)} images)", flush=True)
    metrics["seconds"] = round(time.time() - start, 1)
    os.makedirs(cfg.out, exist_ok=True)
    classifier.save_pretrained(cfg.out, safe_serialization=True)
    save_config(cfg, os.path.join(cfg.out, "train_config.yaml"))
    atomic_write_text(os.path.join(cfg.out, "metrics.json"), json.dumps(metrics, indent=2))
    return metrics


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over labelled items (-100 ignored); 0 when the batch has none."""
    if not bool((labels >= 0).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=-100)


def _nan_to_zero(value: float) -> float:
    return 0.0 if value != value else value


def train_attribute_classifier(data_dir: str, out_dir: str, steps: int = 2000, **settings: object) -> Dict[str, object]:
    """Train an :class:`AttributeClassifier` on the imagefolder ``data_dir`` and save it to ``out_dir``.

    ``settings`` are the other fields of :class:`ClassifierTrainConfig` (batch_size, learning_rate,
    val_fraction, resolution, block_out_channels, seed, ...). Returns the held-out metrics
    (``val_category_accuracy``, ``val_colour_accuracy``, ...), also written to ``out_dir/metrics.json``.
    Load the result with ``AttributeClassifier.from_pretrained(out_dir)``.
    """
    return main(ClassifierTrainConfig(data=data_dir, out=out_dir, steps=steps, **settings))


def evaluate_on_folder(
    classifier: AttributeClassifier, data_dir: str, max_images: Optional[int] = None, batch_size: int = 256
) -> Dict[str, object]:
    """:func:`~.classifier.fidelity` of ``classifier`` on the labelled images of an imagefolder
    (e.g. held-out real renders: the ceiling to print beside generated views' figures)."""
    images, categories, colours = load_labelled_images(data_dir, classifier.config.sample_size, max_images)
    attributes = [{"category": c or None, "colour": k or None} for c, k in zip(categories, colours)]
    return fidelity(_to_float(images), attributes, classifier, batch_size=batch_size)


# ---------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of :class:`ClassifierTrainConfig` (plus ``--config`` and ``--dry-run``)."""
    return add_dataclass_arguments(parser, ClassifierTrainConfig)


def _run(args: argparse.Namespace) -> int:
    try:
        cfg = resolve_or_exit(ClassifierTrainConfig, args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if cfg is None:  # --dry-run
        return 0
    main(cfg)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train-classifier`` on a sub-command parser (for ``diffusers_mv3d.cli``)."""
    parser = subparsers.add_parser("train-classifier", help="train the fidelity attribute classifier on 2D renders")
    add_arguments(parser)
    parser.set_defaults(func=_run)
    return parser


def cli(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m diffusers_mv3d.evaluation.train_classifier",
        description="Train the (category, colour) attribute classifier used by the fidelity metric.",
    )
    add_arguments(parser)
    return _run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
