from pathlib import Path

from .pipeline_tunemv3d import TuneMV3DPipeline, TuneMV3DPipelineOutput

CUSTOM_PIPELINE = str(Path(__file__).with_name("custom_pipeline.py"))
"""Path for ``DiffusionPipeline.from_pretrained(folder, custom_pipeline=CUSTOM_PIPELINE, trust_remote_code=True)``."""

__all__ = ["CUSTOM_PIPELINE", "TuneMV3DPipeline", "TuneMV3DPipelineOutput"]
