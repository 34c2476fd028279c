"""What ``diffusers-mv3d evaluate`` scores (:mod:`.evaluate`): the pipeline and its variants, the frozen
foundation alone, the trained baselines (``train-baseline``), and the reference renders of held-out
``eval3d`` objects.
"""

import contextlib
import os
import warnings
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from torch import nn

from ..cameras import Cameras
from ..data.splits import split_entry
from ..data.world import ProceduralObject, generate_object
from ..foundation import load_baseline
from ..sampling import classifier_free_guidance, sample, sample_views
from .settings import BASELINE_VARIANTS, REFERENCE_VARIANTS, EvalPrompt

_RATIOS = {"k0": 0.0, "k0.25": 0.25, "k0.5": 0.5, "k1": 1.0}
_SCALES = {"alpha3": 3.0, "alpha15": 15.0}
_SAMPLING = {"full-cost": {"share_branch": False, "neus_interval": 1}, "neus1": {"neus_interval": 1},
             "neus3": {"neus_interval": 3}, "shared-noise": {"shared_noise_tiles": 1}}


# ---------------------------------------------------------------------------------------------
# Pipelines and variants
# ---------------------------------------------------------------------------------------------
def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_pipeline(model: str, device: str = "cpu", flag: str = "--model"):
    """A :class:`TuneMV3DPipeline` from a pipeline folder or Hub id; a text-to-image folder without
    ``controlnet/`` is assembled with a fresh branch (:func:`~diffusers_mv3d.assembly.assemble_pipeline`;
    it adds zero, so every branch variant then samples as the foundation does). Returns
    ``(pipe, fresh_branch)``."""
    from ..assembly import assemble_pipeline
    from ..pipelines import TuneMV3DPipeline

    if os.path.isdir(model) and not os.path.isdir(os.path.join(model, "controlnet")):
        warnings.warn(f"{flag} {model!r} has no controlnet/: assembling it with a fresh branch (adds zero)")
        pipe, fresh = assemble_pipeline(model), True
    else:
        try:
            pipe, fresh = TuneMV3DPipeline.from_pretrained(model), False
        except Exception as error:  # diffusers / hub errors: one message naming the flag
            raise ValueError(f"{flag} {model!r} could not be loaded as a TuneMV3D pipeline ({type(error).__name__}: {error})") from error
    pipe = pipe.to(_resolve_device(device))
    pipe.set_progress_bar_config(disable=True)
    return pipe, fresh


@contextlib.contextmanager
def without_geometry_attention(pipe) -> Iterator[Any]:
    """Run the branch without GeometryAwareAttention: the controlnet's ``geometry_attention``
    ModuleDict is swapped for an empty one inside the block (the branch then skips every attention
    layer, as it does without NeuS samples) and put back afterwards, the same objects."""
    controlnet = pipe.controlnet
    saved = controlnet.geometry_attention
    controlnet.geometry_attention = nn.ModuleDict()
    try:
        yield pipe
    finally:
        controlnet.geometry_attention = saved


def _no_neus_output(*args, **kwargs) -> None:
    """What the NeuS 'renders' inside :func:`without_neus`: nothing."""
    return None


@contextlib.contextmanager
def without_neus(pipe) -> Iterator[Any]:
    """Run the branch without the NeuS condition and samples.

    Inside the block ``pipe.neus(...)`` returns ``None`` (an instance attribute ``forward`` shadows
    the class's, which ``nn.Module.__call__`` calls), so every denoising step calls
    ``branch_residuals(..., neus_output=None)``: the branch sees neither the NeuS render nor the sample
    points, exactly the "without NeuS" pass of consistency guidance (§3.3), and the NeuS costs
    nothing. Call the pipeline with ``consistency_ratio=0`` inside it (guidance against the same
    prediction would be a no-op). ``neus.encode`` (meshes) is untouched. A ``forward`` already set on
    the instance (accelerate's offload hooks) is put back afterwards.
    """
    neus = pipe.neus
    had_forward = "forward" in neus.__dict__
    saved = neus.__dict__.get("forward")
    neus.forward = _no_neus_output
    try:
        yield pipe
    finally:
        if had_forward:
            neus.forward = saved
        else:
            del neus.forward


def _variant_context(pipe, variant: str):
    if variant == "no-attention":
        return without_geometry_attention(pipe)
    if variant == "no-neus":
        return without_neus(pipe)
    return contextlib.nullcontext(pipe)


def variant_call_arguments(variant: str) -> Dict[str, Any]:
    """The pipeline-call arguments of a generated variant (``{}``: the model's K and alpha)."""
    if variant in _RATIOS:
        return {"consistency_ratio": _RATIOS[variant]}
    if variant in _SCALES:
        return {"consistency_scale": _SCALES[variant]}
    if variant == "no-neus":
        return {"consistency_ratio": 0.0}
    return dict(_SAMPLING.get(variant, {}))


def variant_settings(pipe, variant: str) -> str:
    """``K ..., alpha ...`` as a variant samples (``-`` for the foundation and the references)."""
    if variant == "foundation" or variant in BASELINE_VARIANTS or variant in REFERENCE_VARIANTS:
        return "-"
    config = pipe.scheduler.config
    arguments = variant_call_arguments(variant)
    ratio = arguments.get("consistency_ratio", config.get("consistency_ratio"))
    scale = arguments.get("consistency_scale", config.get("consistency_scale"))
    return f"K {ratio:g}, alpha {scale:g}"


@torch.no_grad()
def sample_foundation(
    pipe, prompt: str, num_views: int, num_inference_steps: int, guidance_scale: float, generator: torch.Generator
) -> torch.Tensor:
    """The frozen UNet alone sampling ``num_views`` images of ``prompt`` independently -> ``[V, 3, H, W]`` in ``[0, 1]``.

    The pipeline's loop (:func:`~diffusers_mv3d.sampling.sample`) without the branch: a fresh ``DDIMScheduler`` from the
    pipeline's inner scheduler config with the pipeline's ``eta``, classifier-free guidance with the empty negative prompt, and
    the pipeline's initial noise (``randn [1, V, C, h, w]`` from ``generator``, one noise a view). A
    pipeline whose branch adds zero (a fresh one) gives the same images.
    """
    from diffusers import DDIMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    device, dtype = pipe.device, pipe.unet.dtype
    scheduler = DDIMScheduler.from_config(pipe.scheduler.inner.config)
    scheduler.set_timesteps(num_inference_steps, device=device)
    size, channels = pipe.unet.config.sample_size, pipe.unet.config.in_channels
    x = randn_tensor((1, num_views, channels, size, size), generator=generator, device=device, dtype=dtype)
    x = x[0] * scheduler.init_noise_sigma  # [V, C, h, w]
    do_cfg = guidance_scale > 1.0
    text, negative = pipe.encode_prompt(prompt, device, do_classifier_free_guidance=do_cfg)
    if do_cfg:
        text = torch.cat([negative, text])
    text = text.repeat_interleave(num_views, 0)  # [(2) V, L, D]

    def predict(model_input: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        doubled = torch.cat([model_input] * 2) if do_cfg else model_input
        noise = pipe.unet(doubled, t, text).sample[:, :channels]  # drop a learned variance (IF)
        return classifier_free_guidance(noise, guidance_scale) if do_cfg else noise

    x = sample(scheduler, x, predict, eta=pipe.scheduler.config.eta, generator=generator)
    return ((pipe.decode_views(x).float().clamp(-1, 1) + 1) / 2).cpu()


def load_baselines(cfg, image_size: int) -> Dict[str, Any]:
    """The baselines ``cfg.variants`` asks for, by variant: ``--finetune-model`` / ``--mvdream-model`` loaded
    with :func:`~diffusers_mv3d.foundation.load_baseline` on ``cfg.device``; each must
    make ``image_size``-px views."""
    baselines = {}
    for variant, field in BASELINE_VARIANTS.items():
        if variant in cfg.variants:
            flag = "--" + field.replace("_", "-")
            parts = load_baseline(getattr(cfg, field), _resolve_device(cfg.device), kind=variant, flag=flag)
            size = parts.unet.config.sample_size * parts.vae_scale_factor
            if size != image_size:
                raise ValueError(f"{flag} makes {size}-px views but --model {image_size}-px")
            baselines[variant] = parts
    return baselines


def generate_views(pipe, variant: str, prompt: str, num_views: int, steps: int, guidance_scale: float, seed: int,
                   foundation_pipe=None, baselines: Optional[Dict[str, Any]] = None) -> torch.Tensor:
    """One object of a generated variant -> ``[V, 3, H, W]`` in ``[0, 1]`` on the CPU.

    The baselines (``baselines`` from :func:`load_baselines`) sample with
    :func:`~diffusers_mv3d.sampling.sample_views`: the pipeline's initial noise for the
    seed, DDIM from the same schedule with the pipeline's ``eta``, the default cameras.
    """
    generator = torch.Generator().manual_seed(seed)
    if variant == "foundation":
        return sample_foundation(foundation_pipe or pipe, prompt, num_views, steps, guidance_scale, generator)
    if variant in BASELINE_VARIANTS:
        return sample_views(baselines[variant], prompt, num_views, None, steps, guidance_scale, generator,
                            eta=pipe.scheduler.config.eta)
    with _variant_context(pipe, variant):
        out = pipe(prompt, num_views=num_views, num_inference_steps=steps, guidance_scale=guidance_scale,
                   generator=generator, output_type="pt", **variant_call_arguments(variant))
    return out.images.cpu()


# ---------------------------------------------------------------------------------------------
# References: ground-truth renders
# ---------------------------------------------------------------------------------------------
_EVAL3D_SCAN = 20000  # eval3d entries searched for a prompt's (category, colour)


def ground_truth_object(prompt: EvalPrompt, index: int = 0) -> Tuple[str, ProceduralObject]:
    """``(object_id, object)``: the ``index``-th held-out ``eval3d`` object of the prompt's category and colour.

    For an out-of-split prompt (no 3D split holds its category or colour) it is the prompt's
    category and colour built from the seed of the ``index``-th ``eval3d`` entry: a seed of the
    held-out range (a reference, like the in-split objects: its content may equal a training object's).
    """
    if prompt.in_split:
        found = 0
        for i in range(_EVAL3D_SCAN):
            object_id, category, colour, object_seed = split_entry("eval3d", i)
            if (category, colour) == (prompt.category, prompt.colour):
                if found == index:
                    return object_id, generate_object(category, object_seed, colour)
                found += 1
    object_seed = split_entry("eval3d", index)[3]
    return f"eval3d-seed{index}-{prompt.category}-{prompt.colour}", generate_object(prompt.category, object_seed, prompt.colour)


def render_object(obj: ProceduralObject, cameras: Cameras, antialias: int = 2, alpha: bool = False) -> torch.Tensor:
    """Ground-truth views ``[V, 3, H, W]`` in ``[0, 1]`` on white (as the training renders); with
    ``alpha``, ``[V, 4, H, W]``: the coverage as a fourth channel."""
    from ..data.render import render_views

    rgba = render_views(obj.mesh, cameras, background="white", antialias=antialias).rgba
    return torch.from_numpy(rgba if alpha else rgba[..., :3]).permute(0, 3, 1, 2).contiguous()
