"""ConsistencyGuidanceScheduler: consistency-guided sampling of TuneMV3D (paper §3.3, eq. 4).

On a *consistency step* (a fraction ``K`` of the steps, spread evenly) the denoiser also runs with
the NeuS condition dropped, giving ``x_bar_{t-1}``, and the step becomes

    x_hat_{t-1} = x_{t-1} + alpha * (x_{t-1} - x_bar_{t-1})                       (eq. 4)

Every diffusers scheduler's update is affine in the current model output ``e`` (DDIM, DDPM with the
same noise draw, Euler, DPM-Solver with its history fixed): ``x_{t-1} = a x_t + b e (+ c)``. So eq. 4
equals one ordinary step on the guided output ``e + alpha (e - e_bar)``, which is how :meth:`step`
applies it: stateful multistep schedulers are stepped once per step, as they expect. With x0
clipping or dynamic thresholding (non-affine) the guidance acts before the clip, as classifier-free
guidance does.

The wrapper holds any diffusers scheduler (DDIM by default) and saves it as its own config plus
``consistency_ratio`` (K), ``consistency_scale`` (alpha) and the ``eta`` a DDIM inside samples with
(0: deterministic DDIM; 1: as stochastic as DDPM, which corrects more of an imperfect model's errors),
beside the pipeline's default classifier-free ``guidance_scale``: a pipeline folder's sampling defaults
live in one file.
"""

import inspect

from typing import Any, Dict, Optional, Set

import diffusers
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin


def consistency_step_indices(num_inference_steps: int, ratio: float) -> Set[int]:
    """Indices of the ``round(ratio * n)`` consistency steps among ``n`` steps, spread evenly:
    ``floor(i * n / m)`` for ``i < m`` (the first step is always one when ``m > 0``)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"consistency_ratio must lie in [0, 1], got {ratio}")
    count = int(round(ratio * num_inference_steps))
    return {i * num_inference_steps // count for i in range(count)} if count else set()


def guide_with_consistency(x: torch.Tensor, x_without_neus: torch.Tensor, scale: float) -> torch.Tensor:
    """Eq. 4: ``x + scale * (x - x_without_neus)`` (on samples or, equivalently, model outputs)."""
    return x + scale * (x - x_without_neus)


class ConsistencyGuidanceScheduler(SchedulerMixin, ConfigMixin):
    r"""Wraps a diffusers scheduler and adds consistency guidance (§3.3).

    Args:
        inner_scheduler_type (`str`, defaults to `"DDIMScheduler"`): a scheduler class of ``diffusers``.
        inner_scheduler_config (`dict`, *optional*): its config (``scheduler.config``).
        consistency_ratio (`float`, defaults to 0.5): K, the fraction of consistency steps.
        consistency_scale (`float`, defaults to 7.5): alpha of eq. 4.
        eta (`float`, defaults to 0.0): DDIM's eta (the weight of fresh noise in a step), passed to an
            inner scheduler whose ``step`` takes it (``DDIMScheduler``); other schedulers ignore it.
        guidance_scale (`float`, defaults to 3.0): the classifier-free guidance scale the pipeline uses
            when a call does not give one (the scheduler itself does not read it).
    """

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(
        self,
        inner_scheduler_type: str = "DDIMScheduler",
        inner_scheduler_config: Optional[Dict[str, Any]] = None,
        consistency_ratio: float = 0.5,
        consistency_scale: float = 7.5,
        eta: float = 0.0,
        guidance_scale: float = 3.0,
    ):
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if not guidance_scale >= 1.0:
            raise ValueError(f"guidance_scale must be >= 1 (1: no classifier-free guidance), got {guidance_scale}")
        inner_class = getattr(diffusers, inner_scheduler_type, None)
        if not (isinstance(inner_class, type) and issubclass(inner_class, SchedulerMixin)):
            raise ValueError(f"inner_scheduler_type={inner_scheduler_type!r} is not a diffusers scheduler class")
        consistency_step_indices(1, consistency_ratio)  # validates the ratio
        config = {k: v for k, v in (inner_scheduler_config or {}).items() if not k.startswith("_")}
        self.inner = inner_class.from_config(config)
        self.order = getattr(self.inner, "order", 1)
        self._inner_takes_eta = "eta" in inspect.signature(self.inner.step).parameters

    @classmethod
    def wrap(cls, scheduler: SchedulerMixin, consistency_ratio: float = 0.5, consistency_scale: float = 7.5,
             eta: float = 0.0, guidance_scale: float = 3.0):
        """Wrap an existing scheduler instance (its class and config are kept)."""
        return cls(type(scheduler).__name__, dict(scheduler.config), consistency_ratio, consistency_scale, eta,
                   guidance_scale)

    # ---------------------------------------------------------------- the inner scheduler's API
    @property
    def timesteps(self) -> torch.Tensor:
        return self.inner.timesteps

    @property
    def init_noise_sigma(self) -> float:
        return self.inner.init_noise_sigma

    def set_timesteps(self, num_inference_steps: int, device=None, **kwargs) -> None:
        self.inner.set_timesteps(num_inference_steps, device=device, **kwargs)

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        return self.inner.scale_model_input(sample, timestep)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.inner.add_noise(original, noise, timesteps)

    # ---------------------------------------------------------------- consistency guidance
    def consistency_steps(self, num_inference_steps: int, ratio: Optional[float] = None) -> Set[int]:
        """Which step indices are consistency steps (``ratio`` overrides the config's K)."""
        return consistency_step_indices(num_inference_steps, self.config.consistency_ratio if ratio is None else ratio)

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        model_output_without_neus: Optional[torch.Tensor] = None,
        consistency_scale: Optional[float] = None,
        eta: Optional[float] = None,
        **kwargs,
    ):
        """One step of the inner scheduler; with ``model_output_without_neus`` a consistency step (eq. 4).
        ``eta`` (default: the config's) goes to an inner scheduler that takes it (DDIM); ``kwargs``
        (``generator``, ...) go to the inner ``step``.

        Returns what the inner scheduler's ``step`` returns (``prev_sample`` and friends).
        """
        if model_output_without_neus is not None:
            scale = self.config.consistency_scale if consistency_scale is None else consistency_scale
            model_output = guide_with_consistency(model_output, model_output_without_neus, scale)
        if self._inner_takes_eta:
            kwargs["eta"] = self.config.eta if eta is None else eta
        return self.inner.step(model_output, timestep, sample, **kwargs)

    def __len__(self) -> int:
        return self.inner.config.num_train_timesteps
