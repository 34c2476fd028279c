"""README.md model cards for the folders the trainers write, and the command line that reproduces a run.

A card records what a reader of the folder needs to trust or rerun it: the base model, the data,
the steps trained, the last logged losses and the exact command (every setting that differs from
the trainer's defaults, as flags). YAML front matter makes it a Hub model card.
"""

import dataclasses
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from .config import config_to_dict, flag_name

__all__ = ["command_line", "model_card_text", "push_folder_to_hub", "run_summary", "write_model_card"]


def command_line(program: str, cfg: Any) -> str:
    """``program`` followed by a flag for every field of ``cfg`` that differs from its default.

    Running the returned string gives the same resolved settings as ``cfg`` (no ``--config`` file
    needed), e.g. ``diffusers-mv3d train --max-train-steps 3 --no-push-to-hub``.
    """
    defaults = type(cfg)()
    words = shlex.split(program)
    for f in dataclasses.fields(cfg):
        value, default = getattr(cfg, f.name), getattr(defaults, f.name)
        if value == default:
            continue
        flag = flag_name(f.name)
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (tuple, list)):
            words.append(flag)
            words.extend(str(v) for v in value)
        else:
            words.extend([flag, "none" if value is None else str(value)])
    return shlex.join(words)


def _is_hub_id(name: str) -> bool:
    """A Hub repository id (``owner/name``) rather than a local folder."""
    return not os.path.exists(name) and name.count("/") == 1 and not name.startswith((".", "/", "~"))


def model_card_text(
    title: str,
    description: str,
    base_model: str,
    data: str,
    steps: int,
    losses: Mapping[str, float],
    command: str,
    components: Mapping[str, str],
    settings: Optional[Any] = None,
    tags: Sequence[str] = ("diffusers", "diffusers-mv3d", "tunemv3d", "multiview", "text-to-3d"),
    usage: str = "",
) -> str:
    """The README.md text (YAML front matter + Markdown)."""
    front = ["---", "library_name: diffusers", "tags:"] + [f"- {tag}" for tag in tags]
    if _is_hub_id(base_model):
        front.append(f"base_model: {base_model}")
    front.append("---")
    lines = front + ["", f"# {title}", "", description.strip(), "", "## Contents", ""]
    lines += [f"- `{name}/`: {text}" for name, text in components.items()]
    lines += ["", "## Training", "", f"- Base model: `{base_model}`", f"- Data: `{data}`", f"- Steps: {steps}"]
    if losses:
        lines.append("- Last logged losses: " + ", ".join(f"{k} {v:.4g}" for k, v in losses.items()))
    lines += ["", "Command (every setting that differs from the defaults):", "", "```bash", command, "```"]
    launched = shlex.join([os.path.basename(sys.argv[0])] + sys.argv[1:]) if sys.argv and sys.argv[0] else ""
    if launched:
        lines += ["", "Launched as:", "", "```bash", launched, "```"]
    if usage:
        lines += ["", "## Usage", "", "```python", usage.strip(), "```"]
    if settings is not None:
        import yaml

        lines += ["", "## Settings", "", "```yaml",
                  yaml.safe_dump(config_to_dict(settings), sort_keys=False, width=1000).rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write_model_card(folder: Path, **kwargs) -> Path:
    """Write ``folder/README.md`` from :func:`model_card_text`'s arguments; returns its path."""
    path = Path(folder) / "README.md"
    path.write_text(model_card_text(**kwargs), encoding="utf-8")
    return path


def push_folder_to_hub(folder: Path, repo_id: str, private: bool = False, commit_message: str = "Upload") -> str:
    """Upload a finished output folder (weights + README.md) as ``save_pretrained`` + ``push_to_hub`` do:
    create the model repository if needed, then one commit of the whole folder. Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, repo_type="model")
    return str(getattr(info, "commit_url", info))


def losses_from_log(log_path: Path, keys: Sequence[str]) -> Dict[str, float]:
    """The ``keys`` of the last line of a ``log.jsonl`` (empty when there is none yet)."""
    import json

    if not Path(log_path).is_file():
        return {}
    last = None
    with open(log_path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                last = line
    if last is None:
        return {}
    record = json.loads(last)
    return {k: float(record[k]) for k in keys if k in record}


def run_summary(log_path: Path) -> Dict[str, float]:
    """Steps, wall minutes and CPU hours of a training run from its ``log.jsonl``, summed over the
    sessions it was resumed in (each session's clock starts at 0, so a drop in ``minutes`` starts a new
    one; records without ``minutes``, such as validation scores, are skipped). Figures are as of the
    last logged step (``cpu_hours`` is nan when the trainer does not log ``cpu_seconds``); empty when
    there is no log."""
    import json

    if not Path(log_path).is_file():
        return {}
    sessions, last = [], None
    with open(log_path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line) if line.strip() else {}
            if "minutes" not in record:
                continue
            if last is None or record["minutes"] < last["minutes"]:
                sessions.append(record)
            sessions[-1] = record
            last = record
    if last is None:
        return {}
    rates = sorted(r["samples_per_s"] for r in sessions if "samples_per_s" in r)
    cpu_logged = all("cpu_seconds" in r for r in sessions)
    return {
        "step": int(last["step"]),
        "sessions": len(sessions),
        "wall_minutes": sum(r["minutes"] for r in sessions),
        "cpu_hours": sum(r["cpu_seconds"] for r in sessions) / 3600.0 if cpu_logged else float("nan"),
        "peak_rss_mb": max(r.get("peak_rss_mb", 0.0) for r in sessions),
        "samples_per_s": rates[len(rates) // 2] if rates else float("nan"),
    }
