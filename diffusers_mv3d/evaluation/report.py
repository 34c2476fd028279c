"""The report of ``diffusers-mv3d evaluate`` (:mod:`.evaluate`): the machine, the markdown tables and the
JSON results.
"""

import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..io_utils import atomic_write
from .settings import VARIANTS

# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------
def machine_description(device: Optional[torch.device] = None) -> str:
    """``platform, processor, N cores, T torch threads[, GPU name]``."""
    text = (f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads")
    if device is not None and torch.device(device).type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


def _fmt(value: Optional[float], digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def markdown_report(results: Dict[str, Any], command: str) -> str:
    """The results as markdown: the command, machine and date, the variants table, image-to-multiview."""
    cfg = results["config"]
    prompts = results["prompts"]
    num_in = sum(p["in_split"] for p in prompts)
    size = results["model"]["image_size"]
    lines = [
        f"## Multi-view quality ({cfg['views']} views, {size}x{size}, {cfg['steps']} DDIM steps, CFG {cfg['guidance_scale']:g})",
        "",
        f"`{command}` on {results['machine']}, {results['date']}.",
        "",
        f"Model `{cfg['model']}`" + (" (fresh branch: adds zero, samples as the foundation)" if results["model"]["fresh_branch"] else "")
        + f"; classifier: {results['classifier']}. {len(prompts)} prompts ({num_in} in a 3D split, "
        f"{len(prompts) - num_in} only in foundation2d) x seeds {' '.join(map(str, results['seeds']))}; "
        f"VH-IoU and photo-consistency at {cfg['hull_resolution']}^3, reconstruction PSNR holds out views "
        f"{' '.join(map(str, cfg['held_out']))} ({cfg['recon_steps']} fitting steps).",
        "",
        "| variant | settings | VH-IoU | coverage | photo dB | recon dB | category acc in / out | colour acc in / out | s / object |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, summary in results["variants"].items():
        total, inside, outside = summary["all"], summary["in_split"], summary["out_of_split"]
        lines.append(
            f"| {variant} | {results['settings'][variant]} | {_fmt(total['vh_iou'], 3)} | {_fmt(total['coverage'], 2)} | "
            f"{_fmt(total['photo_psnr'], 1)} | {_fmt(total['recon_psnr'], 1)} | "
            f"{_fmt(inside['category_accuracy'], 2)} / {_fmt(outside['category_accuracy'], 2)} | "
            f"{_fmt(inside['colour_accuracy'], 2)} / {_fmt(outside['colour_accuracy'], 2)} | {_fmt(total['seconds'], 2)} |"
        )
    lines += [
        "",
        "Consistency in / out of the 3D splits (VH-IoU, recon dB):",
        "",
        "| variant | VH-IoU in | VH-IoU out | recon dB in | recon dB out |",
        "|---|---|---|---|---|",
    ]
    for variant, summary in results["variants"].items():
        inside, outside = summary["in_split"], summary["out_of_split"]
        lines.append(f"| {variant} | {_fmt(inside['vh_iou'], 3)} | {_fmt(outside['vh_iou'], 3)} | "
                     f"{_fmt(inside['recon_psnr'], 1)} | {_fmt(outside['recon_psnr'], 1)} |")
    lines += ["", "Variants: " + "; ".join(f"`{v}`: {VARIANTS[v]}" for v in results["variants"]) + ". "
              "Coverage is the mean fraction of foreground pixels (near 1: no background, VH-IoU then trivially "
              "high). Accuracies are the classifier's on every view against the prompt's labels; the "
              "ground-truth row is its ceiling. References are rendered, not timed."]
    i2mv = results.get("image_to_multiview")
    if i2mv:
        mean = i2mv["mean"]
        lines += [
            "",
            f"### Image-to-multiview ({len(i2mv['objects'])} held-out eval3d objects{_unseen(cfg)}, view 0 given, "
            f"views 1-{cfg['views'] - 1} scored)",
            "",
            "| method | PSNR dB | SSIM | Chamfer-L1 | volume IoU | s / object |",
            "|---|---|---|---|---|---|",
            f"| tunemv3d, {_i2mv_prompt(cfg, i2mv)} | {_fmt(mean['psnr'], 2)} | {_fmt(mean['ssim'], 3)} | {_fmt(mean['chamfer_l1'], 4)} | "
            f"{_fmt(mean['volume_iou'], 3)} | {_fmt(mean['seconds'], 2)} |",
            f"| reference view copied | {_fmt(mean['copied_psnr'], 2)} | {_fmt(mean['copied_ssim'], 3)} | - | - | - |",
            f"| renders meshed (ground truth) | - | - | {_fmt(mean.get('renders_chamfer_l1'), 4)} | "
            f"{_fmt(mean.get('renders_volume_iou'), 3)} | - |",
            f"| another object's renders meshed (negative control) | - | - | {_fmt(mean.get('control_chamfer_l1'), 4)} | "
            f"{_fmt(mean.get('control_volume_iou'), 3)} | - |",
            "",
            f"Meshes: marching cubes at {cfg['mesh_resolution']}^3 of the SDF carved to the views' silhouettes "
            f"(the pipeline's meshing); Chamfer-L1 on {cfg['chamfer_points']} surface "
            f"samples a mesh (world units, the object fits a sphere of radius 0.9); volume IoU at "
            f"{cfg['mesh_iou_resolution']}^3 in [-1, 1]^3; {i2mv['meshes_failed']} of {len(i2mv['objects'])} meshes failed "
            "(no surface). Ground truth: the same object's renders at the same cameras meshed by the same "
            "reconstructor (its ceiling); negative control: the next object's renders meshed.",
        ]
    return "\n".join(lines) + "\n"


def _unseen(cfg: Dict[str, Any]) -> str:
    """Which training renders the image-to-multiview objects differ from (older results: none checked)."""
    seen = cfg.get("seen_objects3d", 0)
    return f" unlike the first {seen} objects3d objects" if seen else ""


def _i2mv_prompt(cfg: Dict[str, Any], i2mv: Dict[str, Any]) -> str:
    """What image-to-multiview was given besides the image (older results lack the auto-caption keys)."""
    if cfg.get("image_to_multiview_caption"):
        return "image + caption"
    if cfg.get("image_to_multiview_auto_caption"):
        return f"image + its caption by {i2mv.get('auto_captioner', 'the attribute classifier')}"
    return "image alone"


def _plain(value: Any) -> Any:
    """NaN -> None (strict JSON), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_results(results: Dict[str, Any], markdown_path: str, json_path: str, command: str) -> str:
    """Write the markdown report and the JSON results (atomically); return the markdown."""
    text = markdown_report(results, command)
    payload = json.dumps(_plain(dict(results, command=command)), indent=1)
    atomic_write(markdown_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(payload, encoding="utf-8"))
    return text


def update_model_card(readme_path: str, report: str) -> None:
    """Put ``report`` (:func:`markdown_report`) into a pipeline folder's README.md model card as its
    ``## Quality`` section (headings one level down), replacing the section a previous run wrote; a
    new section goes before ``## How it was made`` (the card of ``scripts/assemble_pipeline.py``),
    else at the end. Written atomically."""
    path = Path(readme_path)
    if not path.is_file():
        raise ValueError(f"--model-card: no model card at {str(path)!r}")
    body = "\n".join("#" + line if line.startswith("#") else line for line in report.rstrip().splitlines())
    section = ["## Quality", "", body, ""]
    lines = path.read_text(encoding="utf-8").rstrip("\n").splitlines()
    if "## Quality" in lines:
        start = lines.index("## Quality")
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    else:
        start = end = lines.index("## How it was made") if "## How it was made" in lines else len(lines)
    text = "\n".join(lines[:start] + section + lines[end:]) + "\n"
    atomic_write(str(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
