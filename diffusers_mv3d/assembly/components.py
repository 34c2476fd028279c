"""The components of an assembled pipeline (:mod:`diffusers_mv3d.assembly`): the frozen base, its inference
scheduler, and the branch, trained (loaded) or fresh, with the checks that it fits the base's UNet.
"""

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ..captioning import RetrievalCaptioner
from ..models.latent_sparse_neus import LatentSparseNeuS
from ..models.multiview_controlnet import MultiViewControlNetModel
from ..schedulers.consistency_guidance import ConsistencyGuidanceScheduler
from ..training.branch import BranchSettings, build_branch_from_unet, build_neus

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
                        consistency_scale: float = 7.5, eta: float = 0.0,
                        guidance_scale: float = 3.0) -> ConsistencyGuidanceScheduler:
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
    return ConsistencyGuidanceScheduler.wrap(ddim, consistency_ratio=consistency_ratio, consistency_scale=consistency_scale,
                                             eta=eta, guidance_scale=guidance_scale)


# ----------------------------------------------------------------------------------------------
# The branch: trained (loaded) or fresh (from the UNet, as `diffusers-mv3d train` starts it)
# ----------------------------------------------------------------------------------------------


FreshBranchConfig = BranchSettings
"""Architecture of a fresh branch: the branch settings of ``diffusers-mv3d train`` themselves
(:class:`~diffusers_mv3d.training.branch.BranchSettings`, which ``TuneMV3DTrainConfig`` extends), so a
fresh pipeline's branch is the one the trainer starts from with the same ``seed``."""


def fresh_neus(in_channels: int, latent: bool, cfg: FreshBranchConfig) -> LatentSparseNeuS:
    """A new LatentSparseNeuS in the diffusion space (background 1.0 = white pixels, 0.0 for latents)."""
    return build_neus(cfg, in_channels, 0.0 if latent else 1.0, cfg.neus_render_resolution or None)


def fresh_branch(unet, latent: bool, cfg: Optional[FreshBranchConfig] = None, seed: int = 0
                 ) -> Tuple[MultiViewControlNetModel, LatentSparseNeuS]:
    """``MultiViewControlNetModel.from_unet`` + a new ``LatentSparseNeuS`` as the trainer builds them
    (:func:`~diffusers_mv3d.training.branch.build_branch_from_unet`), seeded by ``seed`` (the trainer's
    ``--seed``; the global RNG is left as it was). The branch's residuals are exactly zero."""
    cfg = cfg or FreshBranchConfig()
    with torch.random.fork_rng(devices=[]):
        controlnet, neus = build_branch_from_unet(unet, int(unet.config.in_channels), latent, cfg, seed)
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


def load_captioner(path: PathLike) -> RetrievalCaptioner:
    """A captioner: a ``RetrievalCaptioner`` folder (``diffusers-mv3d build-captioner --out``), a pipeline
    folder with ``captioner/`` in it, or a Hub id of the former."""
    path = str(path)
    subfolder = "captioner" if os.path.isdir(os.path.join(path, "captioner")) else None
    return _load_model(RetrievalCaptioner, path, subfolder, "--captioner",
                       "a RetrievalCaptioner (diffusers-mv3d build-captioner)").eval()


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
