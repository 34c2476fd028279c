"""The training loop that ``train`` and ``train-reconstructor`` share, and the steps around it.

A trainer builds its models, optimizer and schedule, then hands :func:`train_loop` three small
callables: ``compute_losses(batch, generator) -> (loss, parts)`` (one step's weighted loss and its
parts as floats), ``save_model(folder, step)`` (the ``model/`` folder) and
``validate(step, samples_dir) -> (grid, record)`` (the validation grid and the metrics logged with
it). The loop writes checkpoints, samples and ``log.jsonl`` records at the steps the settings ask for,
and stops at the final step or once ``--max-minutes`` have passed. :func:`finish_run` pushes to the
Hub and returns the summary line's record.

``cfg`` is a trainer's settings dataclass; the fields read here are the ones both trainers have
(``output_dir``, ``data_dir``, ``batch_size``, ``max_train_steps``, ``max_grad_norm``, ``seed``,
``checkpointing_steps``, ``checkpoints_total_limit``, ``validation_steps``, ``log_every``,
``max_minutes``, ``push_to_hub``, ``hub_model_id``, ``hub_private``, ``num_input_views``).
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

from .checkpointing import (
    append_log,
    latest_checkpoint,
    load_training_checkpoint,
    peak_rss_mb,
    prune_checkpoints,
    save_training_checkpoint,
    weights_sha256,
)
from .common import build_lr_scheduler, reduce_mean, save_grid, step_generator
from .config import flag_name, save_config
from ..hub import push_folder_to_hub

__all__ = [
    "LoopResult",
    "check_common_settings",
    "setting_check",
    "prepare_training",
    "check_log_and_hub_settings",
    "check_optimisation_settings",
    "finish_run",
    "load_multiview_dataset",
    "run_paths",
    "train_loop",
    "write_checkpoint",
    "write_run_config",
    "write_samples",
]


# ----------------------------------------------------------------------------------------------
# Settings checks both trainers run (in the order of their fields)
# ----------------------------------------------------------------------------------------------


def setting_check(cfg) -> Callable[[bool, str, str], None]:
    """``check(ok, field, requirement)``: raises ``ValueError("--field requirement, got value")`` when not ``ok``."""

    def check(ok: bool, field: str, requirement: str) -> None:
        if not ok:
            raise ValueError(f"{flag_name(field)} {requirement}, got {getattr(cfg, field)!r}")

    return check


def check_optimisation_settings(cfg, check: Callable[[bool, str, str], None]) -> None:
    """``--lr-scheduler`` .. ``--mixed-precision``: the schedule and precision checks of both trainers."""
    check(cfg.lr_scheduler in ("constant", "cosine"), "lr_scheduler", "must be constant or cosine")
    check(cfg.lr_warmup_steps >= 0, "lr_warmup_steps", "must be >= 0")
    check(cfg.weight_decay >= 0, "weight_decay", "must be >= 0")
    check(cfg.max_grad_norm > 0, "max_grad_norm", "must be > 0")
    check(cfg.seed >= 0, "seed", "must be >= 0")
    check(cfg.mixed_precision in ("no", "fp16", "bf16"), "mixed_precision", "must be no, fp16 or bf16")


def check_common_settings(cfg, check: Callable[[bool, str, str], None]) -> None:
    """``--checkpointing-steps`` .. ``--validation-steps``: the checkpoint and stopping checks of both trainers."""
    check(cfg.checkpointing_steps >= 1, "checkpointing_steps", "must be >= 1")
    check(cfg.checkpoints_total_limit >= 0, "checkpoints_total_limit", "must be >= 0")
    check(cfg.resume is None or bool(cfg.resume), "resume", 'must be "latest" or a checkpoint folder')
    check(cfg.stop_at_step >= 0, "stop_at_step", "must be >= 0")
    check(cfg.max_minutes >= 0, "max_minutes", "must be >= 0")
    check(cfg.validation_steps >= 0, "validation_steps", "must be >= 0")


def check_log_and_hub_settings(cfg, check: Callable[[bool, str, str], None]) -> None:
    """``--log-every`` and ``--hub-model-id``: the last checks of both trainers."""
    check(cfg.log_every >= 1, "log_every", "must be >= 1")
    check(not cfg.push_to_hub or bool(cfg.hub_model_id), "hub_model_id", "must name a repository with --push-to-hub")


# ----------------------------------------------------------------------------------------------
# Folders, data, preparation
# ----------------------------------------------------------------------------------------------


def run_paths(cfg) -> Tuple[Path, Path, Path]:
    """``(output_dir, output_dir/checkpoints, output_dir/log.jsonl)`` of a run."""
    output_dir = Path(cfg.output_dir)
    return output_dir, output_dir / "checkpoints", output_dir / "log.jsonl"


def load_multiview_dataset(cfg):
    """The :class:`MultiViewDataset` of ``--data-dir`` (input + supervision views at ``--resolution``)."""
    from ..data.dataset import MultiViewDataset

    if not os.path.isdir(cfg.data_dir):
        raise ValueError(f"{flag_name('data_dir')}: no folder {cfg.data_dir!r} (write one with "
                         "`diffusers-mv3d render --split objects3d --out DIR`)")
    return MultiViewDataset(cfg.data_dir, cfg.num_input_views, cfg.num_supervision_views, resolution=cfg.resolution)


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
        start_step = load_training_checkpoint(resume_from, optimizer, lr_scheduler)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, lr_scheduler, start_step


# ----------------------------------------------------------------------------------------------
# Checkpoints and samples
# ----------------------------------------------------------------------------------------------


def write_checkpoint(accelerator, cfg, step: int, models: Dict[str, torch.nn.Module], optimizer, lr_scheduler,
                     save_model: Callable[[Path, int], None]) -> None:
    """``model/`` via ``save_model``, then ``checkpoints/checkpoint-NNNNNN`` (``models`` as its sub-folders), then prune.

    The model folder comes first: the checkpoint marks step ``step`` done, so a kill between the two
    writes makes the rerun redo those steps and rewrite ``model/``, never leave a stale one behind.
    """
    output_dir, checkpoint_dir, _ = run_paths(cfg)
    if accelerator.is_main_process:
        save_model(output_dir / "model", step)
        save_training_checkpoint(checkpoint_dir / f"checkpoint-{step:06d}", step, models, optimizer, lr_scheduler, cfg)
        prune_checkpoints(checkpoint_dir, cfg.checkpoints_total_limit)
    accelerator.wait_for_everyone()


def write_samples(accelerator, cfg, step: int,
                  validate: Callable[[int, Path], Tuple[torch.Tensor, Dict[str, object]]]) -> None:
    """``samples/step-NNNNNN.png`` of ``validate``'s grid and a ``log.jsonl`` record of its metrics (main process)."""
    output_dir, _, log_path = run_paths(cfg)
    if accelerator.is_main_process:
        samples_dir = output_dir / "samples"
        samples_dir.mkdir(parents=True, exist_ok=True)
        grid, record = validate(step, samples_dir)
        save_grid(grid, str(samples_dir / f"step-{step:06d}.png"), ncol=cfg.num_input_views)
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
    """Objects a second over the last measured window of training steps."""
    process_loss: float
    """This process's own loss of the last step."""


def train_loop(cfg, accelerator, desc: str, models: Dict[str, torch.nn.Module], params: List[torch.nn.Parameter],
               optimizer, lr_scheduler, loader: Iterable, start_step: int, end_step: int,
               compute_losses: Callable[[Dict, torch.Generator], Tuple[torch.Tensor, Dict[str, float]]],
               save_model: Callable[[Path, int], None],
               validate: Callable[[int, Path], Tuple[torch.Tensor, Dict[str, object]]]) -> LoopResult:
    """Train steps ``start_step .. end_step - 1``; every random draw of step s comes from step_generator(seed, s, rank).

    Each step: ``compute_losses(batch, generator)`` under autocast, backward, clip, optimizer and
    schedule step; then a ``log.jsonl`` record every ``--log-every`` steps, a checkpoint of ``models``
    and ``save_model(output_dir / "model", step)`` every ``--checkpointing-steps`` (:func:`write_checkpoint`),
    and ``validate(step, samples_dir)``'s grid every ``--validation-steps`` (:func:`write_samples`), each
    also at the end. Stops early, after a checkpoint, once ``--max-minutes`` have passed on any process.
    """
    from tqdm.auto import tqdm

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
            loss, parts = compute_losses(batch, generator)
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)

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
        lr = lr_scheduler.get_last_lr()[0]
        progress.update(1)
        progress.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{lr:.2e}", objects_s=f"{samples_per_s:.2f}")
        if accelerator.is_main_process and (done % cfg.log_every == 0 or done == end_step or out_of_time):
            append_log(log_path, {"step": done, **last, "lr": lr, "grad_norm": float(grad_norm),
                                  "samples_per_s": samples_per_s, "peak_rss_mb": peak_rss_mb(),
                                  "minutes": (time.time() - started) / 60})

        wrote = False
        if done % cfg.checkpointing_steps == 0 or done == end_step or out_of_time:
            write_checkpoint(accelerator, cfg, done, models, optimizer, lr_scheduler, save_model)
            wrote = True
        if cfg.validation_steps and (done % cfg.validation_steps == 0 or done == cfg.max_train_steps):
            write_samples(accelerator, cfg, done, validate)
            wrote = True
        if wrote:  # samples/s measures training steps only
            window_start, window_steps = time.time(), 0
        step = done
        if out_of_time:
            break
    progress.close()
    return LoopResult(step=step, last=last, samples_per_s=samples_per_s, process_loss=process_loss)


def finish_run(accelerator, cfg, result: LoopResult, models: Dict[str, torch.nn.Module],
               hub_message: str) -> Dict[str, object]:
    """Push ``model/`` (``--push-to-hub``, a finished run only), end the processes; returns the summary record.

    ``hub_message`` is the Hub commit message without the step (``", step N"`` is appended).
    """
    output_dir, checkpoint_dir, _ = run_paths(cfg)
    step = result.step
    if cfg.push_to_hub and accelerator.is_main_process and step == cfg.max_train_steps:
        push_folder_to_hub(output_dir / "model", cfg.hub_model_id, cfg.hub_private, f"{hub_message}, step {step}")
    # rank 0 hosts the process group's store: no process tears it down while another still uses it
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {
        "step": step,
        **result.last,
        "samples_per_s": result.samples_per_s,
        "peak_rss_mb": peak_rss_mb(),
        "model": str(output_dir / "model"),
        "checkpoint": str(latest_checkpoint(checkpoint_dir)),
        "rank": accelerator.process_index,
        "process_loss": result.process_loss,
        "weights_sha256": weights_sha256(*models.values()),
    }
