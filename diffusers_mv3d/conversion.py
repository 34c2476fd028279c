"""Conversion: assemble a TuneMV3D pipeline from any diffusers text-to-image pipeline, and start the
multi-view branch from an existing diffusers ControlNet.

The two scripts under ``conversion/`` are thin command lines over this module:

``conversion/assemble_pipeline.py`` -> :func:`assemble_pipeline`
    The base (a diffusers Stable Diffusion 1.x / 2.x or DeepFloyd-IF stage I pipeline, a local folder
    or a Hub id, or our own ``train-foundation`` folder) gives the frozen ``unet``, ``text_encoder``,
    ``tokenizer``, ``vae`` (when present) and the noise schedule. The branch (``controlnet`` +
    ``neus``) comes from a trained folder (``diffusers-mv3d train``'s ``model/``) or starts fresh from
    the UNet exactly as the trainer starts it (:class:`FreshBranchConfig`): a fresh branch adds
    exactly zero, so the pipeline then samples as the frozen base model does, view by view. The
    inference scheduler is ``DDIMScheduler.from_config(base scheduler config)`` inside
    :class:`ConsistencyGuidanceScheduler`. The result is a ``TuneMV3DPipeline`` folder
    (``save_pretrained``, safetensors) with a README.md model card (:func:`model_card_text`).

``conversion/convert_controlnet.py`` -> :func:`convert_controlnet`
    A :class:`MultiViewControlNetModel` whose inner ``encoder`` takes every tensor of a diffusers
    ``ControlNetModel`` checkpoint whose name and shape match; the rest is initialised (geometry-aware
    attention with a zero output; the conditioning embedding, re-initialised with a zero output conv
    when the source's condition differs from the NeuS render). :class:`ControlNetConversionReport`
    lists copied / initialised / skipped tensors.

Example::

    from diffusers_mv3d.conversion import assemble_pipeline, convert_controlnet

    pipe = assemble_pipeline("runs/foundation-tiny/pipeline", branch="runs/tunemv3d-tiny/model",
                             reconstructor="runs/reconstructor-tiny/model", out="pipelines/tunemv3d-tiny")
    controlnet, report = convert_controlnet("path/to/sd-controlnet-canny", unet="path/to/sd-1.5",
                                            out="runs/controlnet-from-canny")
    print(report.summary())
"""

import json
import os
import shlex
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .models.latent_sparse_neus import LatentSparseNeuS
from .models.multiview_controlnet import MultiViewControlNetModel
from .pipelines.pipeline_tunemv3d import TuneMV3DPipeline
from .schedulers.consistency_guidance import ConsistencyGuidanceScheduler
from .training.train_tunemv3d import TuneMV3DTrainConfig, build_branch_from_unet, build_neus

__all__ = [
    "ASSEMBLE_SCRIPT",
    "BaseComponents",
    "CONVERT_SCRIPT",
    "ControlNetConversionReport",
    "FreshBranchConfig",
    "assemble_command",
    "assemble_pipeline",
    "check_branch_fits_unet",
    "check_controlnet_fits_unet",
    "convert_controlnet",
    "fresh_branch",
    "inference_scheduler",
    "load_base",
    "load_branch",
    "load_reconstructor",
    "model_card_text",
    "save_pipeline_folder",
]

ASSEMBLE_SCRIPT = "python conversion/assemble_pipeline.py"
CONVERT_SCRIPT = "python conversion/convert_controlnet.py"

PathLike = Union[str, os.PathLike]


def _is_hub_id(name: str) -> bool:
    """``owner/name`` (or a bare ``name``) that is not a local path: what ``from_pretrained`` downloads."""
    return not os.path.exists(name) and name.count("/") <= 1 and not name.startswith((".", "/", "~")) and bool(name)


def _loading_error(flag: str, value: str, what: str, error: Exception) -> ValueError:
    """One message naming the flag and the value, with the loader's own error (or "no such folder")."""
    if not _is_hub_id(value) and not os.path.exists(value):
        return ValueError(f"{flag} {value!r} could not be loaded as {what} (no such folder)")
    hint = ""
    if _is_hub_id(value):
        hint = ("; as a Hub id it needs network access or the files in the Hugging Face cache (HF_HOME): "
                "without network, download it elsewhere (`hf download " + value + " --local-dir DIR`) and pass DIR")
    return ValueError(f"{flag} {value!r} could not be loaded as {what} ({type(error).__name__}: {error}){hint}")


# ----------------------------------------------------------------------------------------------
# The frozen base
# ----------------------------------------------------------------------------------------------


@dataclass
class BaseComponents:
    """The frozen parts of a text-to-image pipeline (eval mode).

    Attributes:
        vae: ``AutoencoderKL`` of a latent model (Stable Diffusion), ``None`` for pixels (IF, ours).
        scheduler_config: the base scheduler's config (``scheduler_config.json``, ``_class_name`` kept).
        source: the folder or Hub id they came from.
    """

    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: Dict[str, Any]
    vae: Optional[Any]
    source: str

    @property
    def scheduler_class(self) -> str:
        return str(self.scheduler_config.get("_class_name", "unknown"))


def _read_model_index(base: str) -> Dict[str, Any]:
    """``model_index.json`` of a pipeline folder or Hub id (``{}`` for a local folder without one)."""
    from diffusers import DiffusionPipeline

    if os.path.isdir(base) and not os.path.isfile(os.path.join(base, "model_index.json")):
        return {}
    return dict(DiffusionPipeline.load_config(base))


def _has_component(base: str, index: Dict[str, Any], name: str) -> bool:
    if os.path.isdir(base):
        return os.path.isdir(os.path.join(base, name))
    entry = index.get(name)
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] is not None


def _transformers_class(base: str, index: Dict[str, Any], name: str, fallback: str):
    """The transformers class ``model_index.json`` names for ``name`` (IF: ``T5EncoderModel``), else
    the sub-folder config's ``architectures`` (models), else ``fallback`` (an Auto class)."""
    import transformers

    entry = index.get(name)
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] == "transformers":
        found = getattr(transformers, str(entry[1]), None)
        if found is not None:
            return found
    if name == "text_encoder":
        architectures = getattr(transformers.AutoConfig.from_pretrained(base, subfolder=name), "architectures", None)
        if architectures and getattr(transformers, architectures[0], None) is not None:
            return getattr(transformers, architectures[0])
    return getattr(transformers, fallback)


def check_unet_supported(unet, flag: str, value: str) -> None:
    """A text-to-image UNet the branch can follow: noise in = noise out (or IF's learned variance), no
    class / SDXL-style additional embeddings, no extra input channels (inpainting, IF stage II)."""
    config = unet.config
    problems = []
    if config.out_channels not in (config.in_channels, 2 * config.in_channels):
        problems.append(f"in_channels={config.in_channels} but out_channels={config.out_channels} "
                        "(inpainting / super-resolution UNets take extra input channels)")
    if config.class_embed_type is not None or getattr(config, "num_class_embeds", None):
        problems.append(f"class_embed_type={config.class_embed_type!r} (IF stage II / upscalers)")
    if config.addition_embed_type not in (None, "text"):
        problems.append(f"addition_embed_type={config.addition_embed_type!r} (SDXL-style added conditions)")
    if problems:
        raise ValueError(f"{flag} {value!r}: its UNet is not a plain text-to-image UNet TuneMV3D can tune: "
                         + "; ".join(problems))


def load_base(base: PathLike, variant: Optional[str] = None) -> BaseComponents:
    """Load the frozen parts of a diffusers text-to-image pipeline, one component at a time.

    ``base`` is a folder (Stable Diffusion, IF stage I, or ``train-foundation``'s folder with or
    without ``model_index.json``) or a Hub id: each component is ``from_pretrained(base,
    subfolder=...)``, so a Hub id needs nothing special and fails, offline, with diffusers' own error,
    wrapped in a ``ValueError`` that names ``--base``. Safety checkers, feature extractors and
    watermarkers are not loaded.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    base = str(base)
    if not base:
        raise ValueError("--base must name a pipeline folder or a Hub id")
    what = "a diffusers text-to-image pipeline (unet/, text_encoder/, tokenizer/, scheduler/ [+ vae/])"
    try:
        index = _read_model_index(base)
        required = ("unet", "text_encoder", "tokenizer", "scheduler")
        missing = [name for name in required if not _has_component(base, index, name)]
        if missing:
            raise FileNotFoundError(f"missing {', '.join(m + '/' for m in missing)}")
        kwargs = {"variant": variant} if variant else {}
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", **kwargs)
        encoder_class = _transformers_class(base, index, "text_encoder", "AutoModel")
        text_encoder = encoder_class.from_pretrained(base, subfolder="text_encoder", **kwargs)
        tokenizer_class = _transformers_class(base, index, "tokenizer", "AutoTokenizer")
        tokenizer = tokenizer_class.from_pretrained(base, subfolder="tokenizer")
        scheduler_config = dict(DDIMScheduler.load_config(base, subfolder="scheduler"))
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae", **kwargs) if _has_component(base, index, "vae") else None
    except Exception as error:  # diffusers / transformers / hub errors: one message naming the flag
        raise _loading_error("--base", base, what, error) from error
    check_unet_supported(unet, "--base", base)
    for model in (unet, text_encoder, vae):
        if model is not None:
            model.requires_grad_(False)
            model.eval()
    return BaseComponents(unet, text_encoder, tokenizer, scheduler_config, vae, base)


def inference_scheduler(base_scheduler_config: Dict[str, Any], latent: bool, consistency_ratio: float = 0.5,
                        consistency_scale: float = 7.5) -> ConsistencyGuidanceScheduler:
    """``DDIMScheduler.from_config(base scheduler config)`` inside :class:`ConsistencyGuidanceScheduler`.

    The base's betas, ``num_train_timesteps``, ``prediction_type``, spacing, clipping and
    thresholding carry over. A latent model whose config does not say ``clip_sample`` gets
    ``clip_sample=False`` (DDIM's default clips x0 to [-1, 1], which is for pixels; PNDM configs lack it).
    """
    from diffusers import DDIMScheduler

    config = {k: v for k, v in base_scheduler_config.items() if not k.startswith("_")}
    if latent and "clip_sample" not in config:
        config["clip_sample"] = False
    ddim = DDIMScheduler.from_config(config)
    return ConsistencyGuidanceScheduler.wrap(ddim, consistency_ratio=consistency_ratio, consistency_scale=consistency_scale)


# ----------------------------------------------------------------------------------------------
# The branch: trained (loaded) or fresh (from the UNet, as `diffusers-mv3d train` starts it)
# ----------------------------------------------------------------------------------------------


FreshBranchConfig = TuneMV3DTrainConfig
"""Architecture of a fresh branch: the settings of ``diffusers-mv3d train`` themselves
(``TuneMV3DTrainConfig``; only ``seed``, ``geometry_attention_*``, ``conditioning_channels`` and
``neus_*`` are read), so a fresh pipeline's branch is the one the trainer starts from with the same ``seed``."""


def fresh_neus(in_channels: int, latent: bool, cfg: FreshBranchConfig) -> LatentSparseNeuS:
    """A new LatentSparseNeuS in the diffusion space (background 1.0 = white pixels, 0.0 for latents)."""
    return build_neus(in_channels, latent, cfg)


def fresh_branch(unet, latent: bool, cfg: Optional[FreshBranchConfig] = None
                 ) -> Tuple[MultiViewControlNetModel, LatentSparseNeuS]:
    """``MultiViewControlNetModel.from_unet`` + a new ``LatentSparseNeuS`` as the trainer builds them
    (:func:`~diffusers_mv3d.training.train_tunemv3d.build_branch_from_unet`), seeded by ``cfg.seed``
    (the global RNG is left as it was). The branch's residuals are exactly zero."""
    cfg = cfg or FreshBranchConfig()
    with torch.random.fork_rng(devices=[]):
        controlnet, neus = build_branch_from_unet(unet, int(unet.config.in_channels), latent, cfg)
    return controlnet.eval(), neus.eval()


def _load_model(cls, path: str, subfolder: Optional[str], flag: str, what: str):
    try:
        if subfolder is None:
            return cls.from_pretrained(path)
        return cls.from_pretrained(path, subfolder=subfolder)
    except Exception as error:
        raise _loading_error(flag, path, what, error) from error


def load_branch(branch: PathLike) -> Tuple[MultiViewControlNetModel, LatentSparseNeuS, Optional[LatentSparseNeuS]]:
    """``controlnet/``, ``neus/`` and, when there, ``reconstructor/`` of a trained branch folder
    (``diffusers-mv3d train`` writes it as ``OUTPUT_DIR/model``) or Hub id."""
    branch = str(branch)
    if os.path.isdir(branch):
        missing = [name for name in ("controlnet", "neus") if not os.path.isdir(os.path.join(branch, name))]
        if missing:
            trainer_output = os.path.isdir(os.path.join(branch, "model"))
            hint = " (diffusers-mv3d train writes it as OUTPUT_DIR/model)" if trainer_output else ""
            raise ValueError(f"--branch {branch!r} is not a trained branch folder: missing "
                             f"{', '.join(m + '/' for m in missing)}{hint}")
    controlnet = _load_model(MultiViewControlNetModel, branch, "controlnet", "--branch", "a branch's controlnet/")
    neus = _load_model(LatentSparseNeuS, branch, "neus", "--branch", "a branch's neus/")
    reconstructor = None
    if os.path.isdir(os.path.join(branch, "reconstructor")):
        reconstructor = _load_model(LatentSparseNeuS, branch, "reconstructor", "--branch", "a branch's reconstructor/")
    return controlnet.eval(), neus.eval(), None if reconstructor is None else reconstructor.eval()


def load_reconstructor(path: PathLike) -> LatentSparseNeuS:
    """A reconstructor: a ``LatentSparseNeuS`` folder, or a folder with ``reconstructor/`` in it
    (``diffusers-mv3d train-reconstructor``'s ``OUTPUT_DIR/model``), or a Hub id of either."""
    path, what = str(path), "a LatentSparseNeuS reconstructor"
    if os.path.isdir(os.path.join(path, "reconstructor")):
        model = _load_model(LatentSparseNeuS, path, "reconstructor", "--reconstructor", what)
    elif os.path.isdir(path) or not _is_hub_id(path):
        model = _load_model(LatentSparseNeuS, path, None, "--reconstructor", what)
    else:  # a Hub id: train-reconstructor's model/ layout, else the model itself
        try:
            model = LatentSparseNeuS.from_pretrained(path, subfolder="reconstructor")
        except Exception:
            model = _load_model(LatentSparseNeuS, path, None, "--reconstructor", what)
    if model.config.in_channels != 3:
        raise ValueError(f"--reconstructor {path!r} takes in_channels={model.config.in_channels}; the reconstructor "
                         "reads the final views as RGB pixels (in_channels=3)")
    return model.eval()


_ENCODER_KEYS = ("in_channels", "block_out_channels", "down_block_types", "layers_per_block", "cross_attention_dim")


def check_controlnet_fits_unet(controlnet_config, unet, flag: str, value: str, unet_flag: str, unet_value: str,
                               controlnet_state: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """The branch's encoder is a copy of the UNet's: same in_channels, blocks and text width, and
    (given ``controlnet_state``) every shared encoder tensor has the UNet's shape."""

    def as_list(value):
        return list(value) if isinstance(value, (list, tuple)) else value

    different = [f"{key}={as_list(controlnet_config.get(key))} vs {as_list(getattr(unet.config, key))}"
                 for key in _ENCODER_KEYS if as_list(controlnet_config.get(key)) != as_list(getattr(unet.config, key))]
    if controlnet_state is not None and not different:
        unet_state = unet.state_dict()
        shared = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.", "encoder_hid_proj.", "add_embedding.")
        for name, tensor in controlnet_state.items():
            if name.startswith(shared) and name in unet_state and unet_state[name].shape != tensor.shape:
                different.append(f"{name} {tuple(tensor.shape)} vs {tuple(unet_state[name].shape)}")
            elif name.startswith(shared) and name not in unet_state:
                different.append(f"{name} is not in the UNet")
    if different:
        raise ValueError(f"{flag} {value!r} does not fit {unet_flag} {unet_value!r} (controlnet vs unet): "
                         + "; ".join(different[:8]) + (f"; ... {len(different) - 8} more" if len(different) > 8 else ""))


def check_branch_fits_unet(controlnet: MultiViewControlNetModel, neus: LatentSparseNeuS, unet, branch_flag: str,
                           branch: str, base: str) -> None:
    """Raise a ``ValueError`` naming both flags when a loaded branch was not made for this UNet."""
    check_controlnet_fits_unet(dict(controlnet.encoder.config), unet, branch_flag, branch, "--base", base)
    if neus.config.in_channels != unet.config.in_channels:
        raise ValueError(f"{branch_flag} {branch!r} does not fit --base {base!r}: neus in_channels="
                         f"{neus.config.in_channels} but the UNet denoises {unet.config.in_channels} channels")


# ----------------------------------------------------------------------------------------------
# The pipeline folder and its model card
# ----------------------------------------------------------------------------------------------


def assemble_command(base: str, out: Optional[str], branch: Optional[str] = None, controlnet: Optional[str] = None,
                     reconstructor: Optional[str] = None, consistency_ratio: float = 0.5,
                     consistency_scale: float = 7.5, neus_render_resolution: Optional[int] = None,
                     seed: int = 0, variant: Optional[str] = None, push_to_hub: Optional[str] = None,
                     private: bool = False, overwrite: bool = False, program: str = ASSEMBLE_SCRIPT) -> str:
    """The ``assemble_pipeline.py`` command line that makes the same folder."""
    words = shlex.split(program) + ["--base", str(base)]
    for flag, value in (("--branch", branch), ("--controlnet", controlnet), ("--reconstructor", reconstructor)):
        if value is not None:
            words += [flag, str(value)]
    if out is not None:
        words += ["--out", str(out)]
    words += ["--consistency-ratio", repr(float(consistency_ratio)), "--consistency-scale", repr(float(consistency_scale))]
    if neus_render_resolution is not None:
        words += ["--neus-render-resolution", str(int(neus_render_resolution))]
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


def model_card_text(pipe: TuneMV3DPipeline, base: str, command: str, branch: Optional[str] = None,
                    controlnet: Optional[str] = None, reconstructor: Optional[str] = None,
                    base_scheduler_class: str = "unknown", load_from: str = "DIR") -> str:
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
    front = ["---", "library_name: diffusers", "pipeline_tag: text-to-3d", "tags:",
             "- diffusers", "- diffusers-mv3d", "- tunemv3d", "- multiview", "- text-to-3d"]
    if _is_hub_id(base):
        front.append(f"base_model: {base}")
    front.append("---")
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
    rows.append(("scheduler", "ConsistencyGuidanceScheduler (diffusers_mv3d)", "-",
                 f"DDIM from the base's {base_scheduler_class} config; K = {scheduler.consistency_ratio}, "
                 f"alpha = {scheduler.consistency_scale}"))
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
        + (", and `reconstructor` (on clean views)" if pipe.reconstructor is not None else "") + ".",
        "",
        "## Usage",
        "",
        "```python",
        "import torch",
        "from diffusers_mv3d import TuneMV3DPipeline  # pip install diffusers-mv3d",
        "",
        f'pipe = TuneMV3DPipeline.from_pretrained("{load_from}")  # on a GPU: dtype=torch.bfloat16, then .to("cuda")',
        'out = pipe("a red chair with armrests", num_views=8, num_inference_steps=50, guidance_scale=7.5,',
        f"           consistency_ratio={scheduler.consistency_ratio}, consistency_scale={scheduler.consistency_scale},",
        "           generator=torch.manual_seed(0), return_mesh=True)",
        'out.images[0].save("view0.png"); out.mesh.export("object.glb")',
        "```",
        "",
        "Without importing the package first: `DiffusionPipeline.from_pretrained(path, "
        "custom_pipeline=diffusers_mv3d.pipelines.CUSTOM_PIPELINE, trust_remote_code=True)`.",
        "",
        "## How it was made",
        "",
        "```bash",
        command,
        "```",
    ]
    return "\n".join(lines) + "\n"


def _rename_tokenizer_class(folder: Path) -> None:
    """transformers 5 records a plain fast tokenizer as ``TokenizersBackend``, a class transformers 4
    lacks; ``PreTrainedTokenizerFast`` loads in both (as train-foundation writes it)."""
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


def save_pipeline_folder(pipe: TuneMV3DPipeline, out: PathLike, card: str, overwrite: bool = False) -> Path:
    """``save_pretrained`` (safetensors) + README.md into a temporary sibling, then renamed to ``out``:
    a reader never sees half a folder. An existing non-empty ``out`` needs ``overwrite``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ValueError(f"--out {str(out)!r} exists and is not empty; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        _rename_tokenizer_class(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def push_folder_to_hub(folder: PathLike, repo_id: str, private: bool = False) -> str:
    """Upload the written folder (weights + our README.md) as one commit. ``pipe.push_to_hub`` would
    re-save the pipeline and replace the model card with an empty one, so the folder is uploaded."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                             commit_message="Upload TuneMV3DPipeline (conversion/assemble_pipeline.py)")
    return str(getattr(info, "commit_url", info))


def assemble_pipeline(
    base: PathLike,
    branch: Optional[PathLike] = None,
    reconstructor: Optional[PathLike] = None,
    out: Optional[PathLike] = None,
    *,
    controlnet: Optional[PathLike] = None,
    consistency_ratio: float = 0.5,
    consistency_scale: float = 7.5,
    neus_render_resolution: Optional[int] = None,
    seed: int = 0,
    variant: Optional[str] = None,
    push_to_hub: Optional[str] = None,
    private: bool = False,
    overwrite: bool = False,
    command: Optional[str] = None,
) -> TuneMV3DPipeline:
    """Build a :class:`TuneMV3DPipeline` from a frozen text-to-image base and a branch; save it.

    Args:
        base: folder or Hub id of a diffusers SD 1.x / 2.x or IF stage I pipeline, or a
            ``train-foundation`` folder (``unet/ text_encoder/ tokenizer/ scheduler/``, no ``vae/``).
        branch: a trained branch folder (``controlnet/``, ``neus/``, optionally ``reconstructor/``;
            ``diffusers-mv3d train``'s ``OUTPUT_DIR/model``) or Hub id; ``None`` starts a fresh branch
            (:class:`FreshBranchConfig`, residuals exactly zero).
        reconstructor: a reconstructor folder (replaces the branch's ``reconstructor/``).
        out: where the pipeline folder goes (``None``: not saved, unless ``push_to_hub`` needs it).
        controlnet: a ``MultiViewControlNetModel`` folder (e.g. from :func:`convert_controlnet`) used
            instead of the branch's; without ``branch`` the NeuS is fresh.
        consistency_ratio, consistency_scale: K and alpha of consistency guidance (§3.3), saved in
            the scheduler's config.
        neus_render_resolution: side of the NeuS render that conditions the branch (0 = the
            diffusion-space resolution); ``None`` keeps the branch's (16 for a fresh one).
        seed: seeds a fresh branch (the trainer's ``--seed``).
        variant: weights variant of the base (``"fp16"``) to download.
        push_to_hub: a Hub repository id: the saved folder is uploaded to it.
        private: create that repository private.
        overwrite: replace an existing non-empty ``out``.
        command: the command line recorded in the model card (default: the equivalent
            ``assemble_pipeline.py`` command, :func:`assemble_command`).

    Returns:
        The assembled pipeline (components in eval mode, on the CPU).
    """
    base = str(base)
    branch = None if branch is None else str(branch)
    controlnet_path = None if controlnet is None else str(controlnet)
    reconstructor = None if reconstructor is None else str(reconstructor)
    if neus_render_resolution is not None and neus_render_resolution < 0:
        raise ValueError(f"--neus-render-resolution must be >= 0 (0 = full resolution), got {neus_render_resolution}")
    if out is not None and Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())) and not overwrite:
        raise ValueError(f"--out {str(out)!r} exists and is not empty; pass --overwrite to replace it")

    # 1. the frozen base
    parts = load_base(base, variant=variant)
    latent = parts.vae is not None

    # 2. the branch: trained, converted or fresh
    reconstructor_model = None
    fresh_cfg = FreshBranchConfig(seed=seed)
    if branch is not None:
        controlnet_model, neus, reconstructor_model = load_branch(branch)
        check_branch_fits_unet(controlnet_model, neus, parts.unet, "--branch", branch, base)
    else:
        controlnet_model, neus = fresh_branch(parts.unet, latent, fresh_cfg)
    if controlnet_path is not None:
        controlnet_model = _load_model(MultiViewControlNetModel, controlnet_path, None, "--controlnet",
                                       "a MultiViewControlNetModel").eval()
        check_controlnet_fits_unet(dict(controlnet_model.encoder.config), parts.unet, "--controlnet", controlnet_path,
                                   "--base", base)
    if reconstructor is not None:
        reconstructor_model = load_reconstructor(reconstructor)
    if neus_render_resolution is not None:
        neus.register_to_config(render_resolution=int(neus_render_resolution) or None)

    # 3. the inference scheduler: DDIM from the base's schedule, inside consistency guidance
    scheduler = inference_scheduler(parts.scheduler_config, latent, consistency_ratio, consistency_scale)

    # 4. the pipeline
    pipe = TuneMV3DPipeline(
        unet=parts.unet, controlnet=controlnet_model, neus=neus, scheduler=scheduler,
        text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, vae=parts.vae, reconstructor=reconstructor_model,
    )

    # 5. the folder, its model card, the Hub
    if out is not None or push_to_hub:
        command = command or assemble_command(
            base, None if out is None else str(out), branch, controlnet_path, reconstructor, consistency_ratio,
            consistency_scale, neus_render_resolution, seed, variant, push_to_hub, private, overwrite,
        )
        card = model_card_text(pipe, base, command, branch=branch, controlnet=controlnet_path,
                               reconstructor=reconstructor, base_scheduler_class=parts.scheduler_class,
                               load_from=push_to_hub or (str(out) if out is not None else "DIR"))
        if out is not None:
            folder = save_pipeline_folder(pipe, out, card, overwrite=overwrite)
            if push_to_hub:
                push_folder_to_hub(folder, push_to_hub, private=private)
        else:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                folder = save_pipeline_folder(pipe, Path(tmp) / "pipeline", card)
                push_folder_to_hub(folder, push_to_hub, private=private)
    return pipe


# ----------------------------------------------------------------------------------------------
# A diffusers ControlNetModel -> MultiViewControlNetModel
# ----------------------------------------------------------------------------------------------


@dataclass
class ControlNetConversionReport:
    """What :func:`convert_controlnet` did to each tensor.

    Attributes:
        copied: names in the new model (``encoder.`` + the ControlNet's name) copied exactly.
        initialised: new-model names not copied -> why (geometry attention, re-initialised
            conditioning embedding, zeroed residual convs, no source tensor).
        skipped: source names not used -> why (shape mismatch, no counterpart, re-initialised part).
    """

    copied: List[str] = field(default_factory=list)
    initialised: Dict[str, str] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def summary(self, width: int = 12) -> str:
        """A printable report: counts, then every initialised and skipped tensor with its reason."""
        lines = [f"copied {len(self.copied)} tensors exactly; initialised {len(self.initialised)}; "
                 f"skipped {len(self.skipped)} source tensors"]
        for title, items in (("initialised", self.initialised), ("skipped", self.skipped)):
            if items:
                lines.append(f"{title}:")
                lines += [f"  {name}: {why}" for name, why in items.items()]
        return "\n".join(lines)


def _load_unet(path: PathLike):
    """A UNet folder, or a pipeline folder / Hub id with ``unet/``."""
    from diffusers import UNet2DConditionModel

    path = str(path)
    subfolder = "unet" if os.path.isdir(os.path.join(path, "unet")) else None
    return _load_model(UNet2DConditionModel, path, subfolder, "--unet", "a UNet2DConditionModel (or a pipeline with unet/)")


def convert_controlnet(
    controlnet,
    unet=None,
    out: Optional[PathLike] = None,
    *,
    geometry_attention_levels: Sequence[int] = (1,),
    geometry_attention_heads: int = 1,
    geometry_attention_neighbourhood: int = 3,
    geometry_attention_samples: int = 1,
    conditioning_embedding_out_channels: Sequence[int] = (16,),
    zero_residuals: bool = False,
    seed: int = 0,
) -> Tuple[MultiViewControlNetModel, ControlNetConversionReport]:
    """Start a :class:`MultiViewControlNetModel` from a diffusers ``ControlNetModel`` checkpoint.

    Every source tensor whose name and shape match one of the new model's inner ``encoder`` is copied
    exactly. The rest is initialised: geometry-aware attention (new, zero-initialised output: it starts
    as the identity) and, when the source's condition differs from the NeuS render (its
    ``conditioning_channels`` differ from the UNet's ``in_channels``, e.g. a canny ControlNet's RGB
    edges, or its embedding changes the resolution), the conditioning embedding, re-made with
    ``conditioning_embedding_out_channels`` and a zero output conv.

    Args:
        controlnet: a ``ControlNetModel`` or its folder / Hub id.
        unet: the UNet the branch will tune (a ``UNet2DConditionModel``, its folder, or a pipeline
            folder with ``unet/``): checked for compatibility, and its ``in_channels`` is the
            condition's. ``None``: the ControlNet's own ``in_channels``.
        out: save the model there (``save_pretrained``, safetensors) with ``conversion_report.json``.
        geometry_attention_*: the geometry-aware attention layers (see ``MultiViewControlNetModel``).
        conditioning_embedding_out_channels: channels of a re-initialised conditioning embedding
            (one stage keeps the render's resolution).
        zero_residuals: zero the copied residual convs (``controlnet_down_blocks``,
            ``controlnet_mid_block``) so the branch starts adding exactly zero, as a fresh one.
        seed: seeds the initialised tensors.

    Returns:
        ``(model, report)``.
    """
    from diffusers import ControlNetModel

    source_name = controlnet if isinstance(controlnet, (str, os.PathLike)) else type(controlnet).__name__
    if isinstance(controlnet, (str, os.PathLike)):
        controlnet = _load_model(ControlNetModel, str(controlnet), None, "--controlnet", "a diffusers ControlNetModel")
    source = dict(controlnet.config)
    if source.get("class_embed_type") is not None or source.get("addition_embed_type") not in (None, "text"):
        raise ValueError(f"--controlnet {str(source_name)!r}: class_embed_type={source.get('class_embed_type')!r}, "
                         f"addition_embed_type={source.get('addition_embed_type')!r} (SDXL-style ControlNets) "
                         "are not supported by MultiViewControlNetModel")
    source_state = controlnet.state_dict()
    unet_name = None
    if unet is not None:
        unet_name = str(unet) if isinstance(unet, (str, os.PathLike)) else type(unet).__name__
        if isinstance(unet, (str, os.PathLike)):
            unet = _load_unet(unet)
        check_controlnet_fits_unet(source, unet, "--controlnet", str(source_name), "--unet", unet_name, source_state)
    channels = int(unet.config.in_channels if unet is not None else source["in_channels"])

    # 1. the new model's encoder config: the source's, with the NeuS render as its condition
    encoder_config = {k: v for k, v in source.items() if not k.startswith("_")}
    source_embedding = tuple(source.get("conditioning_embedding_out_channels") or ())
    source_condition = int(source.get("conditioning_channels", 3))
    keep_embedding = source_condition == channels and len(source_embedding) == 1
    embedding_why = None
    if not keep_embedding:
        reason = (f"takes {source_condition}-channel conditions" if source_condition != channels
                  else f"downsamples the condition {2 ** (len(source_embedding) - 1)}x")
        embedding_why = (f"conditioning embedding re-initialised (the source's {reason}; the NeuS render has "
                         f"{channels} channels at the diffusion-space resolution): output conv zero")
        encoder_config["conditioning_channels"] = channels
        encoder_config["conditioning_embedding_out_channels"] = tuple(conditioning_embedding_out_channels)

    # 2. a new model: ControlNet init (zero convs) + geometry attention with a zero output
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MultiViewControlNetModel(
            encoder_config=encoder_config,
            geometry_attention_levels=tuple(geometry_attention_levels),
            geometry_attention_heads=geometry_attention_heads,
            geometry_attention_neighbourhood=geometry_attention_neighbourhood,
            geometry_attention_samples=geometry_attention_samples,
        )

    # 3. copy every tensor whose name and shape match
    report = ControlNetConversionReport()
    target_state = model.state_dict()
    residual_convs = ("controlnet_down_blocks.", "controlnet_mid_block.")
    for name, tensor in source_state.items():
        target = "encoder." + name
        if embedding_why is not None and name.startswith("controlnet_cond_embedding."):
            report.skipped[name] = embedding_why
        elif zero_residuals and name.startswith(residual_convs):
            report.skipped[name] = "residual conv zeroed (--zero-residuals)"
        elif target not in target_state:
            report.skipped[name] = "no counterpart in MultiViewControlNetModel"
        elif target_state[target].shape != tensor.shape:
            report.skipped[name] = f"shape mismatch: source {tuple(tensor.shape)} vs {tuple(target_state[target].shape)}"
        else:
            target_state[target] = tensor.detach().clone().to(target_state[target].dtype)
            report.copied.append(target)
    model.load_state_dict(target_state)
    copied = set(report.copied)
    for name in target_state:
        if name in copied:
            continue
        inner = name[len("encoder."):] if name.startswith("encoder.") else name
        if name.startswith("geometry_attention."):
            why = "geometry-aware attention (new): output projection zero, the layer starts as the identity"
        elif embedding_why is not None and inner.startswith("controlnet_cond_embedding."):
            why = embedding_why
        elif zero_residuals and inner.startswith(residual_convs):
            why = "residual conv zeroed (--zero-residuals)"
        elif inner in source_state:
            why = f"shape mismatch with the source {tuple(source_state[inner].shape)}: default init"
        else:
            why = "not in the source: default init"
        report.initialised[name] = why
    model.eval()

    if out is not None:
        out = Path(out)
        model.save_pretrained(out, safe_serialization=True)
        (out / "conversion_report.json").write_text(json.dumps(
            {"controlnet": str(source_name), "unet": unet_name, **report.to_dict()}, indent=2) + "\n")
    return model, report
