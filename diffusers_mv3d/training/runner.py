"""One runner for every trainer: processes, data, the step loop with its hooks, checkpoints and the summary.

A trainer builds its models, optimizer and schedule, then hands :func:`train_loop` its dataset and
:class:`StepHooks`: ``compute_losses(batch, generator) -> (loss, parts)`` (one step's weighted loss and
its parts as floats), ``save_model(folder, step)`` (the ``model/`` or ``pipeline/`` folder),
``validate(step, samples_dir) -> (grid, record)`` (the validation grid and the metrics logged with it),
and optionally ``after_step()`` (an EMA update) and ``checkpoint_extras(folder) -> state`` (files and
trainer-state entries a checkpoint keeps beside the models, e.g. the EMA). The loop writes
checkpoints, samples and ``log.jsonl`` records at the steps the settings ask for, and stops at the
final step or once ``--max-minutes`` have passed. :func:`finish_run` pushes to the Hub and returns the
summary line's record.

``cfg`` is a trainer's settings, a :class:`~diffusers_mv3d.training.settings.RunSettings`.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

from ..foundation import Foundation, load_foundation
from ..hub import push_folder_to_hub

from .checkpointing import (
    append_log,
    latest_checkpoint,
    load_training_checkpoint,
    peak_rss_mb,
    prune_checkpoints,
    resolve_resume,
    save_training_checkpoint,
    weights_sha256,
)
from .common import final_step, save_grid, step_generator, step_loader
from .config import flag_name, save_config

__all__ = [
    "LoopResult",
    "StepHooks",
    "batch_stream",
    "build_lr_scheduler",
    "check_batch_size",
    "finish_run",
    "load_foundation_for",
    "load_multiview_dataset",
    "make_accelerator",
    "prepare_training",
    "reduce_mean",
    "run_paths",
    "start_multiview_run",
    "start_run",
    "start_tuning_run",
    "train_loop",
    "write_checkpoint",
    "write_run_config",
    "write_samples",
]


# ----------------------------------------------------------------------------------------------
# Processes and the LR schedule
# ----------------------------------------------------------------------------------------------


def make_accelerator(cfg):
    """The Accelerator of a trainer; several processes without GPUs become gloo DDP on CPUs.

    ``accelerate launch --multi_gpu`` and ``torchrun`` set ``WORLD_SIZE``, but without a GPU
    accelerate 1.x only joins the processes when ``Accelerator(cpu=True)``; otherwise every process
    trains alone as rank 0 of 1 (the same batches, so their weights even agree, but nothing syncs).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not has_accelerator
    # find_unused_parameters: a step whose objects all drop the NeuS leaves the condition embedding
    # and the geometry-aware attention without gradients
    return Accelerator(cpu=cpu, mixed_precision=cfg.mixed_precision,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def check_batch_size(cfg, world: int) -> None:
    """``--batch-size`` is the global batch: it must split evenly across the ``world`` processes."""
    if cfg.batch_size % world:
        raise ValueError(f"{flag_name('batch_size')} {cfg.batch_size} must be a multiple of the {world} processes")


def start_run(cfg):
    """The run's Accelerator (:func:`make_accelerator`), after checking ``--batch-size`` splits across its processes."""
    accelerator = make_accelerator(cfg)
    check_batch_size(cfg, accelerator.num_processes)
    return accelerator


def batch_stream(accelerator, cfg, dataset, collate_fn: Callable, start_step: int) -> Tuple[Iterable, int]:
    """``(loader, end_step)``: this process's batches of steps ``start_step .. end_step - 1``
    (:func:`~diffusers_mv3d.training.common.step_loader`); writes ``config.yaml`` too (a run starts here)."""
    end_step = final_step(cfg)
    loader = step_loader(dataset, cfg, start_step, end_step, accelerator.process_index, accelerator.num_processes,
                         collate_fn)
    write_run_config(accelerator, cfg)
    return loader, end_step


def build_lr_scheduler(optimizer, cfg):
    """Linear warm-up over ``cfg.lr_warmup_steps``, then constant or cosine decay to 0 at ``cfg.max_train_steps``."""
    from diffusers.optimization import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    if cfg.lr_scheduler == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, cfg.lr_warmup_steps, cfg.max_train_steps)
    return get_constant_schedule_with_warmup(optimizer, cfg.lr_warmup_steps)


def reduce_mean(accelerator, values: Dict[str, float]) -> Dict[str, float]:
    """The mean of each value over the processes (one all-reduce; the values themselves on one process)."""
    if accelerator.num_processes == 1:
        return dict(values)
    mean = accelerator.reduce(torch.tensor(list(values.values()), device=accelerator.device), "mean")
    return dict(zip(values, mean.tolist()))


# ----------------------------------------------------------------------------------------------
# Folders, data, preparation
# ----------------------------------------------------------------------------------------------


def run_paths(cfg) -> Tuple[Path, Path, Path]:
    """``(output_dir, output_dir/checkpoints, output_dir/log.jsonl)`` of a run."""
    output_dir = Path(cfg.output_dir)
    return output_dir, output_dir / "checkpoints", output_dir / "log.jsonl"


def load_multiview_dataset(cfg):
    """The :class:`MultiViewDataset` of ``--data-dir`` (input + supervision views at ``--resolution``; with
    ``--occupancy-weight``, the occupancy points of each object's mesh too)."""
    from ..data.dataset import MultiViewDataset

    if not os.path.isdir(cfg.data_dir):
        raise ValueError(f"{flag_name('data_dir')}: no folder {cfg.data_dir!r} (write one with "
                         "`diffusers-mv3d render --split objects3d --out DIR`)")
    return MultiViewDataset(cfg.data_dir, cfg.num_input_views, cfg.num_supervision_views, resolution=cfg.resolution,
                            generated_views_dir=getattr(cfg, "generated_views_dir", None),
                            occupancy_points=getattr(cfg, "occupancy_points", 0) if getattr(cfg, "occupancy_weight", 0) else 0)


def start_multiview_run(cfg) -> Tuple[object, Path, object, Optional[Path]]:
    """The start every trainer on multi-view objects shares: ``(accelerator, log_path, dataset, resume_from)``
    (:func:`start_run`, :func:`run_paths`, :func:`load_multiview_dataset`,
    :func:`~diffusers_mv3d.training.checkpointing.resolve_resume`; ``resume_from`` is None for a fresh start)."""
    accelerator = start_run(cfg)
    _, _, log_path = run_paths(cfg)
    return accelerator, log_path, load_multiview_dataset(cfg), resolve_resume(cfg)


def load_foundation_for(cfg, device: torch.device) -> Foundation:
    """:func:`~diffusers_mv3d.foundation.load_foundation` of ``cfg.pretrained_model``, after checking that
    ``cfg.resolution`` and ``cfg.validation_timesteps`` fit it (:class:`FoundationTuningSettings`)."""
    foundation = load_foundation(cfg.pretrained_model, device)
    factor = foundation.vae_scale_factor * 2 ** (len(foundation.unet.config.block_out_channels) - 1)
    if cfg.resolution % factor:
        raise ValueError(f"{flag_name('resolution')} {cfg.resolution} must be a multiple of {factor} "
                         "(the VAE factor x the UNet's downsampling)")
    for t in cfg.validation_timesteps:
        if t >= foundation.noise_scheduler.config.num_train_timesteps:
            raise ValueError(f"{flag_name('validation_timesteps')} {t} must be below the foundation's "
                             f"{foundation.noise_scheduler.config.num_train_timesteps} training timesteps")
    return foundation


def start_tuning_run(cfg) -> Tuple[object, Path, object, Optional[Path], Foundation]:
    """The start of the trainers that tune a frozen foundation (``train``, ``train-baseline``):
    :func:`start_multiview_run`'s ``(accelerator, log_path, dataset, resume_from)`` and the foundation on
    the process's device (:func:`load_foundation_for`)."""
    accelerator, log_path, dataset, resume_from = start_multiview_run(cfg)
    return accelerator, log_path, dataset, resume_from, load_foundation_for(cfg, accelerator.device)


def write_run_config(accelerator, cfg) -> None:
    """Create ``--output-dir`` and write ``config.yaml`` there (main process only)."""
    output_dir, _, _ = run_paths(cfg)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, str(output_dir / "config.yaml"))


def prepare_training(accelerator, cfg, model: torch.nn.Module, optimizer,
                     resume_from: Optional[Path]) -> Tuple[torch.nn.Module, object, object, int]:
    """Build the LR schedule, restore optimizer and schedule from ``resume_from`` (None: a fresh start)
    and let accelerate wrap model and optimizer; returns ``(model, optimizer, lr_scheduler, start_step)``.

    The LR scheduler is stepped by hand once per optimizer step, so accelerate does not wrap it.
    """
    lr_scheduler = build_lr_scheduler(optimizer, cfg)
    start_step = 0
    if resume_from is not None:
        configured = list(lr_scheduler.base_lrs)
        start_step = load_training_checkpoint(resume_from, optimizer, lr_scheduler)
        keep_configured_peak_lrs(optimizer, lr_scheduler, configured)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, lr_scheduler, start_step


def keep_configured_peak_lrs(optimizer, lr_scheduler, configured: List[float]) -> None:
    """After a resume, schedule from the peak learning rates the settings give (``configured``, one a
    parameter group), not the checkpoint's: a run resumed with another ``--learning-rate`` uses it from
    the next step on, with the optimizer's moments and the schedule's position kept."""
    restored = list(lr_scheduler.base_lrs)
    if restored == configured:
        return
    print(f"resume: peak learning rates {restored} in the checkpoint, {configured} in the settings; using the settings'")
    lr_scheduler.base_lrs = configured
    for group, base, factor in zip(optimizer.param_groups, configured, lr_scheduler.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * factor(lr_scheduler.last_epoch)


# ----------------------------------------------------------------------------------------------
# What a trainer hands the loop
# ----------------------------------------------------------------------------------------------


@dataclass
class StepHooks:
    """A trainer's part of :func:`train_loop`."""

    compute_losses: Callable[[Dict, torch.Generator], Tuple[torch.Tensor, Dict[str, float]]]
    """``(batch, generator) -> (loss, parts)``: one step's weighted loss (run under autocast) and its parts as floats."""
    save_model: Callable[[Path, int], None]
    """``(folder, step)``: write ``output_dir / cfg.model_folder`` (at every checkpoint, before it)."""
    validate: Callable[[int, Path], Tuple[torch.Tensor, Dict[str, object]]]
    """``(step, samples_dir) -> (grid [N, 3, H, W] in [-1, 1], record)``; a non-empty record goes to log.jsonl."""
    grid_columns: int
    """Images a row of the validation grid."""
    after_step: Optional[Callable[[], None]] = None
    """Called after every optimizer step (an EMA update)."""
    checkpoint_extras: Optional[Callable[[Path], Dict[str, object]]] = None
    """``(checkpoint folder) -> trainer-state entries``: writes what a checkpoint keeps beside the models."""


# ----------------------------------------------------------------------------------------------
# Checkpoints and samples
# ----------------------------------------------------------------------------------------------


def write_checkpoint(accelerator, cfg, step: int, models: Dict[str, torch.nn.Module], optimizer, lr_scheduler,
                     hooks: StepHooks) -> None:
    """``model/`` via ``hooks.save_model``, then ``checkpoints/checkpoint-NNNNNN`` (``models`` as its
    sub-folders, ``hooks.checkpoint_extras`` beside them), then prune.

    The model folder comes first: the checkpoint marks step ``step`` done, so a kill between the two
    writes makes the rerun redo those steps and rewrite ``model/``, never leave a stale one behind.
    """
    output_dir, checkpoint_dir, _ = run_paths(cfg)
    if accelerator.is_main_process:
        hooks.save_model(output_dir / cfg.model_folder, step)
        save_training_checkpoint(checkpoint_dir / f"checkpoint-{step:06d}", step, models, optimizer, lr_scheduler, cfg,
                                 hooks.checkpoint_extras)
        prune_checkpoints(checkpoint_dir, cfg.checkpoints_total_limit)
    accelerator.wait_for_everyone()


def write_samples(accelerator, cfg, step: int, hooks: StepHooks) -> None:
    """``samples/step-NNNNNN.png`` of ``hooks.validate``'s grid and a ``log.jsonl`` record of its metrics (main process)."""
    output_dir, _, log_path = run_paths(cfg)
    if accelerator.is_main_process:
        samples_dir = output_dir / "samples"
        samples_dir.mkdir(parents=True, exist_ok=True)
        grid, record = hooks.validate(step, samples_dir)
        save_grid(grid, str(samples_dir / f"step-{step:06d}.png"), ncol=hooks.grid_columns)
        if record:
            append_log(log_path, {"step": step, **record})
    accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


@dataclass
class LoopResult:
    """Where :func:`train_loop` stopped."""

    step: int
    """The last finished step (the start step when no step ran)."""
    last: Dict[str, float]
    """The last step's losses, the mean over processes (``{"loss": nan}`` when no step ran)."""
    samples_per_s: float
    """Objects (images) a second over the last measured window of training steps."""
    process_loss: float
    """This process's own loss of the last step."""


def train_loop(cfg, accelerator, desc: str, models: Dict[str, torch.nn.Module], params: List[torch.nn.Parameter],
               optimizer, lr_scheduler, dataset, collate_fn: Callable, start_step: int,
               hooks: StepHooks) -> LoopResult:
    """Train steps ``start_step .. end_step - 1`` on the batches of ``dataset`` (:func:`batch_stream`, which
    also writes ``config.yaml``); every random draw of step s comes from step_generator(seed, s, rank).

    Each step: ``hooks.compute_losses(batch, generator)`` under autocast, backward, clip, optimizer and
    schedule step, ``hooks.after_step()``; then a ``log.jsonl`` record every ``--log-every`` steps, a
    checkpoint every ``--checkpointing-steps`` (:func:`write_checkpoint`) and a validation grid every
    ``--validation-steps`` (:func:`write_samples`), each also at the end. Stops early, after a
    checkpoint, once ``--max-minutes`` have passed on any process.
    """
    from tqdm.auto import tqdm

    loader, end_step = batch_stream(accelerator, cfg, dataset, collate_fn, start_step)
    _, _, log_path = run_paths(cfg)
    rank = accelerator.process_index
    progress = tqdm(total=cfg.max_train_steps, initial=start_step, disable=not accelerator.is_main_process,
                    desc=desc)
    started = time.time()
    window_start, window_steps = time.time(), 0
    samples_per_s, last, step, process_loss = 0.0, {"loss": float("nan")}, start_step, float("nan")
    for step, batch in zip(range(start_step, end_step), loader):
        generator = step_generator(cfg.seed, step, rank)
        with accelerator.autocast():
            loss, parts = hooks.compute_losses(batch, generator)
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if hooks.after_step is not None:
            hooks.after_step()

        done = step + 1
        process_loss = loss.item()
        last = reduce_mean(accelerator, {"loss": process_loss, **parts})  # logged: the mean over processes
        if cfg.max_minutes and (time.time() - started) / 60 >= cfg.max_minutes:
            accelerator.set_trigger()
        out_of_time = accelerator.check_trigger()
        window_steps += 1
        if window_steps == 10 or done == end_step or out_of_time:
            samples_per_s = window_steps * cfg.batch_size / (time.time() - window_start)
            window_start, window_steps = time.time(), 0
        lr = optimizer.param_groups[0]["lr"]  # the next step's, as the schedule just set it
        progress.update(1)
        progress.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{lr:.2e}", samples_s=f"{samples_per_s:.2f}")
        if accelerator.is_main_process and (done % cfg.log_every == 0 or done == end_step or out_of_time):
            append_log(log_path, {"step": done, **last, "lr": lr, "grad_norm": float(grad_norm),
                                  "samples_per_s": samples_per_s, "peak_rss_mb": peak_rss_mb(),
                                  "minutes": (time.time() - started) / 60, "cpu_seconds": time.process_time()})

        wrote = False
        if done % cfg.checkpointing_steps == 0 or done == end_step or out_of_time:
            write_checkpoint(accelerator, cfg, done, models, optimizer, lr_scheduler, hooks)
            wrote = True
        if cfg.validation_steps and (done % cfg.validation_steps == 0 or done == cfg.max_train_steps):
            write_samples(accelerator, cfg, done, hooks)
            wrote = True
        if wrote:  # samples/s measures training steps only
            window_start, window_steps = time.time(), 0
        step = done
        if out_of_time:
            break
    progress.close()
    return LoopResult(step=step, last=last, samples_per_s=samples_per_s, process_loss=process_loss)


def finish_run(accelerator, cfg, result: LoopResult, models: Dict[str, torch.nn.Module],
               hub_message: Optional[str] = None) -> Dict[str, object]:
    """Push the model folder (``--push-to-hub``, a finished run only; ``hub_message`` is the commit
    message without the step), end the processes; returns the summary record."""
    output_dir, checkpoint_dir, _ = run_paths(cfg)
    step = result.step
    if hub_message and cfg.push_to_hub and accelerator.is_main_process and step == cfg.max_train_steps:
        push_folder_to_hub(output_dir / cfg.model_folder, cfg.hub_model_id, cfg.hub_private,
                           f"{hub_message}, step {step}")
    # rank 0 hosts the process group's store: no process tears it down while another still uses it
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {
        "step": step,
        **result.last,
        "samples_per_s": result.samples_per_s,
        "peak_rss_mb": peak_rss_mb(),
        cfg.model_folder: str(output_dir / cfg.model_folder),
        "checkpoint": str(latest_checkpoint(checkpoint_dir)),
        "rank": accelerator.process_index,
        "process_loss": result.process_loss,
        "weights_sha256": weights_sha256(*models.values()),
    }
