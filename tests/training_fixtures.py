"""Helpers the trainer tests share: rendered objects and reading weights back.

Imported by ``tests/test_train_tunemv3d.py`` and ``tests/test_train_reconstructor.py`` (pytest puts
``tests/`` on ``sys.path``, as for ``dummies.py``).
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def render_objects(out: Path, num_objects: int = 4, resolution: int = 16, save_mesh: bool = False) -> Path:
    """``num_objects`` procedurally rendered objects (objects3d split; with ``mesh.glb`` if ``save_mesh``) in ``out``."""
    from diffusers_mv3d.data.render_dataset import RenderConfig, render

    render(RenderConfig(out=str(out), split="objects3d", num_objects=num_objects, resolution=resolution, workers=1,
                        save_mesh=save_mesh))
    return out


def weights(path: Path) -> dict:
    """The tensors of a safetensors file."""
    from safetensors.torch import load_file

    return load_file(str(path))
