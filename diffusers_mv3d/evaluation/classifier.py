"""Fidelity (DESIGN.md §6): an attribute classifier (category, colour) applied to generated views.

:class:`AttributeClassifier` is a small CNN with two heads, trained on the 2D foundation renders
(:func:`~diffusers_mv3d.evaluation.train_classifier.train_attribute_classifier`). :func:`fidelity`
classifies generated views and scores them against the attributes their prompt asked for:
``accuracy = #{i : argmax logits_i = label_i} / #{i labelled}``, per attribute. Comparing the score
on in-split and out-of-split (category, colour) pairs measures how much of the foundation model's
creativity the method keeps; always report the classifier's accuracy on real renders beside it
(its ceiling).

The label vocabularies live in the classifier's config (``categories``, ``colours``; by default
:data:`~diffusers_mv3d.data.world.CATEGORIES` and the names of
:data:`~diffusers_mv3d.data.palette.PALETTE`), so a saved classifier keeps its own label order.
"""

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

__all__ = ["AttributeClassifier", "AttributeClassifierOutput", "accuracy_from_logits", "caption_images", "fidelity"]


def _default_categories() -> List[str]:
    from ..data.world import CATEGORIES

    return list(CATEGORIES)


def _default_colours() -> List[str]:
    from ..data.palette import PALETTE

    return list(PALETTE)


@dataclass
class AttributeClassifierOutput(BaseOutput):
    """Outputs of :class:`AttributeClassifier`.

    Args:
        category_logits: ``[B, len(config.categories)]`` unnormalised scores.
        colour_logits: ``[B, len(config.colours)]`` unnormalised scores.
    """

    category_logits: torch.Tensor
    colour_logits: torch.Tensor


class ResidualBlock(nn.Module):
    """``x + conv(silu(norm(conv(silu(norm(x))))))`` at constant width."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class AttributeClassifier(ModelMixin, ConfigMixin):
    """A small CNN attribute classifier: images ``[B, 3, H, W]`` in ``[-1, 1]`` -> category and colour logits.

    Images of another size are resized (bilinear, anti-aliased) to ``sample_size`` first, so 64-px or
    larger generated views go through the same network as the 32-px training renders. Layout:
    a 3x3 conv to ``block_out_channels[0]``, then per level one :class:`ResidualBlock` followed by a
    stride-2 3x3 conv to the next width (none after the last), GroupNorm + SiLU, global average
    pooling, dropout, and two linear heads. The default (16, 32, 64) has 0.12M parameters (0.5 MB
    as safetensors) and costs ~0.23 s a training step of batch 64 at 32 px on one CPU core.

    Args:
        categories: category names, in logit order (default: ``data.world.CATEGORIES``).
        colours: colour names, in logit order (default: the names of ``data.palette.PALETTE``).
        sample_size: the square input side the network runs at.
        block_out_channels: channels of each level; each level after the first halves the resolution.
        norm_num_groups: GroupNorm groups; must divide every entry of ``block_out_channels``.
        dropout: dropout probability before the heads (training only).
    """

    @register_to_config
    def __init__(
        self,
        categories: Optional[Sequence[str]] = None,
        colours: Optional[Sequence[str]] = None,
        sample_size: int = 32,
        block_out_channels: Tuple[int, ...] = (16, 32, 64),
        norm_num_groups: int = 8,
        dropout: float = 0.1,
    ):
        super().__init__()
        categories = list(categories) if categories is not None else _default_categories()
        colours = list(colours) if colours is not None else _default_colours()
        if len(categories) < 1 or len(set(categories)) != len(categories):
            raise ValueError(f"categories must be distinct names, at least one, got {categories}")
        if len(colours) < 1 or len(set(colours)) != len(colours):
            raise ValueError(f"colours must be distinct names, at least one, got {colours}")
        if sample_size < 2 ** (len(block_out_channels) - 1):
            raise ValueError(
                f"sample_size={sample_size} is too small for {len(block_out_channels)} levels "
                f"(block_out_channels={tuple(block_out_channels)})"
            )
        for channels in block_out_channels:
            if channels % norm_num_groups:
                raise ValueError(f"norm_num_groups={norm_num_groups} must divide block_out_channels={tuple(block_out_channels)}")
        # store the resolved vocabularies, so that a saved classifier keeps its label order
        self.register_to_config(categories=categories, colours=colours)

        self.conv_in = nn.Conv2d(3, block_out_channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for level, channels in enumerate(block_out_channels):
            self.blocks.append(ResidualBlock(channels, norm_num_groups))
            if level + 1 < len(block_out_channels):
                self.downsamplers.append(nn.Conv2d(channels, block_out_channels[level + 1], 3, stride=2, padding=1))
        self.norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[-1])
        self.head_dropout = nn.Dropout(dropout)
        self.category_head = nn.Linear(block_out_channels[-1], len(categories))
        self.colour_head = nn.Linear(block_out_channels[-1], len(colours))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in ``[-1, 1]`` -> ``[B, 3, s, s]`` (``s = sample_size``) in the model's dtype."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] in [-1, 1], got {tuple(images.shape)}")
        size = self.config.sample_size
        images = images.to(self.conv_in.weight)
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return images

    def forward(self, images: torch.Tensor, return_dict: bool = True) -> Union[AttributeClassifierOutput, Tuple]:
        """Classify ``images [B, 3, H, W]`` in ``[-1, 1]`` (white background, as the renders)."""
        h = self.conv_in(self.preprocess(images))  # [B, C0, s, s]
        for level, block in enumerate(self.blocks):
            h = block(h)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h)  # [B, C_{l+1}, s / 2^(l+1), s / 2^(l+1)]
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))  # [B, C_last]
        h = self.head_dropout(h)
        out = (self.category_head(h), self.colour_head(h))
        return AttributeClassifierOutput(*out) if return_dict else out

    def label_indices(self, names: Sequence[Optional[str]], attribute: str) -> torch.Tensor:
        """Indices ``[N]`` of ``names`` in the ``attribute`` vocabulary (``"category"`` or ``"colour"``);
        ``None`` or ``""`` gives -100 (unlabelled, ignored by the losses and accuracies)."""
        vocabulary = self.config.categories if attribute == "category" else self.config.colours
        return _label_indices(names, vocabulary, attribute)


def _label_indices(names: Sequence[Optional[str]], vocabulary: Sequence[str], attribute: str) -> torch.Tensor:
    index = {name: i for i, name in enumerate(vocabulary)}
    out = []
    for name in names:
        if name is None or name == "":
            out.append(-100)
        elif name in index:
            out.append(index[name])
        else:
            raise ValueError(f"{attribute} {name!r} is not in the classifier's vocabulary {list(vocabulary)}")
    return torch.tensor(out, dtype=torch.long)


def accuracy_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> Tuple[float, int]:
    """Accuracy ``#{argmax logits_i = labels_i} / #{labels_i >= 0}`` and that count (nan, 0 when none is labelled).

    ``logits [N, K]``, ``labels [N]`` with -100 (any negative) for unlabelled items.
    """
    labelled = labels >= 0
    count = int(labelled.sum())
    if count == 0:
        return float("nan"), 0
    correct = logits.argmax(dim=-1)[labelled] == labels[labelled]
    return float(correct.float().mean()), count


@torch.no_grad()
def classify(classifier: nn.Module, images: torch.Tensor, batch_size: int = 256) -> Tuple[torch.Tensor, torch.Tensor]:
    """Category and colour logits ``[N, K]`` of ``images [N, 3, H, W]`` in ``[-1, 1]``, in eval mode, batched."""
    was_training = classifier.training
    classifier.eval()
    parameter = next(classifier.parameters(), None)
    device = parameter.device if parameter is not None else images.device
    category, colour = [], []
    try:
        for start in range(0, images.shape[0], batch_size):
            out = classifier(images[start : start + batch_size].to(device), return_dict=True)
            category.append(out.category_logits.float().cpu())
            colour.append(out.colour_logits.float().cpu())
    finally:
        classifier.train(was_training)
    return torch.cat(category), torch.cat(colour)


def caption_images(classifier: "AttributeClassifier", images: torch.Tensor) -> List[str]:
    """Captions ``"a <colour> <category>"`` ("an" before a vowel, as the world's captions are written) of
    ``images [N, 3, H, W]`` in ``[-1, 1]`` (white background),
    from the classifier's most likely labels: what image-to-multiview is given when the user gives
    no caption (the foundation then follows the reference's object, docs/results.md)."""
    from ..data.world import with_articles

    category, colour = classify(classifier, images)
    return [with_articles(f"a {classifier.config.colours[c]} {classifier.config.categories[k]}")
            for k, c in zip(category.argmax(-1).tolist(), colour.argmax(-1).tolist())]


def fidelity(
    images: torch.Tensor,
    prompts_attributes: Sequence[Mapping[str, Optional[str]]],
    classifier: AttributeClassifier,
    batch_size: int = 256,
) -> Dict[str, object]:
    """Category and colour accuracy of generated views against the attributes their prompts asked for.

    Args:
        images: ``[N, 3, H, W]`` views in ``[-1, 1]``, or ``[B, V, 3, H, W]`` (B objects of V views).
        prompts_attributes: one mapping per image (``N``), or per object (``B``, shared by its ``V``
            views), with keys ``"category"`` and ``"colour"``; a missing or None value leaves that
            attribute of that image unscored. Names must be in the classifier's vocabulary.
        classifier: an :class:`AttributeClassifier` (anything with its ``config.categories`` /
            ``config.colours`` and output fields works).
        batch_size: images a forward pass.

    Returns:
        ``category_accuracy`` and ``colour_accuracy`` (``#correct / #scored``, nan when none is
        scored), ``num_category`` and ``num_colour`` (scored images), and the per-image predicted
        names ``category_predictions`` / ``colour_predictions`` (to group results by split).
    """
    if images.dim() == 5:
        b, v = images.shape[:2]
        if len(prompts_attributes) == b:
            prompts_attributes = [attrs for attrs in prompts_attributes for _ in range(v)]
        images = images.flatten(0, 1)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W] or [B, V, 3, H, W], got {tuple(images.shape)}")
    if len(prompts_attributes) != images.shape[0]:
        raise ValueError(
            f"prompts_attributes has {len(prompts_attributes)} entries for {images.shape[0]} images "
            "(give one per image, or one per object with [B, V, 3, H, W] images)"
        )
    categories, colours = list(classifier.config.categories), list(classifier.config.colours)
    category_labels = _label_indices([a.get("category") for a in prompts_attributes], categories, "category")
    colour_labels = _label_indices([a.get("colour") for a in prompts_attributes], colours, "colour")
    category_logits, colour_logits = classify(classifier, images, batch_size)
    category_accuracy, num_category = accuracy_from_logits(category_logits, category_labels)
    colour_accuracy, num_colour = accuracy_from_logits(colour_logits, colour_labels)
    return {
        "category_accuracy": category_accuracy,
        "colour_accuracy": colour_accuracy,
        "num_category": num_category,
        "num_colour": num_colour,
        "category_predictions": [categories[i] for i in category_logits.argmax(-1).tolist()],
        "colour_predictions": [colours[i] for i in colour_logits.argmax(-1).tolist()],
    }
