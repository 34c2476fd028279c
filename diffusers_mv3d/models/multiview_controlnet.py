"""MultiViewControlNetModel: the multi-view modulation of TuneMV3D (paper §3.2).

A trainable copy O of the frozen UNet's encoder (conv_in, time embedding, down blocks, mid block;
a ``diffusers.ControlNetModel`` made by ``ControlNetModel.from_unet``) takes the LatentSparseNeuS
render of x0 as its condition through a zero-initialised conditioning embedding (the *centralized*
geometric condition, ``h_hat = h + ZeroConv(g)``), runs GeometryAwareAttention between views at
chosen levels (the *pairwise* condition, §3.1.2), and returns zero-convolved residuals in the form
``UNet2DConditionModel`` takes as ``down_block_additional_residuals`` / ``mid_block_additional_residual``.

Views are folded into the batch, ``[B, V, ...] -> [(B V), ...]``, so the residuals line up with a
UNet call on the folded views. Without a NeuS render (the consistency-guidance pass of §3.3) the
branch sees each view alone: no condition and no cross-view attention.
"""

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.controlnets.controlnet import ControlNetOutput
from diffusers.models.modeling_utils import ModelMixin

from ..cameras import Cameras
from .geometry_attention import GeometryAwareAttention
from .views import fold_views, per_view_timesteps, unfold_views


class MultiViewControlNetModel(ModelMixin, ConfigMixin):
    r"""The TuneMV3D branch: ControlNet encoder copy + NeuS condition + geometry-aware attention.

    Args:
        encoder_config (`dict`, *optional*): config of the inner ``diffusers.ControlNetModel`` (the
            trainable encoder copy O and its zero convolutions). ``from_unet`` fills it from a UNet;
            ``None`` gives diffusers' default (Stable Diffusion 1.x sized) ControlNet.
        geometry_attention_levels (`tuple[int]`, defaults to `(1,)`): indices of the down blocks after
            which GeometryAwareAttention runs (on the block's output).
        geometry_attention_heads (`int`, defaults to 1): heads of each attention layer.
        geometry_attention_neighbourhood (`int`, defaults to 3): side n of the frustum's pixel block.
        geometry_attention_samples (`int`, defaults to 1): NeuS samples (largest weight first) kept per ray.
    """

    @register_to_config
    def __init__(
        self,
        encoder_config: Optional[Dict[str, Any]] = None,
        geometry_attention_levels: Sequence[int] = (1,),
        geometry_attention_heads: int = 1,
        geometry_attention_neighbourhood: int = 3,
        geometry_attention_samples: int = 1,
    ):
        super().__init__()
        self.encoder = ControlNetModel.from_config(dict(encoder_config or {}))
        channels = self.encoder.config.block_out_channels
        levels = sorted({int(level) for level in geometry_attention_levels})
        if any(level < 0 or level >= len(channels) for level in levels):
            raise ValueError(
                f"geometry_attention_levels={tuple(geometry_attention_levels)} must index the "
                f"{len(channels)} down blocks (0..{len(channels) - 1})"
            )
        self.geometry_attention = nn.ModuleDict(
            {
                str(level): GeometryAwareAttention(
                    channels[level], geometry_attention_heads, geometry_attention_neighbourhood, geometry_attention_samples
                )
                for level in levels
            }
        )

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        conditioning_embedding_out_channels: Tuple[int, ...] = (16,),
        **kwargs,
    ) -> "MultiViewControlNetModel":
        """Start the branch from a frozen UNet, as ``ControlNetModel.from_unet`` does.

        The encoder's conv_in, time embedding, down blocks, mid block (and IF's text projection) are
        copied; the condition embedding takes a render with the UNet's ``in_channels`` and, with the
        default one-stage ``conditioning_embedding_out_channels``, keeps its resolution. ``kwargs`` are
        this class's geometry-attention arguments.
        """
        encoder = ControlNetModel.from_unet(
            unet,
            conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
            conditioning_channels=unet.config.in_channels,
        )
        if getattr(unet, "encoder_hid_proj", None) is not None:  # ControlNetModel.from_unet leaves it random
            encoder.encoder_hid_proj.load_state_dict(unet.encoder_hid_proj.state_dict())
        config = {k: v for k, v in encoder.config.items() if not k.startswith("_")}
        model = cls(encoder_config=config, **kwargs)
        model.encoder.load_state_dict(encoder.state_dict())
        return model

    def _embed(self, timesteps: torch.Tensor, text: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """Time (+ IF's text) embedding and the projected text, as the UNet computes them."""
        encoder = self.encoder
        emb = encoder.time_embedding(encoder.time_proj(timesteps).to(dtype))
        addition = encoder.config.addition_embed_type
        if addition == "text":
            emb = emb + encoder.add_embedding(text)
        elif addition is not None or encoder.class_embedding is not None:
            raise NotImplementedError(f"addition_embed_type={addition!r} / class embeddings are not supported")
        if encoder.encoder_hid_proj is not None:
            text = encoder.encoder_hid_proj(text)
        return emb, text

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Union[int, float, torch.Tensor],
        encoder_hidden_states: torch.Tensor,
        cameras: Optional[Cameras] = None,
        neus_render: Optional[torch.Tensor] = None,
        sample_points: Optional[torch.Tensor] = None,
        sample_weights: Optional[torch.Tensor] = None,
        conditioning_scale: float = 1.0,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        return_dict: bool = True,
    ) -> Union[ControlNetOutput, Tuple]:
        """
        Args:
            sample: ``[B, V, C, H, W]`` noisy views x_t.
            timestep: scalar, ``[B]`` or ``[B, V]``.
            encoder_hidden_states: ``[B, L, D]`` text embeddings of each object (or ``[(B V), L, D]``).
            cameras: batch shape ``[V]`` or ``[B, V]``; needed with ``sample_points``.
            neus_render: ``[B, V, C, h, w]`` the NeuS x0 render (the centralized condition); resized to
                ``H x W``. ``None`` drops the NeuS condition (§3.3).
            sample_points, sample_weights: ``[B, V, h * w, S, 3]`` / ``[B, V, h * w, S]`` NeuS samples for
                the geometry-aware attention (rays at the render's ``h x w``).
            conditioning_scale: multiplies every residual.
            cross_attention_kwargs: passed to the encoder's attention processors, as diffusers'
                ControlNetModel does (e.g. ``{"scale": ...}`` for LoRA layers).

        Returns:
            ``ControlNetOutput`` with ``down_block_res_samples`` (tuple of ``[(B V), C_k, H_k, W_k]``) and
            ``mid_block_res_sample``, or the tuple ``(down, mid)`` when ``return_dict=False``.
        """
        if sample.dim() != 5:
            raise ValueError(f"sample must be [B, V, C, H, W], got {tuple(sample.shape)}")
        batch, views = sample.shape[:2]
        use_attention = sample_points is not None and len(self.geometry_attention) > 0
        if use_attention and (cameras is None or neus_render is None or sample_weights is None):
            raise ValueError("sample_points needs cameras, neus_render and sample_weights")
        if encoder_hidden_states.shape[0] == batch:
            encoder_hidden_states = encoder_hidden_states.repeat_interleave(views, dim=0)
        x = fold_views(sample)
        timesteps = per_view_timesteps(timestep, batch, views).reshape(-1).to(sample.device)

        # 1. time and text embeddings of every view
        emb, text = self._embed(timesteps, encoder_hidden_states, x.dtype)

        # 2. the centralized geometric condition enters through the zero-initialised embedding
        hidden = self.encoder.conv_in(x)
        if neus_render is not None:
            condition = fold_views(neus_render).to(x.dtype)
            if condition.shape[-2:] != x.shape[-2:]:
                condition = F.interpolate(condition, size=x.shape[-2:], mode="bilinear", align_corners=False)
            hidden = hidden + self.encoder.controlnet_cond_embedding(condition)

        # 3. down blocks, with the pairwise geometric condition after the chosen ones
        residuals = (hidden,)
        for level, block in enumerate(self.encoder.down_blocks):
            if getattr(block, "has_cross_attention", False):
                hidden, block_residuals = block(hidden_states=hidden, temb=emb, encoder_hidden_states=text,
                                                cross_attention_kwargs=cross_attention_kwargs)
            else:
                hidden, block_residuals = block(hidden_states=hidden, temb=emb)
            if use_attention and str(level) in self.geometry_attention:
                batched_cameras = cameras if len(cameras.batch_shape) == 2 else cameras.expand(batch)
                attended = self.geometry_attention[str(level)](
                    unfold_views(hidden, views), batched_cameras, sample_points, sample_weights,
                    tuple(neus_render.shape[-2:]),
                )
                hidden = fold_views(attended)
                block_residuals = block_residuals[:-1] + (hidden,)
            residuals += block_residuals

        # 4. mid block
        if self.encoder.mid_block is not None:
            if getattr(self.encoder.mid_block, "has_cross_attention", False):
                hidden = self.encoder.mid_block(hidden, emb, encoder_hidden_states=text,
                                                cross_attention_kwargs=cross_attention_kwargs)
            else:
                hidden = self.encoder.mid_block(hidden, emb)

        # 5. zero convolutions
        down = tuple(
            conv(residual) * conditioning_scale for residual, conv in zip(residuals, self.encoder.controlnet_down_blocks)
        )
        mid = self.encoder.controlnet_mid_block(hidden) * conditioning_scale
        if not return_dict:
            return down, mid
        return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)
