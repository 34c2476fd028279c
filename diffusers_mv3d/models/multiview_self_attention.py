"""MVDream-style multi-view diffusion on a foundation UNet: the baseline TuneMV3D is compared with
(DESIGN.md §6; MVDream: Shi et al., "MVDream: Multi-view Diffusion for 3D Generation", 2023).

MVDream turns a text-to-image UNet into a multi-view one with two changes, both here:

1. *Dense cross-view self-attention* (MVDream §3.1, "3D self-attention"): in every transformer block
   the self-attention (``attn1``) attends over the tokens of all V views of an object at once. The
   views are folded into the batch everywhere else in the UNet; :class:`MultiViewSelfAttnProcessor`
   unfolds them for ``attn1`` only: ``[(B V), N, C] -> [B, (V N), C]``, runs diffusers'
   ``AttnProcessor2_0`` on that, and folds back. Cross-attention (``attn2``, the text) is unchanged.
   No new weights: the foundation's ``to_q/k/v/out`` are reused, as MVDream does.
2. *Camera embedding* (MVDream §3.1, "camera embeddings"): a 2-layer MLP of the flattened 4x4
   camera-to-world matrix added to the timestep embedding. That is diffusers' own
   ``class_embed_type="projection"`` (a ``TimestepEmbedding`` of ``class_labels``, added to the time
   embedding); :func:`camera_conditioned_unet` builds it from a foundation UNet with the MLP's last
   layer zeroed, so that at initialisation it *is* the foundation.

A UNet given both (``camera_conditioned_unet`` + ``set_multiview_self_attention``) is called as
usual on folded views ``[(B V), C, h, w]`` with ``class_labels=camera_embedding(cameras)`` folded to
``[(B V), 16]``; the views of one object must be contiguous (:func:`~diffusers_mv3d.models.views.fold_views`).
"""

from typing import TYPE_CHECKING, Optional

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from .views import unfold_views

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

    from ..cameras import Cameras

__all__ = [
    "CAMERA_EMBEDDING_DIM",
    "MultiViewSelfAttnProcessor",
    "camera_conditioned_unet",
    "camera_embedding",
    "has_multiview_self_attention",
    "set_multiview_self_attention",
]

CAMERA_EMBEDDING_DIM = 16
"""Inputs of the camera MLP: a flattened 4x4 camera-to-world matrix."""


class MultiViewSelfAttnProcessor(AttnProcessor2_0):
    """Self-attention over the tokens of all ``num_views`` views of each object (MVDream's 3D self-attention).

    Args:
        num_views: views V of one object; the attention's batch must be ``B * V`` with the views of
            an object contiguous. ``num_views=1`` is exactly ``AttnProcessor2_0``.

    Only for self-attention layers (``attn1``): it raises on ``encoder_hidden_states`` or a mask.
    """

    def __init__(self, num_views: int):
        super().__init__()
        if int(num_views) < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.num_views = int(num_views)

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                 temb: Optional[torch.Tensor] = None, *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("MultiViewSelfAttnProcessor is for self-attention (attn1) without a mask")
        if hidden_states.dim() != 3:
            raise ValueError(f"MultiViewSelfAttnProcessor expects tokens [(B V), N, C], "
                             f"got {tuple(hidden_states.shape)}")
        folded, tokens, _ = hidden_states.shape
        joint = unfold_views(hidden_states, self.num_views)  # B V N C
        joint = joint.reshape(joint.shape[0], self.num_views * tokens, -1)  # B (V N) C: every view's tokens
        out = super().__call__(attn, joint, None, None, temb, *args, **kwargs)  # B (V N) C'
        return out.reshape(folded, tokens, -1)  # (B V) N C'


def set_multiview_self_attention(unet: "UNet2DConditionModel", num_views: int) -> None:
    """Give every ``attn1`` of ``unet`` a :class:`MultiViewSelfAttnProcessor` of ``num_views``
    (``attn2`` keeps its processor). Call it again to change the number of views."""
    processors = {
        name: MultiViewSelfAttnProcessor(num_views) if name.endswith("attn1.processor") else processor
        for name, processor in unet.attn_processors.items()
    }
    unet.set_attn_processor(processors)


def has_multiview_self_attention(unet: "UNet2DConditionModel") -> bool:
    """Whether :func:`set_multiview_self_attention` was applied to ``unet``."""
    return any(isinstance(p, MultiViewSelfAttnProcessor) for p in unet.attn_processors.values())


def camera_embedding(cameras: "Cameras") -> torch.Tensor:
    """MVDream's camera condition: the flattened camera-to-world matrix (OpenCV axes, :mod:`~diffusers_mv3d.cameras`),
    ``[..., 4, 4] -> [..., 16]``."""
    return cameras.cam2world.flatten(-2)


def camera_conditioned_unet(unet: "UNet2DConditionModel") -> "UNet2DConditionModel":
    """The foundation ``unet`` plus a camera MLP added to its timestep embedding (MVDream §3.1).

    Built from ``unet``'s config with ``class_embed_type="projection"`` and
    ``projection_class_embeddings_input_dim=16``; every foundation weight is copied, the new
    ``class_embedding`` (``linear_1 -> SiLU -> linear_2``) is freshly initialised from the global RNG
    with ``linear_2`` zeroed, so the camera adds exactly 0 and the result equals ``unet`` until trained.
    The copy is float32 on ``unet``'s device (the trainer's master weights).
    """
    from diffusers import UNet2DConditionModel

    if unet.config.class_embed_type is not None or unet.config.num_class_embeds is not None:
        raise ValueError(f"the foundation UNet already has a class embedding ({unet.config.class_embed_type!r}); "
                         "the camera embedding needs its slot")
    cameras = UNet2DConditionModel.from_config(
        unet.config, class_embed_type="projection", projection_class_embeddings_input_dim=CAMERA_EMBEDDING_DIM
    ).to(unet.device)
    missing, unexpected = cameras.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(not key.startswith("class_embedding.") for key in missing):
        raise ValueError(f"camera UNet does not match the foundation: missing {missing}, unexpected {unexpected}")
    torch.nn.init.zeros_(cameras.class_embedding.linear_2.weight)
    torch.nn.init.zeros_(cameras.class_embedding.linear_2.bias)
    return cameras
