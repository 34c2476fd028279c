"""Measuring (DESIGN.md §6): training-free consistency metrics and attribute-classifier fidelity.

The classifier's trainer is :mod:`.train_classifier` (``python -m diffusers_mv3d.evaluation.train_classifier``),
not imported here so that ``-m`` runs it cleanly.
"""

from .classifier import AttributeClassifier, AttributeClassifierOutput, accuracy_from_logits, fidelity
from .consistency import foreground_masks, photo_consistency, reconstruction_psnr, visual_hull_iou

__all__ = [
    "AttributeClassifier",
    "AttributeClassifierOutput",
    "accuracy_from_logits",
    "fidelity",
    "foreground_masks",
    "visual_hull_iou",
    "photo_consistency",
    "reconstruction_psnr",
]
