from .geometry_attention import GeometryAwareAttention
from .latent_sparse_neus import LatentSparseNeuS, LatentSparseNeuSOutput, NeuSContext
from .multiview_controlnet import MultiViewControlNetModel

__all__ = ["GeometryAwareAttention", "LatentSparseNeuS", "LatentSparseNeuSOutput", "MultiViewControlNetModel", "NeuSContext"]
