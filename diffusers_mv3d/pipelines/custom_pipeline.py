"""A one-import module for diffusers' custom-pipeline loader.

``DiffusionPipeline.from_pretrained`` finds pipeline classes in the ``diffusers`` namespace only; for
any other class diffusers 0.42 loads a custom-pipeline *file*, copied into its module cache and
imported on its own (so it must import absolutely). This is that file::

    from diffusers import DiffusionPipeline
    from diffusers_mv3d.pipelines import CUSTOM_PIPELINE
    pipe = DiffusionPipeline.from_pretrained(folder, custom_pipeline=CUSTOM_PIPELINE, trust_remote_code=True)

``TuneMV3DPipeline.from_pretrained(folder)`` needs none of this.
"""

from diffusers_mv3d.pipelines.pipeline_tunemv3d import TuneMV3DPipeline  # noqa: F401
