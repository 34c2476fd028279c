"""TuneMV3DPipeline: text-to-multiview, multiview-to-multiview and image-to-multiview sampling
(paper §3.3-3.5; DESIGN.md §1 and §3).

One denoising step runs every view of every object as one batch: the LatentSparseNeuS renders x0
from the noisy views once (shared by both classifier-free-guidance halves), the multi-view ControlNet
turns it into residuals, the frozen UNet predicts the noise, and on consistency steps a second branch
pass without NeuS gives eq. 4's guidance. Reference views sit at t = 0 in every step and come out
bit-identical.
"""

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..cameras import Cameras, default_cameras
from ..captioning import RetrievalCaptioner
from ..models.latent_sparse_neus import LatentSparseNeuS
from ..models.multiview_controlnet import MultiViewControlNetModel
from ..models.views import fold_views, unfold_views
from ..sampling import classifier_free_guidance, sample, share_low_frequencies
from ..schedulers.consistency_guidance import ConsistencyGuidanceScheduler
from .image_inputs import array_to_unit_float, pil_to_unit_float
from .meshing import MeshReconstructionMixin

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_mv3d import TuneMV3DPipeline

        >>> pipe = TuneMV3DPipeline.from_pretrained("pipelines/tunemv3d-tiny")
        >>> out = pipe("a red chair with armrests", num_views=8, generator=torch.manual_seed(0), return_mesh=True)
        >>> out.images[0].save("view0.png")
        >>> out.mesh.export("chair.glb")
        >>> ref = out.images[0]
        >>> out = pipe(image=ref, num_views=8)  # image-to-multiview: view 0 is the reference
        ```
"""

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class TuneMV3DPipelineOutput(BaseOutput):
    """Output of :class:`TuneMV3DPipeline`.

    Attributes:
        images: ``B * V`` views, object-major: a list of PIL images, an ``np.ndarray [B*V, H, W, 3]``
            in [0, 1], a ``torch.Tensor [B*V, 3, H, W]`` in [0, 1], or the raw latents for ``"latent"``.
        cameras: the cameras of the views (batch shape ``[V]``, at the image resolution).
        mesh: a ``trimesh.Trimesh`` with vertex colours (a list of them for several objects), or
            ``None`` unless ``return_mesh=True``.
    """

    images: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]
    cameras: Cameras
    mesh: Optional[Any] = None


def _is_count(value) -> bool:
    """An int (not a bool) >= 1."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


class TuneMV3DPipeline(DiffusionPipeline, MeshReconstructionMixin):
    r"""Multi-view generation with a frozen text-to-image UNet tuned by a TuneMV3D branch.

    Args:
        unet (`UNet2DConditionModel`): the frozen foundation denoiser (pixel space without ``vae``).
        controlnet (`MultiViewControlNetModel`): the trained branch (§3.2).
        neus (`LatentSparseNeuS`): the latent SparseNeuS of the branch (§3.1.1).
        scheduler (`ConsistencyGuidanceScheduler`): wraps any diffusers scheduler; holds K and alpha.
        text_encoder, tokenizer: the foundation's text encoder and tokenizer.
        vae (`AutoencoderKL`, *optional*): present for latent-space (Stable Diffusion style) UNets.
        reconstructor (`LatentSparseNeuS`, *optional*): the feed-forward mesh reconstructor (§3.5),
            trained on clean pixel views; ``neus`` is used for meshes when absent.
        captioner (`RetrievalCaptioner`, *optional*): captions references given without a prompt
            (``diffusers-mv3d generate --image``; the pipeline itself never calls it).
    """

    model_cpu_offload_seq = "text_encoder->neus->controlnet->unet->vae->reconstructor"
    _optional_components = ["vae", "reconstructor", "captioner"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        controlnet: MultiViewControlNetModel,
        neus: LatentSparseNeuS,
        scheduler: ConsistencyGuidanceScheduler,
        text_encoder,
        tokenizer,
        vae: Optional[AutoencoderKL] = None,
        reconstructor: Optional[LatentSparseNeuS] = None,
        captioner: Optional[RetrievalCaptioner] = None,
    ):
        super().__init__()
        if scheduler is not None and not isinstance(scheduler, ConsistencyGuidanceScheduler):
            scheduler = ConsistencyGuidanceScheduler.wrap(scheduler)
        self.register_modules(
            unet=unet, controlnet=controlnet, neus=neus, scheduler=scheduler, text_encoder=text_encoder,
            tokenizer=tokenizer, vae=vae, reconstructor=reconstructor, captioner=captioner,
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1

    # ------------------------------------------------------------------ state of the current call
    # (diffusers' convention: a step-end callback may read these, and change ``_guidance_scale``)
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def cross_attention_kwargs(self) -> Optional[Dict[str, Any]]:
        return self._cross_attention_kwargs

    # ------------------------------------------------------------------ inputs
    @property
    def space_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def image_size(self) -> int:
        return self.unet.config.sample_size * self.vae_scale_factor

    def check_inputs(self, prompt, num_views, cameras, references, output_type, negative_prompt, consistency_ratio,
                     callback_tensor_inputs=(), prompt_embeds=None, negative_prompt_embeds=None,
                     num_inference_steps=1, guidance_scale=1.0, neus_interval=1, shared_noise_tiles=None):
        if not _is_count(num_views):
            raise ValueError(f"num_views must be an int >= 1, got {num_views!r}")
        if prompt is not None and not isinstance(prompt, str) and not (
            isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt)
        ):
            raise ValueError(f"prompt must be a str or a non-empty list of str, got {type(prompt).__name__}")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("give prompt or prompt_embeds, not both")
        if prompt is None and prompt_embeds is None and not references:
            raise ValueError("prompt (or prompt_embeds) must be given unless image or reference_images is")
        if negative_prompt is not None and not isinstance(negative_prompt, (str, list, tuple)):
            raise ValueError(f"negative_prompt must be a str or a list of str, got {type(negative_prompt).__name__}")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("give negative_prompt or negative_prompt_embeds, not both")
        for name, embeds in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if embeds is not None and (not isinstance(embeds, torch.Tensor) or embeds.dim() != 3):
                raise ValueError(f"{name} must be a tensor [batch, tokens, dim], got "
                                 f"{tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__}")
        if prompt_embeds is not None and negative_prompt_embeds is not None and prompt_embeds.shape != negative_prompt_embeds.shape:
            raise ValueError(f"negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} must have the shape of "
                             f"prompt_embeds {tuple(prompt_embeds.shape)}")
        if cameras is not None and (not isinstance(cameras, Cameras) or len(cameras.batch_shape) != 1 or len(cameras) != num_views):
            got = len(cameras) if isinstance(cameras, Cameras) else type(cameras).__name__
            raise ValueError(f"cameras must be Cameras of batch shape [num_views={num_views}], got {got}")
        for index in references:
            if not isinstance(index, int) or not 0 <= index < num_views:
                raise ValueError(f"reference_images index {index!r} is out of range for num_views={num_views}")
        if not _is_count(num_inference_steps):
            raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
        if not _is_count(neus_interval):
            raise ValueError(f"neus_interval must be an int >= 1, got {neus_interval!r}")
        size = self.unet.config.sample_size
        if shared_noise_tiles is not None and not (_is_count(shared_noise_tiles) and size % shared_noise_tiles == 0):
            raise ValueError(f"shared_noise_tiles must be None or an int >= 1 dividing the diffusion space's size {size}, "
                             f"got {shared_noise_tiles!r}")
        if not isinstance(guidance_scale, numbers.Real) or not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if consistency_ratio is not None and not 0.0 <= consistency_ratio <= 1.0:
            raise ValueError(f"consistency_ratio must lie in [0, 1], got {consistency_ratio}")
        unknown = set(callback_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs may only name {self._callback_tensor_inputs}, got {sorted(unknown)}")

    def preprocess_image(self, image, name: str) -> torch.Tensor:
        """A reference image -> ``[3, H, W]`` in [-1, 1].

        Accepted: a PIL image of any mode (RGBA is composited on white, the training background;
        16-bit and 32-bit greyscale are scaled from their full range), an ``np`` array ``[H, W, 3]``
        (uint8 in 0..255, uint16 in 0..65535, or floats in [0, 1]) or a tensor ``[3, H, W]`` (uint8,
        or floats in [0, 1]). Non-finite values and floats outside [0, 1] are a ValueError naming ``name``.
        """
        size = self.image_size
        if isinstance(image, PIL.Image.Image):
            image = pil_to_unit_float(image)  # [H, W, 3] float32 in [0, 1]
        elif isinstance(image, torch.Tensor) and image.dim() == 3 and image.shape[0] == 3:
            image = image.detach().cpu().permute(1, 2, 0).numpy()
        elif not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] == 3):
            raise ValueError(f"{name} must be a PIL image, an np array [H, W, 3] or a tensor [3, H, W]")
        tensor = torch.from_numpy(array_to_unit_float(image, name)).permute(2, 0, 1)
        if tuple(tensor.shape[-2:]) != (size, size):
            raise ValueError(f"{name} is {tuple(tensor.shape[-2:])} but this pipeline makes {size}x{size} views; resize it")
        return tensor * 2.0 - 1.0

    def encode_prompt(
        self,
        prompt: Optional[Union[str, List[str]]] = None,
        device: Optional[torch.device] = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: Optional[Union[str, List[str]]] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
    ):
        """The text embeddings of the prompts and, for classifier-free guidance, of the negative prompts
        (``""`` unless given), each repeated ``num_images_per_prompt`` times, as diffusers' pipelines do.

        Returns:
            ``(prompt_embeds [N, L, D], negative_prompt_embeds [N, L, D] or None)`` with
            ``N = prompts x num_images_per_prompt``; embeddings passed in are used as they are.
        """
        device = device or self._execution_device
        if prompt_embeds is None:
            prompt_embeds = self._embed_text([prompt] if isinstance(prompt, str) else list(prompt), device)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negatives = negative_prompt or ""
            negatives = [negatives] * prompt_embeds.shape[0] if isinstance(negatives, str) else list(negatives)
            if len(negatives) != prompt_embeds.shape[0]:
                raise ValueError(f"negative_prompt has {len(negatives)} entries for {prompt_embeds.shape[0]} prompts")
            negative_prompt_embeds = self._embed_text(negatives, device)
        prompt_embeds = prompt_embeds.to(device).repeat_interleave(num_images_per_prompt, 0)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(device).repeat_interleave(num_images_per_prompt, 0)
        return prompt_embeds, negative_prompt_embeds

    def _embed_text(self, prompts: List[str], device) -> torch.Tensor:
        """Text embeddings ``[N, L, D]`` from the foundation's tokenizer and text encoder."""
        if self.tokenizer is None or self.text_encoder is None:
            raise ValueError("this pipeline has no tokenizer / text_encoder: pass prompt_embeds (and "
                             "negative_prompt_embeds for classifier-free guidance)")
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        kwargs = {}
        if getattr(self.text_encoder.config, "use_attention_mask", False) or self.text_encoder.config.model_type == "t5":
            kwargs["attention_mask"] = tokens.attention_mask.to(device)
        return self.text_encoder(tokens.input_ids.to(device), **kwargs)[0]

    def encode_views(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] ``[N, 3, H, W]`` -> the diffusion space (VAE latents when there is a VAE)."""
        if self.vae is None:
            return images
        latents = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mode()
        return (latents - self._vae_shift) * self.vae.config.scaling_factor

    def decode_views(self, latents: torch.Tensor) -> torch.Tensor:
        """The diffusion space -> images in [-1, 1]."""
        if self.vae is None:
            return latents
        return self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor + self._vae_shift).sample

    @property
    def _vae_shift(self) -> float:
        """The VAE's ``shift_factor`` (SD3-style VAEs), 0 for Stable Diffusion 1.x/2.x."""
        return getattr(self.vae.config, "shift_factor", None) or 0.0

    # ------------------------------------------------------------------ one denoiser evaluation
    def predict_noise(self, latents, timesteps, text, cameras, neus_output=None, cross_attention_kwargs=None) -> torch.Tensor:
        """Branch + frozen UNet on the folded views; ``neus_output=None`` drops the NeuS (§3.3).

        ``latents [B, V, C, h, w]``, ``timesteps [B, V]``, ``text [B, L, D]``; with classifier-free
        guidance ``B`` is twice the number of objects and ``neus_output`` covers one half.
        ``cross_attention_kwargs`` go to the attention processors of the branch and the UNet.
        """
        down, mid = self.branch_residuals(latents, timesteps, text, cameras, neus_output, cross_attention_kwargs)
        return self.unet_noise(latents, timesteps, text, down, mid, cross_attention_kwargs)

    def branch_residuals(self, latents, timesteps, text, cameras, neus_output=None, cross_attention_kwargs=None):
        """The branch's residuals ``(down, mid)`` for the folded views of ``latents [B, V, C, h, w]``
        (``neus_output`` covering ``B`` or a divisor of it; ``None`` drops the NeuS condition, §3.3)."""
        branch_inputs = {}
        if neus_output is not None:
            repeat = latents.shape[0] // neus_output.x0.shape[0]
            branch_inputs = dict(
                neus_render=neus_output.x0.repeat(repeat, 1, 1, 1, 1),
                sample_points=neus_output.sample_points.repeat(repeat, 1, 1, 1, 1),
                sample_weights=neus_output.sample_weights.repeat(repeat, 1, 1, 1),
            )
        return self.controlnet(latents, timesteps, text, cameras, return_dict=False,
                               cross_attention_kwargs=cross_attention_kwargs, **branch_inputs)

    def unet_noise(self, latents, timesteps, text, down, mid, cross_attention_kwargs=None) -> torch.Tensor:
        """The frozen UNet's prediction ``[B, V, C, h, w]`` with the branch's residuals added to its skips."""
        num_views = latents.shape[1]
        noise = self.unet(
            fold_views(latents),
            timesteps.reshape(-1),
            text.repeat_interleave(num_views, 0),
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            cross_attention_kwargs=cross_attention_kwargs,
        ).sample
        return unfold_views(noise[:, : latents.shape[2]], num_views)  # drop a learned variance (IF)

    def _shared_branch_noise(self, latents, timesteps, prompt_embeds, negative_prompt_embeds, cameras, neus_output,
                             consistency_step: bool, cross_attention_kwargs=None):
        """Guidance halves and consistency pass with one branch run per pass, on the conditional views.

        The branch sees the conditional text only and its residuals serve the unconditional views too;
        on a consistency step a second branch run without the NeuS gives the conditional views' NeuS-free
        prediction. All UNet passes are one batch: ``[uncond, cond(, cond without NeuS)]``.

        Returns ``(noise, cond_without_neus or None)``: ``noise [2B, V, C, h, w]`` the unconditional then
        the conditional predictions (a view of the UNet's output), ``cond_without_neus [B, V, C, h, w]``.
        """
        passes = [neus_output, None] if consistency_step else [neus_output]
        residuals = [self.branch_residuals(latents, timesteps, prompt_embeds, cameras, output, cross_attention_kwargs)
                     for output in passes]
        per_part = [residuals[0]] + residuals  # the unconditional views share the conditional residuals
        down = tuple(torch.cat(parts) for parts in zip(*(downs for downs, _ in per_part)))
        mid = torch.cat([mids for _, mids in per_part])
        parts = len(per_part)
        text = torch.cat([negative_prompt_embeds] + [prompt_embeds] * (parts - 1))
        noise = self.unet_noise(torch.cat([latents] * parts), torch.cat([timesteps] * parts), text, down, mid,
                                cross_attention_kwargs)
        objects = latents.shape[0]
        return noise[: 2 * objects], (noise[2 * objects :] if consistency_step else None)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        prompt: Optional[Union[str, List[str]]] = None,
        num_views: int = 8,
        cameras: Optional[Cameras] = None,
        image=None,
        reference_images: Optional[Dict[int, Any]] = None,
        num_inference_steps: int = 50,
        guidance_scale: Optional[float] = None,
        negative_prompt: Optional[Union[str, List[str]]] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        consistency_ratio: Optional[float] = None,
        consistency_scale: Optional[float] = None,
        eta: Optional[float] = None,
        share_branch: bool = True,
        neus_interval: int = 3,
        shared_noise_tiles: Optional[int] = None,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_mesh: bool = False,
        mesh_resolution: int = 64,
        mesh_carving: bool = True,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        num_images_per_prompt: int = 1,
        return_dict: bool = True,
    ):
        r"""Generate ``num_views`` consistent views of each prompt's object.

        Args:
            prompt: a caption or a list of them (one object each); may be omitted with ``image``.
            num_views: views V per object.
            cameras: ``Cameras`` of batch shape ``[V]`` (any resolution); the default orbit otherwise
                (elevation 20, azimuth every 360/V degrees).
            image: image-to-multiview: the reference for view 0 (§3.4).
            reference_images: multiview-to-multiview: ``{view index: image}`` clamped at t = 0.
            num_inference_steps, guidance_scale, negative_prompt: as in diffusers (a step-end callback may
                change ``pipe._guidance_scale``; the text batch, with or without guidance, is fixed at the start).
                ``guidance_scale`` None: the pipeline folder's default (``scheduler.config.guidance_scale``,
                set when it was assembled; 1 means no guidance).
            prompt_embeds, negative_prompt_embeds: text embeddings ``[B, L, D]`` instead of ``prompt`` /
                ``negative_prompt`` (from :meth:`encode_prompt`, or any other source).
            consistency_ratio: K, fraction of consistency-guidance steps; the scheduler's config if None.
            consistency_scale: alpha of eq. 4; the scheduler's config if None.
            eta: DDIM's eta (0 deterministic, 1 as stochastic as DDPM; the fresh noise comes from
                ``generator``); the scheduler's config if None. Other schedulers ignore it.
            share_branch: with classifier-free guidance, run the branch on the conditional half only and
                give its residuals to both UNet halves; a consistency step then reruns only the
                conditional half without NeuS and reuses the unconditional prediction. ``False`` runs
                the branch on both halves (twice the branch's cost; docs/results.md compares them).
            neus_interval: render the NeuS condition every this many steps and reuse it in between
                (1: every step).
            shared_noise_tiles: the views of an object share the means of ``tiles x tiles`` tiles of their
                initial noise (1: the image mean, which sets a view's mean colour; each view's noise stays
                standard normal, :func:`~diffusers_mv3d.sampling.share_low_frequencies`); None: independent
                noise. Not applied to ``latents`` given by the caller.
            generator, latents: the initial noise ``[B, V, C, h, w]`` comes from ``latents`` or ``generator``.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            return_mesh, mesh_resolution: reconstruct a vertex-coloured mesh (§3.5) at this grid size.
            mesh_carving: carve the mesh's SDF to the views' silhouettes
                (:func:`~diffusers_mv3d.mesh.carve_to_silhouettes`); ``False`` meshes the SDF as it is.
            cross_attention_kwargs: passed to the attention processors of the branch and the UNet.
            callback_on_step_end: ``f(pipe, step, timestep, callback_kwargs) -> dict`` as in diffusers.
            num_images_per_prompt: objects per prompt.

        Returns:
            :class:`TuneMV3DPipelineOutput` (or ``(images, cameras, mesh)`` with ``return_dict=False``).
        """
        # 1. Check inputs
        references = dict(reference_images or {})
        if image is not None:
            references[0] = image
        if guidance_scale is None:
            guidance_scale = self.scheduler.config.guidance_scale
        self.check_inputs(prompt, num_views, cameras, references, output_type, negative_prompt, consistency_ratio,
                          callback_on_step_end_tensor_inputs, prompt_embeds, negative_prompt_embeds,
                          num_inference_steps, guidance_scale, neus_interval, shared_noise_tiles)
        self._guidance_scale = guidance_scale
        self._cross_attention_kwargs = cross_attention_kwargs
        device, dtype = self._execution_device, self.unet.dtype
        do_cfg = self.do_classifier_free_guidance  # fixed for the call: the text batch is built once

        # 2. Cameras at the image and at the diffusion-space resolution
        size = self.unet.config.sample_size
        image_cameras = (cameras or default_cameras(num_views, self.image_size)).rescale(self.image_size, self.image_size)
        space_cameras = image_cameras.rescale(size, size).to(device=device, dtype=self.neus.dtype)

        # 3. Encode the prompt (negative first, as diffusers does); references alone: the empty prompt
        if prompt is None and prompt_embeds is None:
            prompt = ""
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, do_cfg, negative_prompt, prompt_embeds, negative_prompt_embeds
        )
        batch = prompt_embeds.shape[0]
        text = torch.cat([negative_prompt_embeds, prompt_embeds]) if do_cfg else prompt_embeds

        # 4. Reference views (clean, in the diffusion space) and the views they clamp
        reference_index = torch.tensor(sorted(references), dtype=torch.long, device=device)
        reference_latents = None
        if references:
            pixels = torch.stack([self.preprocess_image(references[i], f"reference_images[{i}]") for i in sorted(references)])
            reference_latents = self.encode_views(pixels.to(device)).to(dtype)  # [R, C, h, w]

        # 5. Timesteps and consistency steps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        consistency_steps = self.scheduler.consistency_steps(num_inference_steps, consistency_ratio)

        # 6. Initial noise
        shape = (batch, num_views, self.space_channels, size, size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            if shared_noise_tiles is not None:
                shared = randn_tensor((batch, 1, *shape[2:]), generator=generator, device=device, dtype=dtype)
                latents = share_low_frequencies(latents, shared, shared_noise_tiles)
            latents = latents * self.scheduler.init_noise_sigma
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        latents = self._clamp_references(latents.to(device=device, dtype=dtype), reference_index, reference_latents)

        # 7. Denoising loop (the project's one sampling loop, :func:`~diffusers_mv3d.sampling.sample`): all
        # views of all objects in one batch; a step's fresh noise (eta > 0) comes from each object's
        # generator for all its views
        step_generator = [g for g in generator for _ in range(num_views)] if isinstance(generator, list) else generator
        neus_generator = generator[0] if isinstance(generator, list) else generator  # jitter in train mode only
        self._num_timesteps = len(timesteps)
        neus_output = None  # the latest NeuS render, reused between renders

        def predict(folded_input, t, i):
            nonlocal neus_output
            # 7.1 per-view timesteps: reference views are clean, at t = 0
            view_t = torch.full((batch, num_views), int(t), device=device, dtype=torch.long)
            view_t[:, reference_index] = 0
            model_input = self._clamp_references(unfold_views(folded_input, num_views), reference_index, reference_latents)

            # 7.2 the centralized condition: NeuS renders x0 once for both guidance halves (eq. 1-3),
            # every ``neus_interval`` steps (reused in between)
            if neus_output is None or i % neus_interval == 0:
                neus_output = self.neus(model_input.to(self.neus.dtype), view_t, space_cameras, generator=neus_generator)

            # 7.3 branch + frozen UNet, with classifier-free guidance on the text, and 7.4 consistency
            # guidance (§3.3): the same step without the NeuS condition (eq. 4 is applied by the
            # scheduler's step)
            consistency_step = i in consistency_steps
            noise_without_neus = None
            if share_branch and do_cfg:
                noise, cond_without_neus = self._shared_branch_noise(
                    model_input, view_t, prompt_embeds, negative_prompt_embeds, space_cameras, neus_output,
                    consistency_step, cross_attention_kwargs)
                if consistency_step:  # eq. 4's x without NeuS reuses the unconditional prediction
                    noise_without_neus = self._guide_text(torch.cat([noise[:batch], cond_without_neus]))
                noise = self._guide_text(noise)
            else:
                doubled = torch.cat([model_input] * 2) if do_cfg else model_input
                doubled_t = torch.cat([view_t] * 2) if do_cfg else view_t
                noise = self.predict_noise(doubled, doubled_t, text, space_cameras, neus_output, cross_attention_kwargs)
                if consistency_step:
                    noise_without_neus = self.predict_noise(doubled, doubled_t, text, space_cameras, None,
                                                            cross_attention_kwargs)
                if do_cfg:
                    noise = self._guide_text(noise)
                    noise_without_neus = None if noise_without_neus is None else self._guide_text(noise_without_neus)
            step_arguments = dict(
                model_output_without_neus=None if noise_without_neus is None else fold_views(noise_without_neus),
                consistency_scale=consistency_scale,
            )
            return fold_views(noise), step_arguments

        with self.progress_bar(total=num_inference_steps) as progress_bar:

            def on_step_end(i, t, folded):
                # 7.5 references re-clamped after every step, then the user's callback
                latents = self._clamp_references(unfold_views(folded, num_views), reference_index, reference_latents)
                if callback_on_step_end is not None:
                    available = {"latents": latents}
                    callback_kwargs = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                    latents = callback_on_step_end(self, i, t, callback_kwargs).pop("latents", latents)
                progress_bar.update()
                return fold_views(latents)

            folded = sample(self.scheduler, fold_views(latents), predict, eta=eta, generator=step_generator,
                            on_step_end=on_step_end)
        latents = unfold_views(folded, num_views)

        # 8. Decode, mesh, post-process
        mesh = self._reconstruct_meshes(latents, image_cameras, mesh_resolution, mesh_carving) if return_mesh else None
        images = self._postprocess(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, image_cameras, mesh
        return TuneMV3DPipelineOutput(images=images, cameras=image_cameras, mesh=mesh)

    # ------------------------------------------------------------------ helpers of __call__
    @staticmethod
    def _clamp_references(latents, reference_index, reference_latents):
        """Put the clean reference views back in place (bit-identical)."""
        if reference_latents is None:
            return latents
        latents = latents.clone()
        latents[:, reference_index] = reference_latents
        return latents

    def _guide_text(self, noise: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance of ``[uncond; cond]`` at the current ``guidance_scale`` (a step-end
        callback may change it)."""
        return classifier_free_guidance(noise, self._guidance_scale)

    def _views_in_unit_range(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, V, C, h, w]`` latents -> ``[B*V, 3, H, W]`` images in [0, 1]."""
        return (self.decode_views(fold_views(latents)).float().clamp(-1, 1) + 1) / 2

    def _postprocess(self, latents: torch.Tensor, output_type: str):
        if output_type == "latent":
            return fold_views(latents)
        images = self._views_in_unit_range(latents).cpu()
        if output_type == "pt":
            return images
        array = images.permute(0, 2, 3, 1).numpy()
        if output_type == "np":
            return array
        return self.numpy_to_pil(array)
