"""A diffusers ``ControlNetModel`` -> :class:`MultiViewControlNetModel` (:mod:`diffusers_mv3d.assembly`,
``scripts/convert_controlnet.py``).
"""

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..models.multiview_controlnet import MultiViewControlNetModel
from .components import PathLike, _load_model, check_controlnet_fits_unet

CONVERT_SCRIPT = "python scripts/convert_controlnet.py"


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
