"""Assemble a TuneMV3D pipeline folder from a diffusers text-to-image pipeline and a branch
(:mod:`diffusers_mv3d.assembly`, ``scripts/assemble_pipeline.py``).
"""

from pathlib import Path
from typing import Optional

from ..hub import push_folder_to_hub, write_pipeline_folder
from ..models.multiview_controlnet import MultiViewControlNetModel
from ..pipelines.pipeline_tunemv3d import TuneMV3DPipeline
from .components import (
    FreshBranchConfig,
    PathLike,
    _load_model,
    check_branch_fits_unet,
    check_controlnet_fits_unet,
    fresh_branch,
    inference_scheduler,
    load_base,
    load_branch,
    load_captioner,
    load_reconstructor,
)
from .model_card import assemble_command, model_card_text

HUB_COMMIT_MESSAGE = "Upload TuneMV3DPipeline (scripts/assemble_pipeline.py)"

def save_pipeline_folder(pipe: TuneMV3DPipeline, out: PathLike, card: str, overwrite: bool = False) -> Path:
    """``save_pretrained`` (safetensors) + README.md, written whole (:func:`~diffusers_mv3d.hub.write_pipeline_folder`):
    a reader never sees half a folder. An existing non-empty ``out`` needs ``overwrite``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ValueError(f"--out {str(out)!r} exists and is not empty; pass --overwrite to replace it")
    return write_pipeline_folder(pipe, out, card)


def assemble_pipeline(
    base: PathLike,
    branch: Optional[PathLike] = None,
    reconstructor: Optional[PathLike] = None,
    out: Optional[PathLike] = None,
    *,
    captioner: Optional[PathLike] = None,
    controlnet: Optional[PathLike] = None,
    consistency_ratio: float = 0.5,
    consistency_scale: float = 7.5,
    eta: float = 0.0,
    guidance_scale: float = 3.0,
    neus_render_resolution: Optional[int] = None,
    reconstructor_mesh_level: Optional[float] = None,
    seed: int = 0,
    variant: Optional[str] = None,
    push_to_hub: Optional[str] = None,
    private: bool = False,
    overwrite: bool = False,
    command: Optional[str] = None,
    trained_on: str = "",
) -> TuneMV3DPipeline:
    """Build a :class:`TuneMV3DPipeline` from a frozen text-to-image base and a branch; save it.

    Args:
        base: folder or Hub id of a diffusers SD 1.x / 2.x or IF stage I pipeline, or a
            ``train-foundation`` folder (``unet/ text_encoder/ tokenizer/ scheduler/``, no ``vae/``).
        branch: a trained branch folder (``controlnet/``, ``neus/``, optionally ``reconstructor/``;
            ``diffusers-mv3d train``'s ``OUTPUT_DIR/model``) or Hub id; ``None`` starts a fresh branch
            (:class:`FreshBranchConfig`, residuals exactly zero).
        reconstructor: a reconstructor folder (replaces the branch's ``reconstructor/``).
        captioner: a :class:`~diffusers_mv3d.captioning.RetrievalCaptioner` folder
            (``diffusers-mv3d build-captioner``): what ``generate --image`` captions references with.
        out: where the pipeline folder goes (``None``: not saved, unless ``push_to_hub`` needs it).
        controlnet: a ``MultiViewControlNetModel`` folder (e.g. from :func:`convert_controlnet`) used
            instead of the branch's; without ``branch`` the NeuS is fresh.
        eta: DDIM's eta the pipeline samples with by default (0 deterministic, 1 as stochastic as
            DDPM), saved in the scheduler's config.
        consistency_ratio, consistency_scale: K and alpha of consistency guidance (§3.3), saved in
            the scheduler's config.
        guidance_scale: the classifier-free guidance scale the pipeline uses when a call gives none,
            saved in the scheduler's config (1: none; a foundation that follows the prompt without
            guidance, like foundation v2, samples best at 1).
        neus_render_resolution: side of the NeuS render that conditions the branch (0 = the
            diffusion-space resolution); ``None`` keeps the branch's (16 for a fresh one).
        reconstructor_mesh_level: the SDF level the reconstructor's meshes take as the surface
            (``LatentSparseNeuS.mesh_level``, saved in its config); ``None`` keeps its own (0 unless
            saved otherwise). Needs a reconstructor.
        seed: seeds a fresh branch (the trainer's ``--seed``).
        variant: weights variant of the base (``"fp16"``) to download.
        push_to_hub: a Hub repository id: the saved folder is uploaded to it.
        private: create that repository private.
        overwrite: replace an existing non-empty ``out``.
        command: the command line recorded in the model card (default: the equivalent
            ``assemble_pipeline.py`` command, :func:`assemble_command`).
        trained_on: the machine the components were trained on, for the model card's training
            section (written when ``base``, ``branch`` or ``reconstructor`` is a trainer's output
            folder, :func:`~diffusers_mv3d.assembly.model_card.training_section`).

    Returns:
        The assembled pipeline (components in eval mode, on the CPU).
    """
    base = str(base)
    branch = None if branch is None else str(branch)
    controlnet_path = None if controlnet is None else str(controlnet)
    reconstructor = None if reconstructor is None else str(reconstructor)
    captioner = None if captioner is None else str(captioner)
    if neus_render_resolution is not None and neus_render_resolution < 0:
        raise ValueError(f"--neus-render-resolution must be >= 0 (0 = full resolution), got {neus_render_resolution}")
    if out is not None and Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())) and not overwrite:
        raise ValueError(f"--out {str(out)!r} exists and is not empty; pass --overwrite to replace it")

    # 1. the frozen base
    parts = load_base(base, variant=variant)
    latent = parts.vae is not None

    # 2. the branch: trained, converted or fresh
    reconstructor_model = None
    if branch is not None:
        controlnet_model, neus, reconstructor_model = load_branch(branch)
        check_branch_fits_unet(controlnet_model, neus, parts.unet, "--branch", branch, base)
    else:
        controlnet_model, neus = fresh_branch(parts.unet, latent, FreshBranchConfig(), seed)
    if controlnet_path is not None:
        controlnet_model = _load_model(MultiViewControlNetModel, controlnet_path, None, "--controlnet",
                                       "a MultiViewControlNetModel").eval()
        check_controlnet_fits_unet(dict(controlnet_model.encoder.config), parts.unet, "--controlnet", controlnet_path,
                                   "--base", base)
    if reconstructor is not None:
        reconstructor_model = load_reconstructor(reconstructor)
    if reconstructor_mesh_level is not None:
        if reconstructor_model is None:
            raise ValueError("--reconstructor-mesh-level sets the reconstructor's mesh level, but neither --branch nor "
                             "--reconstructor gives a reconstructor")
        reconstructor_model.register_to_config(mesh_level=float(reconstructor_mesh_level))
    captioner_model = None if captioner is None else load_captioner(captioner)
    if neus_render_resolution is not None:
        neus.register_to_config(render_resolution=int(neus_render_resolution) or None)

    # 3. the inference scheduler: DDIM from the base's schedule, inside consistency guidance
    scheduler = inference_scheduler(parts.scheduler_config, latent, consistency_ratio, consistency_scale, eta,
                                    guidance_scale)

    # 4. the pipeline
    pipe = TuneMV3DPipeline(
        unet=parts.unet, controlnet=controlnet_model, neus=neus, scheduler=scheduler,
        text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, vae=parts.vae, reconstructor=reconstructor_model,
        captioner=captioner_model,
    )

    # 5. the folder, its model card, the Hub
    if out is not None or push_to_hub:
        command = command or assemble_command(
            base, None if out is None else str(out), branch, controlnet_path, reconstructor, consistency_ratio,
            consistency_scale, neus_render_resolution, seed, variant, push_to_hub, private, overwrite, eta,
            guidance_scale, captioner, reconstructor_mesh_level,
        )
        card = model_card_text(pipe, base, command, branch=branch, controlnet=controlnet_path,
                               reconstructor=reconstructor, captioner=captioner, base_scheduler_class=parts.scheduler_class,
                               load_from=push_to_hub or (str(out) if out is not None else "DIR"), machine=trained_on)
        if out is not None:
            folder = save_pipeline_folder(pipe, out, card, overwrite=overwrite)
            if push_to_hub:
                push_folder_to_hub(folder, push_to_hub, private, HUB_COMMIT_MESSAGE)
        else:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                folder = save_pipeline_folder(pipe, Path(tmp) / "pipeline", card)
                push_folder_to_hub(folder, push_to_hub, private, HUB_COMMIT_MESSAGE)
    return pipe
