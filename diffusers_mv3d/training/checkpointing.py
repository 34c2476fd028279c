"""Folders and checkpoints of the trainers: written atomically, safetensors + JSON, no pickle.

Layout under a trainer's ``--output-dir`` (shared by ``train-foundation``, ``train`` and
``train-reconstructor``)::

    checkpoints/checkpoint-NNNNNN/
        <model>/                  save_pretrained sub-folders (unet/, controlnet/, neus/, reconstructor/, ...)
        optimizer.safetensors     every tensor of the optimizer state, keyed "<param index>.<name>"
        trainer_state.json        step, optimizer (param groups + the non-tensor state), lr_scheduler,
                                  architecture, config; written last, so it marks a finished checkpoint
    log.jsonl                     one JSON record a line (:func:`append_log`)

Every folder is written into a temporary sibling and renamed into place (:func:`~diffusers_mv3d.io_utils.atomic_write_folder`), so
``final`` is never a partial folder, even if the process is killed mid-write.
"""

import hashlib
import json
import os
import re
import resource
import shutil
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..io_utils import atomic_write_folder, atomic_write_text
from .config import config_to_dict, flag_name, renamed_setting

__all__ = [
    "CHECKPOINT_RE",
    "STATE_FILE",
    "append_log",
    "check_architecture",
    "checkpoint_problem",
    "latest_checkpoint",
    "list_checkpoints",
    "load_training_checkpoint",
    "load_weights_to_continue",
    "newest_intact_checkpoint",
    "optimizer_state_from_files",
    "optimizer_state_to_files",
    "peak_rss_mb",
    "prune_checkpoints",
    "remove_stale_temporaries",
    "resolve_resume",
    "save_training_checkpoint",
    "weights_sha256",
]

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


# ----------------------------------------------------------------------------------------------
# Finding checkpoints
# ----------------------------------------------------------------------------------------------


def list_checkpoints(checkpoint_dir: Path) -> List[Tuple[int, Path]]:
    """Finished checkpoints (``checkpoint-N`` holding trainer_state.json), oldest first."""
    found = []
    if checkpoint_dir.is_dir():
        for path in checkpoint_dir.iterdir():
            match = CHECKPOINT_RE.match(path.name)
            if match and (path / STATE_FILE).is_file():
                found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(checkpoint_dir: Path) -> Optional[Path]:
    """The newest finished checkpoint under ``checkpoint_dir`` (None: there is none)."""
    found = list_checkpoints(checkpoint_dir)
    return found[-1][1] if found else None


def checkpoint_problem(folder: Path) -> Optional[str]:
    """Why ``folder`` cannot be resumed from (a file named), or None when every file reads: the state
    JSON parses and holds a step, every other JSON parses, every safetensors file's header and data
    length are whole (a truncated or overwritten file fails here, not halfway through loading)."""
    from safetensors import safe_open

    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        try:
            if path.suffix == ".json":
                content = json.loads(path.read_text())
                if path.name == STATE_FILE and "step" not in content:
                    return f"{path}: no step"
            elif path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    for key in handle.keys():
                        handle.get_slice(key)
        except Exception as error:  # JSON, UTF-8 and safetensors errors of any kind: a corrupt file
            return f"{path}: {type(error).__name__}: {error}"
    return None


def newest_intact_checkpoint(checkpoint_dir: Path) -> Optional[Path]:
    """The newest finished checkpoint whose files all read (:func:`checkpoint_problem`); corrupt newer
    ones are skipped with a warning naming the file. None: there is none."""
    for _, path in reversed(list_checkpoints(checkpoint_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        warnings.warn(f"--resume latest: skipping corrupt checkpoint {path} ({problem})")
    return None


def remove_stale_temporaries(folder: Path) -> None:
    """Clean up after a process killed inside :func:`~diffusers_mv3d.io_utils.atomic_write_folder`: its ``.tmp-NAME-PID`` folder is
    deleted; its ``.old-NAME-PID`` folder (the previous ``NAME``) is renamed back when ``NAME`` is
    missing (killed between the two renames), else deleted. Folders of live processes are left alone."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = re.match(r"^\.(tmp|old)-(.+)-(\d+)$", path.name)
        if not match or not path.is_dir() or _process_alive(int(match.group(3))):
            continue
        kind, name = match.group(1), match.group(2)
        if kind == "old" and not (folder / name).exists():
            os.replace(path, folder / name)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def prune_checkpoints(checkpoint_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` finished checkpoints (``keep`` 0 keeps all)."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(checkpoint_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def resolve_resume(cfg) -> Optional[Path]:
    """The checkpoint ``--resume`` names (None: a fresh start), after cleaning up what a killed run left
    (:func:`remove_stale_temporaries`). ``"latest"`` skips corrupt checkpoints with a warning
    (:func:`newest_intact_checkpoint`); a named corrupt checkpoint is a ValueError naming the file.

    ``cfg`` has ``resume`` (None, ``"latest"`` or a checkpoint folder) and ``output_dir``.
    """
    output_dir = Path(cfg.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"{flag_name('output_dir')} {cfg.output_dir} is a file, not a folder")
    for folder in (output_dir, output_dir / "checkpoints"):
        remove_stale_temporaries(folder)
    if cfg.resume is None:
        return None
    path = _resume_folder(cfg, output_dir)
    if path is not None:
        trim_log(output_dir / "log.jsonl", int(json.loads((path / STATE_FILE).read_text())["step"]))
    return path


def _resume_folder(cfg, output_dir: Path) -> Optional[Path]:
    if cfg.resume == "latest":
        return newest_intact_checkpoint(output_dir / "checkpoints")
    path = Path(cfg.resume)
    if not (path / STATE_FILE).is_file():
        raise ValueError(f"{flag_name('resume')}: {cfg.resume!r} is not a finished checkpoint (no {STATE_FILE})")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"{flag_name('resume')}: {cfg.resume!r} is corrupt ({problem}); resume from an older "
                         "checkpoint or with --resume latest, which skips corrupt ones")
    return path


SWITCHABLE_ON_INIT = ("occlusion_aware", "occlusion_margin", "view_weight_timescale")
"""Config entries that ``--init-from`` takes from the settings rather than the folder: they change how the
weights are used (the LatentSparseNeuS occlusion test and view weights), not which weights there are,
and switching them is what such a run is for."""

KEPT_ON_INIT = ("mesh_level",)
"""Config entries that ``--init-from`` keeps from the folder whatever the settings: they calibrate how the
folder's weights are meshed (``LatentSparseNeuS.mesh_level``, set at assembly), which no setting gives."""

RESUME_KEEPS = ("seed", "batch_size") + tuple(f"neus_{name}" for name in SWITCHABLE_ON_INIT)
"""Settings a resumed run keeps besides the architecture: the batch stream is a function of (seed, step,
batch size), and the switchable NeuS options decide what the NeuS computes."""


def check_architecture(cfg, checkpoint: Path) -> None:
    """A resumed run keeps the settings that fix the weights' shapes (``cfg.architecture()``) and those
    that fix its batch stream or what its NeuS computes (:data:`RESUME_KEEPS`, checked where the checkpoint
    saved them), so that it continues the run it resumes."""
    state = json.loads((checkpoint / STATE_FILE).read_text())
    saved = {renamed_setting(type(cfg), name, str(checkpoint)): value for name, value in state["architecture"].items()}
    for name, value in cfg.architecture().items():
        if saved.get(name) != value:
            raise ValueError(f"{flag_name(name)} {value!r} differs from the checkpoint's {saved.get(name)!r} "
                             f"({checkpoint}); a resumed run keeps the architecture")
    settings, current = state.get("config", {}), config_to_dict(cfg)
    for name in RESUME_KEEPS:
        if name in settings and name in current and settings[name] != current[name]:
            raise ValueError(f"{flag_name(name)} {current[name]!r} differs from the checkpoint's {settings[name]!r} "
                             f"({checkpoint}); a resumed run keeps it (start a new --output-dir to change it)")


def load_weights_to_continue(folder: str, subfolder: str, expected):
    """The ``subfolder`` model of ``--init-from folder`` (a run's ``model/`` or a pipeline folder), checked
    against ``expected``, the fresh model the settings build: every config entry must agree (so a
    setting that fixes no weight shape cannot silently change), except :data:`SWITCHABLE_ON_INIT`, which
    the model takes from ``expected`` (a note says so), and :data:`KEPT_ON_INIT`, which it keeps from the
    folder; the error names the ones that differ."""
    if not (Path(folder) / subfolder / "config.json").is_file():
        raise ValueError(f"{flag_name('init_from')} {folder!r}: no {subfolder}/ model folder in it (expected a "
                         "run's model/ or a pipeline folder holding it)")
    model = type(expected).from_pretrained(Path(folder) / subfolder)
    differing = sorted(key for key in expected.config if not key.startswith("_") and key not in KEPT_ON_INIT
                       and _as_json(model.config.get(key)) != _as_json(expected.config[key]))
    switched = {key: expected.config[key] for key in differing if key in SWITCHABLE_ON_INIT}
    if switched:
        print(f"{flag_name('init_from')} {folder!r}: {subfolder} switches "
              + ", ".join(f"{key} {model.config.get(key)!r} -> {value!r}" for key, value in switched.items()))
        model.register_to_config(**switched)
        differing = [key for key in differing if key not in switched]
    if differing:
        found = ", ".join(f"{key}={model.config.get(key)!r} (settings: {expected.config[key]!r})" for key in differing)
        raise ValueError(f"{flag_name('init_from')} {folder!r}: its {subfolder} differs from these settings: {found}")
    return model


def _as_json(value):
    """A config value as its config.json gives it back (tuples become lists, also nested)."""
    return json.loads(json.dumps(value))


def trim_log(path: Path, step: int) -> None:
    """Drop the ``log.jsonl`` records of steps after ``step`` (written by a run killed after its last
    checkpoint; the resumed run writes them again), atomically."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if not line.strip() or _record_step(line) <= step]
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(kept))


def _record_step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", -1))
    except (ValueError, AttributeError):  # a line cut by a kill, or not a record: dropped
        return float("inf")


# ----------------------------------------------------------------------------------------------
# Optimizer state and training checkpoints
# ----------------------------------------------------------------------------------------------


def optimizer_state_to_files(optimizer) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """An optimizer's state as (tensors for safetensors keyed ``"<index>.<name>"``, the JSON-able rest
    ``{"param_groups": ..., "state": {"<index>": {non-tensor entries}}}``)."""
    opt_state = optimizer.state_dict()
    tensors, plain_state = {}, {}
    for index, param_state in opt_state["state"].items():
        plain_state[str(index)] = {}
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain_state[str(index)][key] = value
    return tensors, {"param_groups": opt_state["param_groups"], "state": plain_state}


def optimizer_state_from_files(tensors: Dict[str, torch.Tensor], plain: Dict) -> Dict:
    """Inverse of :func:`optimizer_state_to_files`: an ``optimizer.load_state_dict`` argument."""
    state: Dict[int, dict] = {int(i): dict(p) for i, p in plain["state"].items()}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save_training_checkpoint(folder: Path, step: int, models: Dict[str, torch.nn.Module], optimizer, lr_scheduler,
                             cfg, extras: Optional[Callable[[Path], Dict]] = None) -> None:
    """Models (``save_pretrained`` sub-folders), ``extras(folder)``'s files, optimizer (safetensors), and
    schedule, step, settings and ``extras``' returned entries (JSON)."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        for name, model in models.items():
            model.save_pretrained(tmp / name, safe_serialization=True)
        extra_state = extras(tmp) if extras is not None else {}
        tensors, plain = optimizer_state_to_files(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state = {"step": step, "optimizer": plain, "lr_scheduler": lr_scheduler.state_dict(), **extra_state,
                 "architecture": cfg.architecture(), "config": config_to_dict(cfg)}
        # written last: its presence marks a finished checkpoint even without the rename
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))

    atomic_write_folder(folder, write)


def load_training_checkpoint(folder: Path, optimizer, lr_scheduler) -> int:
    """Restore optimizer and schedule from a checkpoint (weights come from its model sub-folders); returns its step."""
    from safetensors.torch import load_file

    state = json.loads((folder / STATE_FILE).read_text())
    optimizer.load_state_dict(optimizer_state_from_files(load_file(str(folder / "optimizer.safetensors")),
                                                         state["optimizer"]))
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    return int(state["step"])


# ----------------------------------------------------------------------------------------------
# Run records
# ----------------------------------------------------------------------------------------------


def weights_sha256(*models: torch.nn.Module) -> str:
    """A hash of the models' parameters and buffers (to check that DDP ranks agree)."""
    digest = hashlib.sha256()
    for model in models:
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def append_log(path: Path, record: Dict) -> None:
    """Append ``record`` to ``log.jsonl`` as one JSON line."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
