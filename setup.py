import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
DEFAULT_PIPELINE = HERE / "pipelines" / "tunemv3d-tiny"


class BuildWithDefaultPipeline(build_py):
    """Copy the embedded default model into the built package as ``diffusers_mv3d/default_pipeline``,
    so that a plain ``pip install .`` or a wheel can run ``diffusers-mv3d generate`` from any folder
    (editable installs read ``pipelines/tunemv3d-tiny`` in the source tree instead)."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False) and DEFAULT_PIPELINE.is_dir():
            target = Path(self.build_lib) / "diffusers_mv3d" / "default_pipeline"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(DEFAULT_PIPELINE, target)


setup(
    name="diffusers-mv3d",
    version="0.1.0",
    description="TuneMV3D: multi-view 3D generation by tuning a frozen diffusers text-to-image model",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["diffusers_mv3d", "diffusers_mv3d.*"]),
    package_data={"diffusers_mv3d.evaluation": ["attribute_classifier/*"]},
    # lower bounds: the versions CI installs and tests (2026-12); older ones may work but are untested
    python_requires=">=3.11",
    install_requires=[
        "diffusers>=0.42",
        "torch>=2.13",
        "transformers>=5.24",
        "accelerate>=1.15",
        "safetensors>=0.8",
        "huggingface_hub>=2.4",
        "pyyaml>=6.0",
        "tokenizers>=0.23",
        "trimesh>=5.2",
        "numpy>=2.4",
        "pillow>=12.3",
        "scikit-image>=0.26",
        "scipy>=1.17",
        "tqdm>=4.70",
        # embree ray casting for the mesh step of generate (vertex colours, turntable) and for rendering;
        # where no wheel exists generate skips the mesh step with a warning
        'embreex; platform_machine == "x86_64" or platform_machine == "AMD64"',
    ],
    extras_require={
        "render": ["embreex"],  # embree ray casting: rendering, mesh colouring, turntables (~1000x faster)
        # diffusers-mv3d demo: the web page around generate; embreex for its default click's mesh and turntable
        "demo": ["gradio>=5", 'embreex; platform_machine == "x86_64" or platform_machine == "AMD64"'],
        # the whole test suite: tests/test_demo_browser.py also needs Debian's chromium and chromium-driver
        "dev": ["pytest", "embreex", "gradio>=5", "selenium"],
    },
    entry_points={"console_scripts": ["diffusers-mv3d=diffusers_mv3d.cli:main"]},
    cmdclass={"build_py": BuildWithDefaultPipeline},
)
