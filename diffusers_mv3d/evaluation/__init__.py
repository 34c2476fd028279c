"""Measuring (DESIGN.md §6): training-free consistency metrics, attribute-classifier fidelity, and the
evaluation that runs them over a fixed prompt set (:mod:`.evaluate`, ``diffusers-mv3d evaluate``).

The classifier's trainer is :mod:`.train_classifier` (``python -m diffusers_mv3d.evaluation.train_classifier``),
not imported here so that ``-m`` runs it cleanly.
"""

from .classifier import AttributeClassifier, AttributeClassifierOutput, accuracy_from_logits, fidelity
from .consistency import foreground_masks, photo_consistency, reconstruction_psnr, visual_hull_iou
from .evaluate import (
    EvalPrompt,
    EvaluationConfig,
    chamfer_l1,
    volume_iou,
    voxelize_mesh,
    without_geometry_attention,
    without_neus,
)

__all__ = [
    "AttributeClassifier",
    "AttributeClassifierOutput",
    "accuracy_from_logits",
    "fidelity",
    "foreground_masks",
    "visual_hull_iou",
    "photo_consistency",
    "reconstruction_psnr",
    "EvalPrompt",
    "EvaluationConfig",
    "chamfer_l1",
    "volume_iou",
    "voxelize_mesh",
    "without_geometry_attention",
    "without_neus",
]
