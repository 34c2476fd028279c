"""diffusers-mv3d: TuneMV3D multi-view 3D generation as a diffusers plugin.

Every pipeline component is exported here: diffusers' loader imports ``diffusers_mv3d`` and takes
the class named in ``model_index.json`` from it.
"""

__version__ = "0.1.0"

from .cameras import Cameras, default_cameras
from .captioning import RetrievalCaptioner
from .models import GeometryAwareAttention, LatentSparseNeuS, LatentSparseNeuSOutput, MultiViewControlNetModel
from .pipelines import TuneMV3DPipeline, TuneMV3DPipelineOutput
from .schedulers import ConsistencyGuidanceScheduler

__all__ = [
    "Cameras",
    "ConsistencyGuidanceScheduler",
    "GeometryAwareAttention",
    "LatentSparseNeuS",
    "LatentSparseNeuSOutput",
    "MultiViewControlNetModel",
    "RetrievalCaptioner",
    "TuneMV3DPipeline",
    "TuneMV3DPipelineOutput",
    "default_cameras",
]
