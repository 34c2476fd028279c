"""The one sampling loop, and the text-to-image and text-to-views samplers built on it.

:func:`sample` is the reverse process written once (k-diffusion's shape: a short pure function, the
model behind one uniform callable)::

    for each timestep t of the scheduler:
        model_output = predict(scale_model_input(x_t), t, i)     # e.g. UNet + guidance
        x_{t-1} = scheduler.step(model_output, t, x_t, eta, generator)

Every sampler of the project runs it: :func:`sample_ddim` (the foundation's validation grids and
benchmarks), :func:`sample_views` (the baselines and the frozen foundation sampling views
independently, in evaluation), and the pipeline, whose ``predict`` adds the NeuS, the branch and
consistency guidance (it returns the extra ``scheduler.step`` arguments of eq. 4 beside its output).
Each caller keeps its own scheduler config (``clip_sample``, spacing), as before.
"""

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .foundation import Foundation, unet_on_views
from .models.multiview_self_attention import camera_embedding, has_multiview_self_attention, set_multiview_self_attention
from .training.text import encode_prompts

__all__ = ["classifier_free_guidance", "ddim_scheduler", "sample", "sample_ddim", "sample_views", "share_low_frequencies"]

Prediction = Union[torch.Tensor, Tuple[torch.Tensor, Dict[str, object]]]


def classifier_free_guidance(prediction: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """``[2N, ...]`` predictions, unconditional half first -> ``uncond + w (cond - uncond)`` ``[N, ...]``."""
    uncond, cond = prediction.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def share_low_frequencies(noise: torch.Tensor, shared: torch.Tensor, tiles: int) -> torch.Tensor:
    """Initial noise whose views share their low frequencies: ``noise - L(noise) + L(shared)``.

    ``L`` replaces each of the ``tiles x tiles`` tiles of an image by its mean (an orthogonal
    projection), so for white Gaussian ``noise [B, V, C, h, w]`` and ``shared [B, 1, C, h, w]`` each
    view's result is again exactly standard normal, and the views of an object agree in their tile
    means (``tiles = 1``: the image mean, which a foundation sampled from t = T turns into the view's
    mean colour).
    """
    height, width = noise.shape[-2:]
    if tiles < 1 or height % tiles or width % tiles:
        raise ValueError(f"shared_noise_tiles must divide the noise's size {height}x{width}, got {tiles}")

    def tile_means(x: torch.Tensor) -> torch.Tensor:
        means = F.adaptive_avg_pool2d(x.flatten(0, 1), tiles)
        return F.interpolate(means, size=(height, width), mode="nearest").view(x.shape)

    return noise - tile_means(noise) + tile_means(shared).expand_as(noise)


def ddim_scheduler(scheduler_config: dict):
    """A ``DDIMScheduler`` from a text-to-image scheduler config (DDPM's ``variance_type`` dropped: DDIM
    does not use a learned variance)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config({k: v for k, v in dict(scheduler_config).items() if k != "variance_type"})


@torch.no_grad()
def sample(scheduler, x: torch.Tensor, predict: Callable[[torch.Tensor, torch.Tensor, int], Prediction],
           eta: Optional[float] = 0.0, generator=None,
           on_step_end: Optional[Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """Run the reverse process from ``x`` (x_T, already scaled by ``init_noise_sigma``) over
    ``scheduler.timesteps`` (``set_timesteps`` done by the caller); returns x_0.

    Args:
        scheduler: a diffusers scheduler (or :class:`ConsistencyGuidanceScheduler`) whose ``step``
            takes ``eta`` and ``generator`` (DDIM).
        x: the samples, in the layout ``scheduler.step`` works on (views folded: ``[(B V), C, h, w]``).
        predict: ``predict(model_input, t, i)`` -> the model output for ``scheduler.step`` (guidance
            applied), or ``(model_output, extra step keyword arguments)``.
        eta, generator: DDIM's stochasticity and the generator(s) of its fresh noise.
        on_step_end: ``on_step_end(i, t, x) -> x`` after each step (clamping references, callbacks).
    """
    for i, t in enumerate(scheduler.timesteps):
        prediction = predict(scheduler.scale_model_input(x, t), t, i)
        model_output, step_arguments = prediction if isinstance(prediction, tuple) else (prediction, {})
        x = scheduler.step(model_output, t, x, eta=eta, generator=generator, **step_arguments).prev_sample
        if on_step_end is not None:
            x = on_step_end(i, t, x)
    return x


@torch.no_grad()
def sample_ddim(unet, text_encoder, tokenizer, prompts: Sequence[str], scheduler_config: dict,
                num_inference_steps: int = 50, guidance_scale: float = 3.0,
                generator: Optional[torch.Generator] = None, eta: float = 0.0) -> torch.Tensor:
    """One image a prompt: DDIM with classifier-free guidance -> ``[N, 3, H, W]`` in [-1, 1].

    Uses channels 0-2 (epsilon or v, as the scheduler config says) of the UNet output; the learned
    variance is not needed by DDIM. ``eta`` is DDIM's stochasticity (0: deterministic; its noise comes
    from ``generator`` too, as the initial noise ``randn [N, C, H, W]`` does).
    """
    scheduler = ddim_scheduler(scheduler_config)
    device = next(unet.parameters()).device
    channels, size = unet.config.in_channels, unet.config.sample_size
    text = encode_prompts(tokenizer, text_encoder, prompts)  # N 77 D
    do_cfg = guidance_scale > 1.0
    if do_cfg:
        text = torch.cat([encode_prompts(tokenizer, text_encoder, [""] * len(prompts)), text])  # 2N 77 D
    x = torch.randn((len(prompts), channels, size, size), generator=generator).to(device)
    x = x * scheduler.init_noise_sigma
    scheduler.set_timesteps(num_inference_steps, device=device)

    def predict(model_input: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        doubled = torch.cat([model_input] * 2) if do_cfg else model_input
        prediction = unet(doubled, t, encoder_hidden_states=text).sample[:, :channels]
        return classifier_free_guidance(prediction, guidance_scale) if do_cfg else prediction

    return sample(scheduler, x, predict, eta=eta, generator=generator).clamp(-1, 1)


@torch.no_grad()
def sample_views(parts: Foundation, prompt: str, num_views: int = 8, cameras=None, num_inference_steps: int = 50,
                 guidance_scale: float = 3.0, generator: Optional[torch.Generator] = None,
                 eta: float = 0.0) -> torch.Tensor:
    """``num_views`` views of one object of ``prompt`` -> ``[V, 3, H, W]`` in [0, 1] on the CPU.

    DDIM (``eta``: 0 deterministic, 1 as stochastic as DDPM) from the folder's noise schedule,
    classifier-free guidance against ``""``, all views in one batch, and :class:`TuneMV3DPipeline`'s
    initial noise (``randn [1, V, C, h, w]`` from ``generator``), so the same seed starts from the same
    noise. ``cameras`` (``Cameras [V]``, default :func:`default_cameras`) condition a
    camera-conditioned (mvdream) UNet; one with self-attention over views is set to ``num_views``
    views. ``parts`` is :func:`~diffusers_mv3d.foundation.load_baseline`'s (or any :class:`Foundation`:
    the foundation's UNet samples its views independently).
    """
    from diffusers.utils.torch_utils import randn_tensor

    from .cameras import default_cameras

    unet = parts.unet
    device, dtype = unet.device, unet.dtype
    size, channels = unet.config.sample_size, unet.config.in_channels
    do_cfg = guidance_scale > 1.0

    # 1. cameras (MVDream's condition) and the views the self-attention spans
    cameras = default_cameras(num_views, size * parts.vae_scale_factor) if cameras is None else cameras
    if len(cameras) != num_views:
        raise ValueError(f"cameras must be Cameras of batch shape [num_views={num_views}], got {len(cameras)}")
    labels = None
    if unet.config.class_embed_type == "projection":
        labels = camera_embedding(cameras.to(device))[None].expand(2 if do_cfg else 1, -1, -1).to(dtype)  # (2) V 16
    if has_multiview_self_attention(unet):
        set_multiview_self_attention(unet, num_views)

    # 2. text (negative first), DDIM timesteps, initial noise
    text = parts.encode_text(["", prompt] if do_cfg else [prompt]).to(device, dtype)  # (2) L D
    scheduler = ddim_scheduler(parts.noise_scheduler.config)
    scheduler.set_timesteps(num_inference_steps, device=device)
    x = randn_tensor((1, num_views, channels, size, size), generator=generator, device=device, dtype=dtype)
    x = x[0] * scheduler.init_noise_sigma  # V C h w

    # 3. denoising: every view in one batch, guidance on the text
    def predict(model_input: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        views = model_input[None]  # 1 V C h w
        doubled = torch.cat([views] * 2) if do_cfg else views  # (2) V C h w
        noise = unet_on_views(unet, doubled, torch.full(doubled.shape[:2], int(t), device=device), text, labels)
        return (classifier_free_guidance(noise, guidance_scale) if do_cfg else noise)[0]  # V C h w

    x = sample(scheduler, x, predict, eta=eta, generator=generator)
    return ((parts.to_images(x).float() + 1) / 2).cpu()
