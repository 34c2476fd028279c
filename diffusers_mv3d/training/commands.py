"""The trainers as the rest of the package sees them: their sub-commands and their settings classes.

``cli.py`` registers the sub-commands with :func:`add_parsers`; code that reads a run's
``config.yaml`` (model cards) or builds models of a trainer's shape (benchmarks) takes the settings
classes from here, never from a trainer module.
"""

from .train_baseline import BaselineTrainConfig
from .train_foundation import FoundationTrainConfig
from .train_reconstructor import ReconstructorTrainConfig
from .train_tunemv3d import TuneMV3DTrainConfig

__all__ = [
    "BaselineTrainConfig",
    "FoundationTrainConfig",
    "ReconstructorTrainConfig",
    "TuneMV3DTrainConfig",
    "add_parsers",
]


def add_parsers(subparsers) -> None:
    """Register ``train-foundation``, ``train``, ``train-reconstructor`` and ``train-baseline``."""
    from . import train_baseline, train_foundation, train_reconstructor, train_tunemv3d

    for trainer in (train_foundation, train_tunemv3d, train_reconstructor, train_baseline):
        trainer.add_parser(subparsers)
