"""The settings every trainer shares, once: each trainer's settings dataclass extends these.

:class:`RunSettings` holds what the runner (:mod:`.runner`) reads: data and output folders, the
optimisation, checkpoints, stopping, validation and logging. :class:`MultiViewRunSettings` adds what
the trainers on multi-view objects (``train``, ``train-baseline``, ``train-reconstructor``) have on
top: views an object, the LR schedule's shape and the Hub upload; :class:`GuidedRunSettings` what the
trainers of a text-conditioned model (``train-foundation``, ``train``, ``train-baseline``) add: caption
dropout and the validation samples' DDIM steps and guidance scale; :class:`FoundationTuningSettings`
what the two that tune a frozen foundation (``train``, ``train-baseline``) add: the foundation and the
validation grid's noise levels. A trainer redeclares a field only to
change its default (and then gives it its own docstring). Flags, ``--config`` files and ``--dry-run``
come from the fields (:mod:`.config`); the base fields come first, then the trainer's own.

Every class checks its own fields, bases first (:class:`SettingChecks`): the least values in its
``at_least`` table, the rest in its ``check_settings``, each raising ``ValueError`` naming the flag
(:meth:`SettingChecks.check`).
"""

from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Tuple

from .config import config_to_dict, flag_name

__all__ = ["FoundationTuningSettings", "GuidedRunSettings", "MultiViewRunSettings", "RunSettings", "SettingChecks"]


class SettingChecks:
    """What every settings class shares: lists given for tuple fields (YAML, callers) made tuples, then
    the checks of every class in the MRO, bases first: its own :attr:`at_least` table, then its own
    ``check_settings()`` if it defines one. A failed check raises
    ``ValueError("--field requirement, got value")``."""

    at_least: ClassVar[Dict[str, int]] = {}
    """Field -> the least value it may take (``must be >= minimum``); a class lists only the bounds it adds."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        for klass in reversed(type(self).__mro__):
            own = vars(klass)
            for name, minimum in own.get("at_least", {}).items():
                self.check(getattr(self, name) >= minimum, name, f"must be >= {minimum}")
            if "check_settings" in own:
                own["check_settings"](self)

    def check(self, ok: bool, field: str, requirement: str) -> None:
        """Raise ``ValueError("--field requirement, got value")`` when not ``ok``."""
        if not ok:
            raise ValueError(f"{flag_name(field)} {requirement}, got {getattr(self, field)!r}")


@dataclass
class EMASettings(SettingChecks):
    """An exponential moving average of the trained weights (:class:`~diffusers_mv3d.training.ema.WeightAverage`)."""

    ema_decay: float = 0.0
    """Upper bound of the EMA decay (diffusers EMAModel with warm-up); the saved model and the validation samples hold the averaged weights. 0: the average is the weights themselves (no EMA)."""
    ema_power: float = 0.75
    """EMA warm-up exponent: decay = 1 - (1 + step)^-power (0.75 reaches 0.999 at 10k steps)."""

    def check_settings(self) -> None:
        self.check(0.0 <= self.ema_decay <= 1.0, "ema_decay", "must be in [0, 1]")
        self.check(self.ema_power > 0, "ema_power", "must be > 0")


@dataclass
class RunSettings(SettingChecks):
    """The settings of every trainer (flags are the field names with dashes)."""

    model_folder: ClassVar[str] = "model"
    """The folder under ``output_dir`` that a run writes its weights to, refreshed at every checkpoint."""
    renamed_settings: ClassVar[Dict[str, str]] = {}
    """Old setting name -> new one: files and checkpoints that use the old name still load."""
    architecture_settings: ClassVar[tuple] = ()
    """The settings that fix the weights' shapes (a resumed run must keep them)."""

    # data and outputs
    data_dir: str = "data/objects3d"
    """Multi-view object folders written by `diffusers-mv3d render --split objects3d` (or chairs3d)."""
    output_dir: str = "runs/tunemv3d-tiny"
    """Where model/ (pipeline/ for the foundation), checkpoints/, samples/, log.jsonl and config.yaml go."""
    resolution: int = 32
    """Images are resized to this square size in pixels (a latent UNet works at resolution / the VAE's factor)."""
    num_workers: int = 0
    """DataLoader worker processes (0 loads in the training process)."""

    # optimisation
    max_train_steps: int = 20000
    """Optimizer steps of the whole run (the schedule spans these)."""
    batch_size: int = 2
    """Global batch (objects or images an optimizer step), split evenly across processes."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate."""
    lr_warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this."""
    seed: int = 0
    """Seeds the new weights and, with the step number, each step's batch order and random draws (dropouts, timesteps, noise, rays)."""
    mixed_precision: str = "no"
    """Accelerator mixed precision: no, fp16 or bf16 (use no on CPUs: bf16 is ~8x slower without hardware support)."""

    # checkpoints, validation, stopping
    checkpointing_steps: int = 250
    """Write a checkpoint (and refresh model/ or pipeline/) every this many steps, and at the end."""
    checkpoints_total_limit: int = 3
    """Keep only the newest this many checkpoints (0 keeps all)."""
    resume: Optional[str] = None
    """Continue from a checkpoint: "latest" (the newest under output_dir/checkpoints, or a fresh start if none) or a checkpoint folder."""
    stop_at_step: int = 0
    """Stop (after writing a checkpoint) at this step although the schedule runs to max_train_steps; 0 = do not."""
    max_minutes: float = 0.0
    """Stop (after writing a checkpoint) once this many minutes of training have passed; 0 = no limit."""
    validation_steps: int = 500
    """Save validation samples every this many steps and at the end (0 = never)."""
    log_every: int = 10
    """Append the losses, lr, samples/s, peak RSS and process CPU seconds to log.jsonl every this many steps."""

    at_least = {"num_workers": 0, "lr_warmup_steps": 0, "weight_decay": 0, "seed": 0, "checkpointing_steps": 1,
                "checkpoints_total_limit": 0, "stop_at_step": 0, "max_minutes": 0, "validation_steps": 0, "log_every": 1}

    def check_settings(self) -> None:
        self.check(bool(self.data_dir), "data_dir", "must name a folder")
        self.check(bool(self.output_dir), "output_dir", "must name a folder")
        for name in ("resolution", "max_train_steps", "batch_size", "learning_rate", "max_grad_norm"):
            self.check(getattr(self, name) > 0, name, "must be > 0")
        self.check(self.mixed_precision in ("no", "fp16", "bf16"), "mixed_precision", "must be no, fp16 or bf16")
        self.check(self.resume is None or bool(self.resume), "resume", 'must be "latest" or a checkpoint folder')

    def architecture(self) -> Dict[str, object]:
        """The values of :attr:`architecture_settings` (saved with every checkpoint)."""
        values = config_to_dict(self)
        return {name: values[name] for name in self.architecture_settings}


@dataclass
class MultiViewRunSettings(RunSettings):
    """:class:`RunSettings` plus the views an object, the LR schedule's shape and the Hub upload."""

    num_input_views: int = 8
    """Views an object the model sees a step (the fixed input views of the data)."""
    lr_scheduler: str = "constant"
    """After the warm-up: constant, or cosine decay to 0 at max_train_steps."""
    push_to_hub: bool = False
    """Upload model/ to the Hub at the end (huggingface_hub upload, as ModelMixin.push_to_hub)."""
    hub_model_id: Optional[str] = None
    """Hub repository (owner/name) of --push-to-hub."""
    hub_private: bool = False
    """Create the Hub repository private."""

    def check_settings(self) -> None:
        self.check(self.lr_scheduler in ("constant", "cosine"), "lr_scheduler", "must be constant or cosine")
        self.check(not self.push_to_hub or bool(self.hub_model_id), "hub_model_id", "must name a repository with --push-to-hub")


@dataclass
class GuidedRunSettings(RunSettings):
    """:class:`RunSettings` plus classifier-free guidance: the caption dropout that trains it and the
    DDIM steps and guidance scale of the validation samples that show it."""

    caption_dropout: float = 0.1
    """Fraction of captions replaced by "" (learns the unconditional model for classifier-free guidance)."""
    validation_inference_steps: int = 10
    """DDIM steps of the grid's row of views sampled from the validation caption (0 = no such row)."""
    validation_guidance_scale: float = 3.0
    """Classifier-free guidance scale of the validation samples."""

    at_least = {"validation_inference_steps": 0, "validation_guidance_scale": 1}

    def check_settings(self) -> None:
        self.check(0.0 <= self.caption_dropout < 1.0, "caption_dropout", "must be in [0, 1)")


@dataclass
class FoundationTuningSettings(MultiViewRunSettings, GuidedRunSettings):
    """:class:`MultiViewRunSettings` and :class:`GuidedRunSettings` plus the foundation a run starts from
    and the validation grid's noise levels."""

    pretrained_model: str = "runs/foundation-tiny/pipeline"
    """The foundation: a diffusers pipeline folder with unet/, text_encoder/, tokenizer/, scheduler/ (+ vae/ for a latent model)."""
    validation_timesteps: Tuple[int, ...] = (250, 750)
    """Noise levels of the validation grid: per t, rows of the noisy views and the one-step x0 prediction (and the trainer's own rows)."""

    def check_settings(self) -> None:
        self.check(bool(self.pretrained_model), "pretrained_model", "must name a pipeline folder")
        self.check(len(self.validation_timesteps) >= 1 and all(t >= 0 for t in self.validation_timesteps),
              "validation_timesteps", "must be one or more timesteps >= 0")
