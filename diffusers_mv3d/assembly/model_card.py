"""The command that assembles a pipeline folder, and the folder's README.md model card
(:mod:`diffusers_mv3d.assembly`).
"""

import argparse
import json
import shlex
from pathlib import Path
from typing import List, Optional

from ..pipelines.pipeline_tunemv3d import TuneMV3DPipeline
from ..hub import model_card_front_matter

ASSEMBLE_SCRIPT = "python scripts/assemble_pipeline.py"


def assemble_command(base: str, out: Optional[str], branch: Optional[str] = None, controlnet: Optional[str] = None,
                     reconstructor: Optional[str] = None, consistency_ratio: float = 0.5,
                     consistency_scale: float = 7.5, neus_render_resolution: Optional[int] = None,
                     seed: int = 0, variant: Optional[str] = None, push_to_hub: Optional[str] = None,
                     private: bool = False, overwrite: bool = False, eta: float = 0.0,
                     guidance_scale: float = 3.0, captioner: Optional[str] = None,
                     reconstructor_mesh_level: Optional[float] = None, program: str = ASSEMBLE_SCRIPT) -> str:
    """The ``assemble_pipeline.py`` command line that makes the same folder."""
    words = shlex.split(program) + ["--base", str(base)]
    for flag, value in (("--branch", branch), ("--controlnet", controlnet), ("--reconstructor", reconstructor),
                        ("--captioner", captioner)):
        if value is not None:
            words += [flag, str(value)]
    if out is not None:
        words += ["--out", str(out)]
    words += ["--consistency-ratio", repr(float(consistency_ratio)), "--consistency-scale", repr(float(consistency_scale))]
    if eta:
        words += ["--eta", repr(float(eta))]
    if guidance_scale != 3.0:
        words += ["--guidance-scale", repr(float(guidance_scale))]
    if neus_render_resolution is not None:
        words += ["--neus-render-resolution", str(int(neus_render_resolution))]
    if reconstructor_mesh_level is not None:
        words += ["--reconstructor-mesh-level", repr(float(reconstructor_mesh_level))]
    if seed != 0:
        words += ["--seed", str(seed)]
    if variant:
        words += ["--variant", variant]
    if push_to_hub:
        words += ["--push-to-hub", push_to_hub]
    if private:
        words.append("--private")
    if overwrite:
        words.append("--overwrite")
    return shlex.join(words)


def _trainer_of(role: str):
    """The command and settings class of the trainer that writes a ``role`` folder."""
    from ..training.commands import FoundationTrainConfig, ReconstructorTrainConfig, TuneMV3DTrainConfig

    return {"base": ("diffusers-mv3d train-foundation", FoundationTrainConfig),
            "branch": ("diffusers-mv3d train", TuneMV3DTrainConfig),
            "reconstructor": ("diffusers-mv3d train-reconstructor", ReconstructorTrainConfig)}[role]


def render_command(data_dir: str) -> Optional[str]:
    """The ``diffusers-mv3d render`` command that wrote a procedural ``--split`` folder (from its
    ``render.json`` and the objects or images it holds), or ``None`` for other folders."""
    folder = Path(data_dir)
    settings = json.loads((folder / "render.json").read_text()) if (folder / "render.json").is_file() else {}
    if not settings.get("split"):
        return None
    metadata = folder / "metadata.jsonl"
    if metadata.is_file():
        count = sum(1 for line in metadata.open(encoding="utf-8") if line.strip())
    else:
        count = sum(1 for child in folder.iterdir() if (child / "cameras.json").is_file())
    words = ["diffusers-mv3d", "render", "--split", settings["split"], "--num-objects", str(count),
             "--resolution", str(settings["resolution"]), "--out", str(data_dir)]
    if settings.get("seed", 0):
        words += ["--seed", str(settings["seed"])]
    return shlex.join(words)


def _hours(value: float) -> str:
    return "-" if value != value else f"{value:.1f} h"  # nan: not logged


def _run_of(folder: Optional[str]) -> Optional[Path]:
    """The trainer's output folder of ``OUTPUT_DIR/model`` or ``OUTPUT_DIR/pipeline`` when it holds the
    run's ``config.yaml`` and ``log.jsonl``, else None."""
    run_dir = Path(folder).parent if folder else None
    if run_dir is None or not (run_dir / "config.yaml").is_file() or not (run_dir / "log.jsonl").is_file():
        return None
    return run_dir


def _training_row(role: str, run_dir: Path):
    """``(settings, command, summary)`` of one run: the command reproduces its steps (``--stop-at-step``)."""
    from ..hub import run_summary
    from ..training.checkpointing import list_checkpoints
    from ..training.config import command_line, config_from_args

    program, config_class = _trainer_of(role)
    cfg = config_from_args(config_class, argparse.Namespace(config=str(run_dir / "config.yaml")))
    summary = run_summary(run_dir / "log.jsonl")
    checkpoints = list_checkpoints(run_dir / "checkpoints")  # the last step, which the log may not reach
    summary["step"] = max([summary.get("step", 0)] + [step for step, _ in checkpoints])
    session_fields = {"resume": None, "max_minutes": 0.0, "stop_at_step": summary["step"]}
    if hasattr(cfg, "num_threads"):
        session_fields["num_threads"] = 0
    for name, value in session_fields.items():
        setattr(cfg, name, value)
    return cfg, command_line(program, cfg), summary


def training_section(sources: dict, machine: str = "") -> List[str]:
    """Model-card lines on how the components given as our trainers' output folders were trained.

    ``sources`` maps ``base`` / ``branch`` / ``reconstructor`` to the folders given; a folder whose
    parent holds the trainer's ``config.yaml`` and ``log.jsonl`` (``OUTPUT_DIR/pipeline`` or
    ``OUTPUT_DIR/model``) gets a row: the command that reproduces its steps (``--stop-at-step``; the
    run may have been stopped and resumed with ``--max-minutes`` any number of times, resuming is
    exact), the data split, steps, wall and CPU time (:func:`run_summary`). A run started
    ``--init-from`` another run's folder follows it as its next stage (rows earliest first); one
    started from a folder without a run log gets a line naming it. Empty without such folders."""
    rows, notes = [], []
    for role in ("base", "branch", "reconstructor"):
        stages, folder, seen = [], sources.get(role), set()
        while (run_dir := _run_of(folder)) is not None and run_dir.resolve() not in seen:
            seen.add(run_dir.resolve())
            stages.insert(0, _training_row(role, run_dir))
            folder = getattr(stages[0][0], "init_from", None)
        if stages and folder and _run_of(folder) is None:
            notes.append(f"The {role} run started from the weights in `{folder}` (`--init-from`); how those "
                         "were trained is not part of this table.")
        for number, (cfg, command, summary) in enumerate(stages, 1):
            label = role if len(stages) == 1 else f"{role}, stage {number} of {len(stages)}"
            rows.append((label, command, cfg.data_dir, summary, cfg.max_train_steps))
    if not rows:
        return []
    renders = sorted({command for command in (render_command(row[2]) for row in rows) if command})
    data = " on the project's own procedural data (`diffusers-mv3d render`, docs/data_format.md)" if renders else ""
    lines = ["## Training", "",
             f"Each component below was trained by the project's own command{data}"
             + (f", on {machine}" if machine else "") + ".", "",
             "| component | data | steps (of the schedule) | wall time | CPU time | samples/s (images or objects) | sessions |",
             "|---|---|---|---|---|---|---|"]
    for label, _, data_dir, summary, total in rows:
        lines.append(f"| {label} | `{data_dir}` | {summary['step']} (of {total}) | {summary['wall_minutes']:.0f} min | "
                     f"{_hours(summary['cpu_hours'])} | {summary['samples_per_s']:.2f} | {summary['sessions']} |")
    lines.append("")
    for note in notes:
        lines += [note, ""]
    lines += ["Commands: the data, then each trainer (every setting that differs from its defaults, which "
              "equal `configs/*-tiny.yaml`):", "", "```bash"]
    lines += renders + [command for _, command, _, _, _ in rows] + ["```", ""]
    return lines


def model_card_text(pipe: TuneMV3DPipeline, base: str, command: str, branch: Optional[str] = None,
                    controlnet: Optional[str] = None, reconstructor: Optional[str] = None,
                    base_scheduler_class: str = "unknown", load_from: str = "DIR", machine: str = "",
                    captioner: Optional[str] = None) -> str:
    """README.md of an assembled pipeline folder: YAML front matter (a Hub model card), what each
    component is and where it came from, what was trained and what is frozen, how to load it, and
    the command that made it."""
    fresh = branch is None and controlnet is None
    latent = pipe.vae is not None
    unet = pipe.unet.config
    space = (f"latent space ({unet.in_channels} x {unet.sample_size} x {unet.sample_size} latents, "
             f"{pipe.image_size} x {pipe.image_size} images)") if latent else \
        f"pixel space ({unet.in_channels} x {unet.sample_size} x {unet.sample_size})"
    scheduler = pipe.scheduler.config
    front = model_card_front_matter(("diffusers", "diffusers-mv3d", "tunemv3d", "multiview", "text-to-3d"), base,
                                    pipeline_tag="text-to-3d")
    branch_source = "a fresh branch started from the base UNet (untrained)" if fresh else \
        f"`{controlnet}`" if controlnet is not None and branch is None else f"`{branch}`"
    rows = [
        ("unet", type(pipe.unet).__name__, "frozen", f"the base, `{base}`"),
        ("text_encoder", type(pipe.text_encoder).__name__, "frozen", f"the base, `{base}`"),
        ("tokenizer", type(pipe.tokenizer).__name__, "-", f"the base, `{base}`"),
    ]
    if latent:
        rows.append(("vae", type(pipe.vae).__name__, "frozen", f"the base, `{base}`"))
    controlnet_status = "fresh: adds exactly zero" if fresh else "trained" if controlnet is None else "given (--controlnet)"
    rows.append(("controlnet", "MultiViewControlNetModel (diffusers_mv3d)", controlnet_status,
                 f"`{controlnet}`" if controlnet is not None else branch_source))
    neus_source = branch_source if branch is not None else "new (untrained)"
    rows.append(("neus", "LatentSparseNeuS (diffusers_mv3d)", "trained" if branch is not None else "fresh", neus_source))
    if pipe.reconstructor is not None:
        rows.append(("reconstructor", "LatentSparseNeuS (diffusers_mv3d)", "trained",
                     f"`{reconstructor}`" if reconstructor is not None else branch_source))
    if pipe.captioner is not None:
        built = pipe.captioner.config.data_dir
        rows.append(("captioner", "RetrievalCaptioner (diffusers_mv3d)", "built, not trained",
                     f"`{captioner}`" + (f", from the view 0 and caption of each object in `{built}`" if built else "")))
    rows.append(("scheduler", "ConsistencyGuidanceScheduler (diffusers_mv3d)", "-",
                 f"DDIM from the base's {base_scheduler_class} config; K = {scheduler.consistency_ratio}, "
                 f"alpha = {scheduler.consistency_scale}, eta = {scheduler.eta}, "
                 f"default classifier-free guidance {scheduler.guidance_scale}"))
    lines = front + [
        "",
        "# TuneMV3D multi-view pipeline",
        "",
        f"A `TuneMV3DPipeline` (diffusers-mv3d; TuneMV3D: a frozen text-to-image UNet tuned by a "
        f"ControlNet-style multi-view branch and a latent SparseNeuS) built on `{base}`, "
        f"denoising in {space}. It generates consistent views of one object from a caption "
        "(text-to-multiview), from one image (image-to-multiview) or from some views (multiview-to-multiview), "
        "and a vertex-coloured mesh with `return_mesh=True`.",
        "",
    ]
    if fresh:
        lines += ["**The branch is fresh (untrained).** Its residuals are exactly zero, so this pipeline samples "
                  "as the frozen base model does, each view on its own. Train the branch with "
                  "`diffusers-mv3d train --pretrained-model <the base>` and assemble again with `--branch`.", ""]
    lines += ["## Components", "", "| component | class | training | from |", "|---|---|---|---|"]
    lines += [f"| `{name}` | {cls} | {status} | {source} |" for name, cls, status, source in rows]
    lines += [
        "",
        "Frozen, unchanged: the base model's UNet, text encoder" + (" and VAE" if latent else "") + ". "
        + ("To be trained" if fresh else "Trained") + " by TuneMV3D: `controlnet` (a copy of the UNet encoder with "
        "the NeuS condition, geometry-aware attention and zero convolutions) and `neus`"
        + (", and `reconstructor` (on clean views)" if pipe.reconstructor is not None else "") + "."
        + (" `captioner` captions a reference image given without a prompt (`diffusers-mv3d generate --image`) with "
           "the caption of the most similar training object, in the colour the package's attribute classifier sees."
           if pipe.captioner is not None else ""),
        "",
        "## Usage",
        "",
        "```python",
        "import torch",
        "from diffusers_mv3d import TuneMV3DPipeline  # pip install diffusers-mv3d",
        "",
        f'pipe = TuneMV3DPipeline.from_pretrained("{load_from}")  # on a GPU: dtype=torch.bfloat16, then .to("cuda")',
        f'out = pipe("a red chair with armrests", num_views=8, num_inference_steps=50, guidance_scale={scheduler.guidance_scale},',
        f"           consistency_ratio={scheduler.consistency_ratio}, consistency_scale={scheduler.consistency_scale},",
        "           generator=torch.manual_seed(0), return_mesh=True)",
        'out.images[0].save("view0.png"); out.mesh.export("object.glb")',
        "```",
        "",
        "Without importing the package first: `DiffusionPipeline.from_pretrained(path, "
        "custom_pipeline=diffusers_mv3d.pipelines.CUSTOM_PIPELINE, trust_remote_code=True)`.",
        "",
    ]
    lines += training_section({"base": base, "branch": branch, "reconstructor": reconstructor}, machine)
    lines += [
        "## How it was made",
        "",
        "```bash",
    ]
    if pipe.captioner is not None and pipe.captioner.config.data_dir and captioner is not None:
        into_pipeline = (Path(captioner) / "captioner").is_dir()  # taken from a pipeline folder's captioner/
        lines.append(shlex.join(["diffusers-mv3d", "build-captioner", "--data", pipe.captioner.config.data_dir,
                                 "--pipeline" if into_pipeline else "--out", captioner]))
    lines += [
        command,
        "```",
    ]
    return "\n".join(lines) + "\n"
