"""``diffusers-mv3d generate``: the main job. A prompt (and optionally a reference image) -> views,
a grid, cameras, a coloured mesh and a turntable, with the embedded default model unless told otherwise.

    diffusers-mv3d generate "a blue chair with armrests" --views 8 --steps 50 --seed 0 --out outputs/chair
"""

import argparse
import json
import time
from pathlib import Path
from typing import List, Optional

import PIL.Image

from .io_utils import atomic_write

REPO_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_DEFAULT = REPO_ROOT / "pipelines" / "tunemv3d-tiny"


def view_grid(images: List[PIL.Image.Image], columns: Optional[int] = None) -> PIL.Image.Image:
    """Tile equally sized views left to right, top to bottom (``columns`` defaults to all in one row
    up to 8)."""
    columns = columns or min(len(images), 8)
    rows = -(-len(images) // columns)
    width, height = images[0].size
    grid = PIL.Image.new("RGB", (columns * width, rows * height), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid


def resolve_model(model: Optional[str]) -> str:
    """``--model`` or the embedded default folder; a clear error when the default is missing."""
    if model:
        return model
    if not (EMBEDDED_DEFAULT / "model_index.json").exists():
        raise SystemExit(
            f"the embedded default model is missing at {EMBEDDED_DEFAULT}; pass --model DIR-or-Hub-id "
            "(docs/training.md shows how to train it)"
        )
    return str(EMBEDDED_DEFAULT)


def load_pipeline(model: Optional[str] = None):
    """The :class:`TuneMV3DPipeline` at ``model`` (a folder or Hub id; default: the embedded one)."""
    from .pipelines import TuneMV3DPipeline

    return TuneMV3DPipeline.from_pretrained(resolve_model(model))


def generate(
    prompt: str,
    out: Path,
    model: Optional[str] = None,
    views: int = 8,
    steps: int = 50,
    seed: int = 0,
    image: Optional[Path] = None,
    guidance_scale: float = 3.0,
    consistency_ratio: Optional[float] = None,
    consistency_scale: Optional[float] = None,
    eta: Optional[float] = None,
    mesh: bool = True,
    mesh_resolution: int = 64,
    turntable_frames: int = 24,
    pipe=None,
) -> dict:
    """Run the pipeline and write ``view_XX.png``, ``views.png``, ``cameras.json``, ``mesh.glb`` and
    ``turntable.gif`` into ``out``. Returns ``{name: path}`` of what was written and the timing.

    ``pipe``: an already loaded pipeline (the demo loads one for all its requests); ``model`` is then
    unused. Otherwise the pipeline at ``model`` is loaded (:func:`load_pipeline`)."""
    import torch

    from .mesh import export_mesh, save_turntable_gif
    from .mesh import turntable_frames as render_turntable

    if views < 1:
        raise SystemExit(f"--views must be >= 1, got {views}")
    if steps < 1:
        raise SystemExit(f"--steps must be >= 1, got {steps}")
    if image is not None and not Path(image).is_file():
        raise SystemExit(f"--image {image} is not a file")
    if pipe is None:
        pipe = load_pipeline(model)
    reference = None
    if image is not None:
        reference = PIL.Image.open(image).convert("RGBA").resize((pipe.image_size, pipe.image_size), PIL.Image.BICUBIC)
    start = time.perf_counter()
    result = pipe(
        prompt or None,
        num_views=views,
        image=reference,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        consistency_ratio=consistency_ratio,
        consistency_scale=consistency_scale,
        eta=eta,
        generator=torch.Generator().manual_seed(seed),
        return_mesh=mesh,
        mesh_resolution=mesh_resolution,
    )
    seconds = time.perf_counter() - start

    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, view in enumerate(result.images):
        path = out / f"view_{i:02d}.png"
        atomic_write(path, lambda tmp, view=view: view.save(tmp, format="PNG"))
        written[path.stem] = path
    written["views"] = out / "views.png"
    atomic_write(written["views"], lambda tmp: view_grid(result.images).save(tmp, format="PNG"))
    written["cameras"] = out / "cameras.json"
    payload = json.dumps({**result.cameras.to_dict(), "prompt": prompt, "seed": seed}, indent=1)
    atomic_write(written["cameras"], lambda tmp: Path(tmp).write_text(payload))
    if result.mesh is not None:
        written["mesh"] = Path(export_mesh(result.mesh, out / "mesh.glb"))
        frames = render_turntable(result.mesh, num_frames=turntable_frames, resolution=128)
        written["turntable"] = Path(save_turntable_gif(frames, out / "turntable.gif"))
    return {"files": written, "seconds": seconds}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate consistent views, a mesh and a turntable from a prompt",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("prompt", nargs="?", default="", help="caption of the object (may be empty with --image)")
    parser.add_argument("--views", type=int, default=8, help="views around the object")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--image", type=Path, default=None, help="reference image for view 0 (image-to-multiview)")
    parser.add_argument("--model", default=None, help="pipeline folder or Hub id (default: the embedded pipelines/tunemv3d-tiny)")
    parser.add_argument("--out", type=Path, default=Path("outputs/generate"), help="output folder")
    parser.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance on the text")
    parser.add_argument("--consistency-ratio", type=float, default=None, help="K, fraction of consistency steps (model default if unset)")
    parser.add_argument("--consistency-scale", type=float, default=None, help="alpha of eq. 4 (model default if unset)")
    parser.add_argument("--eta", type=float, default=None, help="DDIM's eta: 0 deterministic, 1 stochastic (model default if unset)")
    parser.add_argument("--mesh-resolution", type=int, default=64, help="marching-cubes grid size")
    parser.add_argument("--no-mesh", action="store_true", help="skip the mesh and the turntable")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.prompt and args.image is None:
        raise SystemExit("give a prompt, or --image for image-to-multiview")
    result = generate(
        args.prompt, args.out, model=args.model, views=args.views, steps=args.steps, seed=args.seed,
        image=args.image, guidance_scale=args.guidance_scale, consistency_ratio=args.consistency_ratio,
        consistency_scale=args.consistency_scale, eta=args.eta, mesh=not args.no_mesh, mesh_resolution=args.mesh_resolution,
    )
    files = result["files"]
    print(f"generated {args.views} views in {result['seconds']:.1f} s; wrote to {args.out}/:")
    for name in ("views", "cameras", "mesh", "turntable"):
        if name in files:
            print(f"  {files[name]}")
    print(f"  view_00.png ... view_{args.views - 1:02d}.png")
    return 0
