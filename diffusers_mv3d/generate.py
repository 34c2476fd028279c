"""``diffusers-mv3d generate``: the main job. A prompt (and optionally a reference image) -> views,
a grid, cameras, a coloured mesh and a turntable, with the embedded default model unless told otherwise.

    diffusers-mv3d generate "a blue chair with armrests" --views 8 --steps 30 --seed 0 --out outputs/chair
"""

import argparse
import functools
import json
import math
import time
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import PIL.Image

from .data.render import embree_available
from .io_utils import atomic_write
from .threads import torch_threads

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
# the embedded default: inside the installed package (setup.py copies it there when building a wheel
# or a plain `pip install .`), or in the source tree's pipelines/ (editable installs, a checkout)
EMBEDDED_DEFAULT_CANDIDATES = (PACKAGE_DIR / "default_pipeline", REPO_ROOT / "pipelines" / "tunemv3d-tiny")
EMBEDDED_DEFAULT = next((p for p in EMBEDDED_DEFAULT_CANDIDATES if (p / "model_index.json").is_file()),
                        EMBEDDED_DEFAULT_CANDIDATES[-1])


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
        raise ValueError(
            f"the embedded default model is missing (looked in {', '.join(map(str, EMBEDDED_DEFAULT_CANDIDATES))}); "
            "pass --model DIR-or-Hub-id (docs/training.md shows how to train it)"
        )
    return str(EMBEDDED_DEFAULT)


def check_orbit(views: Optional[int], elevation: Optional[float], azimuths: Optional[Sequence[float]]):
    """Validate the cameras a generate call asks for: ``views`` evenly spaced azimuths (8 by default), or
    one view per angle of ``azimuths``, at ``elevation`` degrees (20 by default).

    Returns ``(num_views, orbit)``: ``orbit`` is ``(elevation, azimuths)`` for :func:`orbit_cameras`,
    or None for the pipeline's default orbit (neither ``elevation`` nor ``azimuths`` given)."""
    from .cameras import DEFAULT_ELEVATION, DEFAULT_NUM_VIEWS

    if azimuths is not None:
        azimuths = [float(a) for a in azimuths]
        if not azimuths:
            raise ValueError("--azimuths needs at least one angle (degrees)")
        if views is not None and views != len(azimuths):
            raise ValueError(f"--views {views} disagrees with the {len(azimuths)} --azimuths given (leave --views out)")
        views = len(azimuths)
    views = DEFAULT_NUM_VIEWS if views is None else views
    if isinstance(views, bool) or not isinstance(views, int) or views < 1:
        raise ValueError(f"--views must be a whole number >= 1, got {views!r}")
    if elevation is not None and not -89.0 <= float(elevation) <= 89.0:
        raise ValueError(f"--elevation must lie in [-89, 89] degrees, got {elevation}")
    if elevation is None and azimuths is None:
        return views, None
    elevation = DEFAULT_ELEVATION if elevation is None else float(elevation)
    return views, (elevation, azimuths or [i * 360.0 / views for i in range(views)])


def orbit_cameras(orbit, resolution: int):
    """``Cameras`` of an ``orbit`` from :func:`check_orbit` (radius and field of view as the default cameras)."""
    import torch

    from .cameras import Cameras

    elevation, azimuths = orbit
    return Cameras.orbit(elevation, torch.tensor(azimuths, dtype=torch.float32), height=resolution)


def load_pipeline(model: Optional[str] = None):
    """The :class:`TuneMV3DPipeline` at ``model`` (a folder or Hub id; default: the embedded one).

    Raises:
        ValueError: naming ``--model`` and why it did not load (missing, empty, truncated weights, bad
            JSON, another pipeline class, ...).
    """
    from .pipelines import TuneMV3DPipeline

    source = resolve_model(model)
    try:
        return TuneMV3DPipeline.from_pretrained(source)
    except Exception as error:  # diffusers, hub, JSON and safetensors errors of every kind: one message
        raise ValueError(f"--model {source!r} could not be loaded as a TuneMV3D pipeline "
                         f"({type(error).__name__}: {str(error)[:300]})") from error


def generate(
    prompt: str,
    out: Path,
    model: Optional[str] = None,
    views: Optional[int] = None,
    steps: int = 30,
    seed: int = 0,
    image: Optional[Path] = None,
    guidance_scale: Optional[float] = None,
    consistency_ratio: Optional[float] = None,
    consistency_scale: Optional[float] = None,
    eta: Optional[float] = None,
    mesh: bool = True,
    mesh_resolution: int = 64,
    turntable_frames: int = 24,
    elevation: Optional[float] = None,
    azimuths: Optional[Sequence[float]] = None,
    pipe=None,
    step_callback: Optional[Callable[[int, int], None]] = None,
    caption_image: bool = False,
) -> dict:
    """Run the pipeline and write ``view_XX.png``, ``views.png``, ``cameras.json``, ``mesh.glb`` and
    ``turntable.gif`` into ``out`` (files of an earlier run there that this one does not write are
    removed). Returns ``{"files": {name: path}, "seconds": sampling time, "views": V}``.

    ``views`` / ``elevation`` / ``azimuths``: the orbit of the cameras (:func:`check_orbit`).
    ``pipe``: an already loaded pipeline (the demo loads one for all its requests); ``model`` is then
    unused. Otherwise the pipeline at ``model`` is loaded (:func:`load_pipeline`).
    ``step_callback(done, total)`` is called after every denoising step (the demo's progress bar).
    ``caption_image``: with ``image`` and no ``prompt``, caption the image with the package's attribute
    classifier (``"a <colour> <category>"``, :func:`caption_reference`) and use that as the prompt.
    Returns it as ``"prompt"``.

    Raises:
        ValueError: bad arguments (named as the command line's flags), checked before the model loads.
    """
    import torch

    from .mesh import export_mesh, save_turntable_gif
    from .mesh import turntable_frames as render_turntable

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--steps must be a whole number >= 1, got {steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"--seed must be a whole number from 0 to 2**64 - 1, got {seed!r}")
    if consistency_ratio is not None and not 0.0 <= consistency_ratio <= 1.0:
        raise ValueError(f"--consistency-ratio must lie in [0, 1], got {consistency_ratio}")
    for flag, value in (("--guidance-scale", guidance_scale), ("--consistency-scale", consistency_scale), ("--eta", eta)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{flag} must be a finite number >= 0, got {value}")
    if mesh and (isinstance(mesh_resolution, bool) or not isinstance(mesh_resolution, int) or mesh_resolution < 8):
        raise ValueError(f"--mesh-resolution must be a whole number >= 8, got {mesh_resolution!r}")
    if image is not None and not Path(image).is_file():
        raise ValueError(f"--image {image} is not a file")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    views, orbit = check_orbit(views, elevation, azimuths)
    if mesh and not embree_available():
        warnings.warn("the mesh step needs embree ray casting (pip install embreex), which is not installed: "
                      "skipping mesh.glb and turntable.gif (without embree it would take many minutes)")
        mesh = False
    reference = None
    if image is not None:
        try:
            reference = PIL.Image.open(image).convert("RGBA")
        except (OSError, PIL.UnidentifiedImageError) as error:
            raise ValueError(f"--image {image} is not an image PIL can read ({error})") from error
    if pipe is None:
        pipe = load_pipeline(model)
    cameras = orbit_cameras(orbit, pipe.image_size) if orbit is not None else None
    if reference is not None:
        reference = reference.resize((pipe.image_size, pipe.image_size), PIL.Image.BICUBIC)
        if caption_image and not prompt:
            prompt = caption_reference(pipe, reference)

    def on_step_end(_pipe, index, _t, callback_kwargs):
        step_callback(index + 1, steps)
        return callback_kwargs

    start = time.perf_counter()
    result = pipe(
        prompt or None,
        num_views=views,
        cameras=cameras,
        image=reference,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        consistency_ratio=consistency_ratio,
        consistency_scale=consistency_scale,
        eta=eta,
        generator=torch.Generator().manual_seed(seed),
        return_mesh=mesh,
        mesh_resolution=mesh_resolution,
        callback_on_step_end=on_step_end if step_callback is not None else None,
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
    _remove_stale_outputs(out, set(written.values()))
    return {"files": written, "seconds": seconds, "views": views, "prompt": prompt}


def caption_reference(pipe, reference: PIL.Image.Image) -> str:
    """A caption for a reference image (RGBA composited on white, as the pipeline takes it): the caption
    of the pipeline's ``captioner`` (the most similar training object's, docs/results.md "Captions for
    image-to-multiview") in the colour the package's attribute classifier sees, or without a captioner
    the classifier's ``"a <colour> <category>"``. Image-to-multiview follows the reference far better
    with a caption."""
    from .captioning import caption_references

    image = pipe.preprocess_image(reference, "--image")[None]
    return caption_references(image, _packaged_classifier(), getattr(pipe, "captioner", None))[0]


@functools.lru_cache(maxsize=1)
def _packaged_classifier():
    """The package's attribute classifier, loaded once a process (the demo captions every request)."""
    from .evaluation.classifier import AttributeClassifier
    from .evaluation.settings import DEFAULT_CLASSIFIER

    return AttributeClassifier.from_pretrained(DEFAULT_CLASSIFIER)


def _remove_stale_outputs(out: Path, written: set) -> None:
    """Delete the files an earlier generate run left in ``out`` that this run did not rewrite."""
    ours = [*out.glob("view_*.png"), out / "views.png", out / "cameras.json", out / "mesh.glb", out / "turntable.gif"]
    for path in ours:
        if path.is_file() and path not in written:
            path.unlink()


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it is ``None`` (whose help then says what happens when unset)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate consistent views, a mesh and a turntable from a prompt",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("prompt", nargs="?", default="", help="caption of the object (may be empty with --image)")
    parser.add_argument("--views", type=int, default=None, help="views around the object (default: 8, or one per --azimuths angle)")
    parser.add_argument("--elevation", type=float, default=None, help="camera elevation in degrees (default: 20)")
    parser.add_argument("--azimuths", type=float, nargs="+", default=None, metavar="DEG",
                        help="camera azimuths in degrees, one view each (default: --views angles evenly spaced)")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps (30: docs/results.md, \"Cost of sampling\")")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--image", type=Path, default=None, help="reference image for view 0 (image-to-multiview)")
    parser.add_argument("--no-auto-caption", action="store_true",
                        help="with --image and no prompt, sample without a caption instead of captioning the image "
                             "(the model's captioner, or the package's attribute classifier)")
    parser.add_argument("--model", default=None, help="pipeline folder or Hub id (default: the embedded pipelines/tunemv3d-tiny)")
    parser.add_argument("--out", type=Path, default=Path("outputs/generate"), help="output folder")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance on the text, 1 = none (model default if unset)")
    parser.add_argument("--consistency-ratio", type=float, default=None, help="K, fraction of consistency steps (model default if unset)")
    parser.add_argument("--consistency-scale", type=float, default=None, help="alpha of eq. 4 (model default if unset)")
    parser.add_argument("--eta", type=float, default=None, help="DDIM's eta: 0 deterministic, 1 stochastic (model default if unset)")
    parser.add_argument("--mesh-resolution", type=int, default=64, help="marching-cubes grid size")
    parser.add_argument("--no-mesh", action="store_true", help="skip the mesh and the turntable")
    parser.add_argument("--num-threads", type=int, default=0,
                        help="CPU threads (0: torch's default, one a core); on a machine whose cores are busy, 1 "
                             "avoids threads waiting on each other (several times faster there: docs/results.md)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.prompt and args.image is None:
        raise ValueError("give a prompt, or --image for image-to-multiview")
    if not args.prompt and args.no_auto_caption:
        print("note: --image without a caption: the other views follow the foundation without a prompt and "
              "rarely show the reference's object; give its caption too (docs/results.md, image-to-multiview)")
    if args.num_threads < 0:
        raise ValueError(f"--num-threads must be >= 0 (0: torch's default), got {args.num_threads}")
    with torch_threads(args.num_threads or None):
        result = generate(
            args.prompt, args.out, model=args.model, views=args.views, steps=args.steps, seed=args.seed,
            image=args.image, guidance_scale=args.guidance_scale, consistency_ratio=args.consistency_ratio,
            consistency_scale=args.consistency_scale, eta=args.eta, mesh=not args.no_mesh,
            mesh_resolution=args.mesh_resolution, elevation=args.elevation, azimuths=args.azimuths,
            caption_image=not args.no_auto_caption,
        )
    if result["prompt"] != args.prompt:
        print(f"captioned --image as {result['prompt']!r} (give a caption to choose your own, --no-auto-caption for none)")
    files, views = result["files"], result["views"]
    print(f"generated {views} views in {result['seconds']:.1f} s; wrote to {args.out}/:")
    for name in ("views", "cameras", "mesh", "turntable"):
        if name in files:
            print(f"  {files[name]}")
    print(f"  view_00.png ... view_{views - 1:02d}.png")
    return 0
