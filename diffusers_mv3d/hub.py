"""Folders for the Hub: written whole, with a README.md model card, and uploaded as one commit.

Every folder the project publishes (a trainer's ``model/`` or ``pipeline/``, an assembled pipeline)
goes through here: :func:`write_pipeline_folder` saves a diffusers pipeline atomically with a
tokenizer both transformers 4 and 5 load, :func:`write_model_folder` a trainer's models,
:func:`model_card_front_matter` starts a card, :func:`model_card_text` is a trainer folder's card (base
model, data, steps, last losses, the exact command; :func:`write_model_card` fills these in from the
run), and :func:`push_folder_to_hub` uploads a finished folder.
"""

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from .io_utils import atomic_write_folder
from .training.config import command_line, config_to_dict

__all__ = [
    "losses_from_log",
    "model_card_front_matter",
    "model_card_text",
    "push_folder_to_hub",
    "run_summary",
    "write_model_card",
    "write_model_folder",
    "write_pipeline_folder",
]


def is_hub_repository(name: str) -> bool:
    """A Hub repository id (``owner/name``) rather than a local folder."""
    return not os.path.exists(name) and name.count("/") == 1 and not name.startswith((".", "/", "~"))


def model_card_front_matter(tags: Sequence[str], base_model: str, pipeline_tag: Optional[str] = None) -> list:
    """The YAML front matter lines that make a README.md a Hub model card (``base_model`` only for a Hub repository)."""
    front = ["---", "library_name: diffusers"] + ([f"pipeline_tag: {pipeline_tag}"] if pipeline_tag else [])
    front += ["tags:"] + [f"- {tag}" for tag in tags]
    if is_hub_repository(base_model):
        front.append(f"base_model: {base_model}")
    return front + ["---"]


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
    """The README.md text of a trainer's folder (YAML front matter + Markdown)."""
    lines = model_card_front_matter(tags, base_model) + ["", f"# {title}", "", description.strip(), "", "## Contents", ""]
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


def write_model_card(folder: Path, cfg: Any, program: str, step: int, log_path: Path, loss_keys: Sequence[str],
                     **card) -> Path:
    """Write ``folder/README.md``, the card of a trainer's folder at ``step``: :func:`model_card_text` with
    the run's data (``cfg.data_dir``), the ``loss_keys`` of the last ``log_path`` record, the command
    (``program`` and the settings that differ from the defaults) and the settings; ``card`` holds the
    other arguments (title, description, base_model, components, usage, tags). Returns its path."""
    path = Path(folder) / "README.md"
    text = model_card_text(data=cfg.data_dir, steps=step, losses=losses_from_log(log_path, loss_keys),
                           command=command_line(program, cfg), settings=cfg, **card)
    path.write_text(text, encoding="utf-8")
    return path


def write_model_folder(final: Path, models: Mapping[str, Any], cfg: Any, program: str, step: int, log_path: Path,
                       loss_keys: Sequence[str], **card) -> Path:
    """A trainer's ``model/`` folder, written whole (:func:`~diffusers_mv3d.io_utils.atomic_write_folder`):
    each of ``models`` saved in its own subfolder (``save_pretrained``, safetensors) and the README.md
    of :func:`write_model_card` (the other arguments); returns ``final``."""

    def write(tmp: Path) -> None:
        for name, model in models.items():
            model.save_pretrained(tmp / name, safe_serialization=True)
        write_model_card(tmp, cfg, program, step, log_path, loss_keys, **card)

    return atomic_write_folder(final, write)


def write_pipeline_folder(pipe, final: Path, card: Optional[str] = None) -> Path:
    """``pipe.save_pretrained`` (safetensors) and ``card`` as README.md, atomically
    (:func:`~diffusers_mv3d.io_utils.atomic_write_folder`); returns ``final``.

    transformers 5 records a plain fast tokenizer as ``TokenizersBackend``, a class transformers 4
    lacks; the folder names ``PreTrainedTokenizerFast`` instead, which loads in both.
    """

    def write(tmp: Path) -> None:
        pipe.save_pretrained(tmp, safe_serialization=True)
        _portable_tokenizer_class(tmp)
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")

    return atomic_write_folder(final, write)


def _portable_tokenizer_class(folder: Path) -> None:
    """Rename a ``TokenizersBackend`` tokenizer of a saved pipeline folder to ``PreTrainedTokenizerFast``."""
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    if index.get("tokenizer", [None, None])[1] != "TokenizersBackend":
        return
    index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    config_path = folder / "tokenizer" / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config, indent=2) + "\n")


def push_folder_to_hub(folder: Path, repo_id: str, private: bool = False, commit_message: str = "Upload") -> str:
    """Upload a finished folder (weights + README.md) as ``save_pretrained`` + ``push_to_hub`` do:
    create the model repository if needed, then one commit of the whole folder. Returns the commit URL.

    (``pipe.push_to_hub`` would re-save the pipeline and replace our model card with an empty one.)"""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, repo_type="model")
    return str(getattr(info, "commit_url", info))


def losses_from_log(log_path: Path, keys: Sequence[str]) -> Dict[str, float]:
    """The ``keys`` of the last line of a ``log.jsonl`` (empty when there is none yet)."""
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
