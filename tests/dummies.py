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
        timestep_embedding_dim=8, background=1.0 if in_channels == 3 else 0.0,
    )


def tiny_controlnet(unet: UNet2DConditionModel) -> MultiViewControlNetModel:
    torch.manual_seed(0)
    return MultiViewControlNetModel.from_unet(unet, geometry_attention_levels=(0, 1), geometry_attention_neighbourhood=3)
