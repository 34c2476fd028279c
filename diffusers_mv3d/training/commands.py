"""The trainers as the rest of the package sees them: their sub-commands and their settings classes.

``cli.py`` registers the sub-commands with :func:`add_parsers`; code that reads a run's
``config.yaml`` (model cards) or builds models of a trainer's shape (benchmarks) takes the settings
classes from here, never from a trainer module.
"""

from .common import add_trainer_parser
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
    """Register ``train-foundation``, ``train``, ``train-reconstructor`` and ``train-baseline``: each
    trainer's flags are its settings class's fields, its ``--help`` its module docstring, and it runs
    the module's ``main(settings)`` (:func:`~diffusers_mv3d.training.common.add_trainer_parser`)."""
    from . import train_baseline, train_foundation, train_reconstructor, train_tunemv3d

    for command, trainer, config_class, help in (
        ("train-foundation", train_foundation, FoundationTrainConfig,
         "train the pixel-space text-to-image foundation model (an IFPipeline folder)"),
        ("train", train_tunemv3d, TuneMV3DTrainConfig,
         "tune a frozen text-to-image foundation into TuneMV3D (multi-view ControlNet + latent SparseNeuS)"),
        ("train-reconstructor", train_reconstructor, ReconstructorTrainConfig,
         "train the feed-forward SparseNeuS reconstructor (views -> SDF -> mesh, §3.5)"),
        ("train-baseline", train_baseline, BaselineTrainConfig,
         "train a baseline on the multi-view data: a fully fine-tuned UNet (finetune) or MVDream-style (mvdream)"),
    ):
        add_trainer_parser(subparsers, command, help=help, description=trainer.__doc__, config_class=config_class,
                           main=trainer.main)
