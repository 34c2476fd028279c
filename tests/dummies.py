"""Tiny random components built from configs (no download), shared by the tests."""
import torch
from diffusers import UNet2DConditionModel

from diffusers_mv3d.models.latent_sparse_neus import LatentSparseNeuS
from diffusers_mv3d.models.multiview_controlnet import MultiViewControlNetModel

TEXT_DIM = 16


def tiny_unet(in_channels: int = 3, sample_size: int = 16) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=2,
        norm_num_groups=8,
    )


def tiny_neus(in_channels: int = 3) -> LatentSparseNeuS:
    torch.manual_seed(0)
    return LatentSparseNeuS(
        in_channels=in_channels, feature_channels=8, encoder_channels=8, hidden_dim=16, num_sdf_layers=2,
        num_color_layers=1, num_frequencies=2, num_coarse_samples=8, num_importance_samples=4,
        timestep_embedding_dim=8, background=1.0 if in_channels == 3 else 0.0, render_resolution=8,
    )


def tiny_controlnet(unet: UNet2DConditionModel) -> MultiViewControlNetModel:
    torch.manual_seed(0)
    return MultiViewControlNetModel.from_unet(unet, geometry_attention_levels=(0, 1), geometry_attention_neighbourhood=3)


def tiny_text():
    """A word tokenizer over a few captions and a 16-wide CLIP text encoder."""
    from diffusers_mv3d.training.text import build_text_encoder, train_word_tokenizer

    tokenizer = train_word_tokenizer(["a red chair with armrests", "a blue mug", "a green tree on a hill"])
    torch.manual_seed(0)
    return tokenizer, build_text_encoder(tokenizer, hidden_size=TEXT_DIM, num_layers=1, num_heads=2)


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, sample_size=16,
    )


def tiny_pipeline(latent: bool = False, consistency_ratio: float = 0.0):
    """A TuneMV3DPipeline of tiny random parts: pixel space 16x16, or latent space 8x8 -> 16x16 images."""
    from diffusers import DDIMScheduler

    from diffusers_mv3d.pipelines import TuneMV3DPipeline
    from diffusers_mv3d.schedulers import ConsistencyGuidanceScheduler

    channels = 4 if latent else 3
    unet = tiny_unet(channels, sample_size=8 if latent else 16)
    tokenizer, text_encoder = tiny_text()
    scheduler = ConsistencyGuidanceScheduler.wrap(DDIMScheduler(clip_sample=False), consistency_ratio=consistency_ratio)
    pipe = TuneMV3DPipeline(
        unet=unet, controlnet=tiny_controlnet(unet), neus=tiny_neus(channels).eval(), scheduler=scheduler,
        text_encoder=text_encoder, tokenizer=tokenizer, vae=tiny_vae() if latent else None,
    )
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # as from_pretrained leaves them
    pipe.set_progress_bar_config(disable=True)
    return pipe


def randomize_branch(pipe, std=0.01):
    """Give the zero-initialised parts of a fresh branch non-zero weights (a 'trained' branch)."""
    torch.manual_seed(1)
    for name, p in pipe.controlnet.named_parameters():
        if "controlnet_" in name or "to_out" in name or "conv_out" in name:
            torch.nn.init.normal_(p, std=std)
