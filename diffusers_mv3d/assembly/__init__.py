"""Assembly: assemble a TuneMV3D pipeline from any diffusers text-to-image pipeline, and start the
multi-view branch from an existing diffusers ControlNet.

The two scripts under ``scripts/`` are thin command lines over this module:

``scripts/assemble_pipeline.py`` -> :func:`assemble_pipeline`
    The base (a diffusers Stable Diffusion 1.x / 2.x or DeepFloyd-IF stage I pipeline, a local folder
    or a Hub id, or our own ``train-foundation`` folder) gives the frozen ``unet``, ``text_encoder``,
    ``tokenizer``, ``vae`` (when present) and the noise schedule. The branch (``controlnet`` +
    ``neus``) comes from a trained folder (``diffusers-mv3d train``'s ``model/``) or starts fresh from
    the UNet exactly as the trainer starts it (:class:`FreshBranchConfig`): a fresh branch adds
    exactly zero, so the pipeline then samples as the frozen base model does, view by view. The
    inference scheduler is ``DDIMScheduler.from_config(base scheduler config)`` inside
    :class:`ConsistencyGuidanceScheduler`. The result is a ``TuneMV3DPipeline`` folder
    (``save_pretrained``, safetensors) with a README.md model card (:func:`model_card_text`).

``scripts/convert_controlnet.py`` -> :func:`convert_controlnet`
    A :class:`MultiViewControlNetModel` whose inner ``encoder`` takes every tensor of a diffusers
    ``ControlNetModel`` checkpoint whose name and shape match; the rest is initialised (geometry-aware
    attention with a zero output; the conditioning embedding, re-initialised with a zero output conv
    when the source's condition differs from the NeuS render). :class:`ControlNetConversionReport`
    lists copied / initialised / skipped tensors.

Example::

    from diffusers_mv3d.assembly import assemble_pipeline, convert_controlnet

    pipe = assemble_pipeline("runs/foundation-tiny/pipeline", branch="runs/tunemv3d-tiny/model",
                             reconstructor="runs/reconstructor-tiny/model", out="pipelines/tunemv3d-tiny")
    controlnet, report = convert_controlnet("path/to/sd-controlnet-canny", unet="path/to/sd-1.5",
                                            out="runs/controlnet-from-canny")
    print(report.summary())

The modules: :mod:`.components` (the frozen base, the scheduler, the branch), :mod:`.model_card`,
:mod:`.assemble` (the pipeline folder) and :mod:`.controlnet` (the ControlNet conversion).
"""

from .assemble import assemble_pipeline, save_pipeline_folder
from .components import (
    BaseComponents,
    FreshBranchConfig,
    PathLike,
    check_branch_fits_unet,
    check_controlnet_fits_unet,
    check_unet_supported,
    fresh_branch,
    fresh_neus,
    inference_scheduler,
    load_base,
    load_branch,
    load_reconstructor,
)
from .controlnet import CONVERT_SCRIPT, ControlNetConversionReport, convert_controlnet
from .model_card import ASSEMBLE_SCRIPT, assemble_command, model_card_text

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
