from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="diffusers-mv3d",
    version="0.1.0",
    description="TuneMV3D: multi-view 3D generation by tuning a frozen diffusers text-to-image model",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["diffusers_mv3d", "diffusers_mv3d.*"]),
    package_data={"diffusers_mv3d.evaluation": ["attribute_classifier/*"]},
    python_requires=">=3.9",
    install_requires=[
        "diffusers>=0.30",
        "torch>=2.1",
        "transformers>=4.38",
        "accelerate>=0.30",
        "safetensors",
        "huggingface_hub",
        "pyyaml",
        "tokenizers",
        "trimesh",
        "numpy",
        "pillow",
        "scikit-image",
        "scipy",
        "tqdm",
    ],
    extras_require={
        "render": ["embreex"],  # embree ray casting: rendering, mesh colouring, turntables (~1000x faster)
        "demo": ["gradio>=4"],  # diffusers-mv3d demo: the web page around generate
        "dev": ["pytest", "embreex"],
    },
    entry_points={"console_scripts": ["diffusers-mv3d=diffusers_mv3d.cli:main"]},
)
