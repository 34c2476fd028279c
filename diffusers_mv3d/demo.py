"""``diffusers-mv3d demo``: a Gradio web page around ``generate`` (needs the ``[demo]`` extra).

    pip install -e ".[demo]"
    diffusers-mv3d demo --port 7860                      # then open http://127.0.0.1:7860
    diffusers-mv3d demo --model DIR-or-Hub-id --host 0.0.0.0 --share

The pipeline is loaded once; every click of Generate runs :func:`generate.generate` with it into a
fresh folder under ``--out`` and shows the views, the mesh and the turntable, with the denoising steps
as a progress bar. :func:`handle` is the click without any Gradio, so it is tested like any function;
:func:`build_ui` imports Gradio.

The server enforces its own limits (the constants below), whatever the page or a script sends: the
sliders are built from the same constants, but the HTTP API accepts any value, so :func:`handle`
checks every one before anything runs. Every failure reaches the page as a sentence: bad input as a
``ValueError`` naming the field, anything unexpected as a :class:`GenerationError` naming the step,
the exception's type and message (its traceback goes to the server's console).
"""

import argparse
import html
import logging
import math
import re
import tempfile
import time
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Tuple

import PIL.Image

from .cameras import DEFAULT_ELEVATION, DEFAULT_NUM_VIEWS
from .data.render import embree_available
from .generate import DefaultsHelpFormatter, generate, load_pipeline

logger = logging.getLogger(__name__)

# In-split prompts (category and colour both seen in 3D tuning, diffusers_mv3d/data/splits.py).
EXAMPLES = [
    "a red chair with armrests",
    "a blue mug with a handle",
    "a green car with four black wheels",
    "a long orange sofa with three seats",
    "a round tree in green with a brown trunk",
]
INSTALL_HINT = 'the demo needs Gradio: pip install -e ".[demo]"'
NO_MESH = "no mesh and turntable: the server lacks embree ray casting (pip install embreex)"


class Limit(NamedTuple):
    """A number the page asks for: its slider (label, range, default, step) and the server's check."""

    label: str  # the field's name on the page; error messages name it
    low: float
    high: float
    default: Optional[float]  # None: taken from the model (K and alpha: its scheduler config)
    step: float
    whole: bool = True  # a whole number (views, steps, ...) or any number in the range


# The server's limits, used both for the sliders and in handle(): the API accepts any value.
VIEWS = Limit("Views", 1, 16, DEFAULT_NUM_VIEWS, 1)
STEPS = Limit("Steps", 1, 200, 30, 1)
SEED = Limit("Seed", 0, 2**32 - 1, 0, 1)
GUIDANCE = Limit("Guidance scale (text)", 1.0, 15.0, None, 0.5, whole=False)
CONSISTENCY_RATIO = Limit("K: fraction of consistency-guidance steps", 0.0, 1.0, None, 0.05, whole=False)
CONSISTENCY_SCALE = Limit("alpha: consistency-guidance scale (eq. 4)", 0.0, 20.0, None, 0.5, whole=False)
MESH_RESOLUTION = Limit("Mesh resolution", 16, 128, 64, 16)
ELEVATION = Limit("Elevation", -30.0, 60.0, DEFAULT_ELEVATION, 5.0, whole=False)
AZIMUTH = Limit("Azimuths", -360.0, 360.0, None, 1.0, whole=False)  # each angle of the Azimuths field
MAX_PROMPT_CHARS = 300
MAX_AZIMUTHS_CHARS = 200  # the Azimuths field's text (16 angles fit easily)
MAX_IMAGE_BYTES = 20 * 1000 * 1000  # a reference image file; larger uploads are refused
MAX_IMAGE_SIDE = 4096  # a reference image's width and height, read from its header before decoding
MAX_QUEUE = 16  # clicks waiting for the one pipeline; more are turned away with "queue full"


class GenerationError(RuntimeError):
    """An unexpected failure while generating, explained for a person (step, type and message)."""


def _number(value, limit: Limit) -> float:
    """``value`` checked against ``limit``; a ValueError naming the field otherwise."""
    kind = "a whole number" if limit.whole else "a number"
    low, high = (int(limit.low), int(limit.high)) if limit.whole else (limit.low, limit.high)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    if not ok or (limit.whole and not float(value).is_integer()):
        raise ValueError(f"{limit.label} must be {kind} from {low} to {high}, got {repr(value)[:40]}")
    return int(value) if limit.whole else float(value)


def parse_azimuths(text: Optional[str]) -> Optional[List[float]]:
    """The Azimuths field: degrees separated by commas (or spaces); None when it is empty.

    Raises:
        ValueError: not numbers, or not 1..16 of them, or an angle outside -360..360.
    """
    text = (text or "").strip()
    if not text:
        return None
    if len(text) > MAX_AZIMUTHS_CHARS:
        raise ValueError(f"Azimuths is too long ({len(text)} characters, at most {MAX_AZIMUTHS_CHARS})")
    parts = [part for part in re.split(r"[,\s]+", text) if part]
    if not int(VIEWS.low) <= len(parts) <= int(VIEWS.high):
        raise ValueError(f"Azimuths: give {int(VIEWS.low)} to {int(VIEWS.high)} angles in degrees, got {len(parts)}")
    angles = []
    for part in parts:
        try:
            angle = float(part)
        except ValueError:
            raise ValueError(f"Azimuths must be numbers in degrees separated by commas, e.g. 0, 90, 180; "
                             f"got {part[:20]!r}") from None
        if not math.isfinite(angle) or not AZIMUTH.low <= angle <= AZIMUTH.high:
            raise ValueError(f"Azimuths must lie from {AZIMUTH.low:g} to {AZIMUTH.high:g} degrees, got {part[:20]!r}")
        angles.append(angle)
    return angles


def check_reference_image(image: str) -> Path:
    """The reference image's path, after checking its file size and its width and height (read from
    the header, before the pixels are decoded)."""
    path = Path(image)
    if not path.is_file():
        raise ValueError("Reference image was not found on the server: upload it again")
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise ValueError(f"Reference image is too large: {size / 1e6:.1f} MB (at most {MAX_IMAGE_BYTES / 1e6:.0f} MB)")
    too_large = f"Reference image is too large: {{}} pixels (at most {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE})"
    try:
        with PIL.Image.open(path) as opened:  # lazy: reads the header only
            width, height = opened.size
    except PIL.Image.DecompressionBombError:  # PIL's own limit, far above ours
        raise ValueError(too_large.format("more than PIL agrees to decode")) from None
    except (OSError, PIL.UnidentifiedImageError):
        raise ValueError("Reference image is not an image the server can read (PNG, JPEG, WebP, ...)") from None
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
        raise ValueError(too_large.format(f"{width}x{height}"))
    return path


def explain(error: BaseException, step: str) -> str:
    """A sentence for the page about an unexpected ``error`` raised in ``step``: what failed, the
    exception's type and (shortened) message, and what to try."""
    message = " ".join(str(error).split())
    message = message if len(message) <= 300 else message[:297] + "..."
    what = f"{type(error).__name__}: {message}" if message else type(error).__name__
    if isinstance(error, ImportError):
        hint = 'a package is missing on the server; pip install -e ".[demo]" installs what the demo needs'
        if step == "mesh and turntable":
            hint += ', or untick "Mesh and turntable"'
    elif isinstance(error, MemoryError) or "out of memory" in message.lower():
        hint = "the server ran out of memory; try fewer views or a lower mesh resolution"
    else:
        hint = "the server's console has the traceback"
    return f"The {step} step failed ({what}); {hint}."


def handle(
    pipe,
    out: Path,
    prompt: str,
    image: Optional[str],
    views: int,
    steps: int,
    seed: int,
    guidance_scale: Optional[float],
    consistency_ratio: Optional[float],
    consistency_scale: Optional[float],
    mesh: bool,
    mesh_resolution: int = 64,
    elevation: float = DEFAULT_ELEVATION,
    azimuths: Optional[str] = None,
    progress: Optional[Callable] = None,
) -> Tuple[List[str], Optional[str], Optional[str], str]:
    """One click of Generate: the UI's values in, what the UI shows out.

    Args:
        pipe: the loaded pipeline.
        out: the demo's output folder; each call writes into a new sub-folder of it.
        prompt, image: the caption and an optional reference image path (image-to-multiview); one
            of them must be given.
        views, steps, seed, guidance_scale, mesh, mesh_resolution: as ``diffusers-mv3d generate``.
        guidance_scale, consistency_ratio, consistency_scale: classifier-free guidance, and K and alpha
            of consistency guidance (eq. 4); None: the model's own (its scheduler config).
        elevation: the cameras' elevation in degrees.
        azimuths: the Azimuths field, degrees separated by commas; when given, one view per angle
            and ``views`` is ignored.
        progress: called as ``progress((done, total), desc=...)`` after every denoising step, and once
            more with ``desc="mesh and turntable"`` when they start (a ``gr.Progress`` fits).

    Returns:
        ``(view paths for the gallery, mesh.glb path or None, turntable.gif path or None, status)``.

    Raises:
        ValueError: bad input, a message naming the field, checked before anything runs.
        GenerationError: anything else that failed, explained by :func:`explain` (and logged with
            its traceback).
    """
    # 1. Check every value against the server's limits (the HTTP API accepts anything)
    prompt = (prompt or "").strip()
    if not prompt and not image:
        raise ValueError("Prompt is empty: give a prompt, or a reference image for image-to-multiview")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"Prompt is too long: {len(prompt)} characters (at most {MAX_PROMPT_CHARS})")
    reference = check_reference_image(image) if image else None
    angles = parse_azimuths(azimuths)
    views = len(angles) if angles is not None else _number(views, VIEWS)
    steps = _number(steps, STEPS)
    seed = _number(seed, SEED)
    if guidance_scale is not None:
        guidance_scale = _number(guidance_scale, GUIDANCE)
    if consistency_ratio is not None:
        consistency_ratio = _number(consistency_ratio, CONSISTENCY_RATIO)
    if consistency_scale is not None:
        consistency_scale = _number(consistency_scale, CONSISTENCY_SCALE)
    mesh_resolution = _number(mesh_resolution, MESH_RESOLUTION)
    elevation = _number(elevation, ELEVATION)
    mesh_skipped = bool(mesh) and not embree_available()  # generate would skip it too: say so on the page
    mesh = bool(mesh) and not mesh_skipped

    # 2. Generate into a fresh folder, reporting the denoising steps, then the mesh and turntable
    report = progress if progress is not None else (lambda *args, **kwargs: None)  # not `or`: a gr.Progress has len 0
    step = ["denoising"]  # the step running now, for the error message

    def on_step(done: int, total: int) -> None:
        report((done, total), desc=f"denoising {views} views")
        if done == total:
            step[0] = "mesh and turntable" if mesh else "saving"
            report((done, total), desc="mesh and turntable" if mesh else "saving the views")  # "8/8 steps | mesh..."

    report((0, steps), desc=f"denoising {views} views")
    start = time.perf_counter()
    try:
        out.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=out))
        result = generate(
            prompt, folder, views=None if angles is not None else views, steps=steps, seed=seed, image=reference,
            guidance_scale=guidance_scale, consistency_ratio=consistency_ratio, consistency_scale=consistency_scale,
            mesh=mesh, mesh_resolution=mesh_resolution, elevation=elevation, azimuths=angles, pipe=pipe,
            step_callback=on_step, caption_image=True,
        )
    except Exception as error:
        logger.exception("generate failed in the %s step (prompt %r)", step[0], prompt)
        raise GenerationError(explain(error, step[0])) from error
    total = time.perf_counter() - start

    # 3. What the page shows: the views, the mesh, the turntable and a short status line
    files = result["files"]
    gallery = [str(files[f"view_{i:02d}"]) for i in range(result["views"])]
    status = (
        f"{result['views']} views, {steps} steps in {result['seconds']:.1f} s"
        + (f"; with the mesh and turntable {total:.1f} s" if mesh else "")
        + (f"; {NO_MESH}" if mesh_skipped else "")
        + (f"; no prompt: the image captioned as {result['prompt']!r}" if result["prompt"] != prompt else "")
        + f"; saved in {folder.relative_to(out).as_posix()}/"
    )
    return gallery, _str_or_none(files.get("mesh")), _str_or_none(files.get("turntable")), status


def _str_or_none(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path)


def click_handler(pipe, out: Path):
    """The function behind Generate: :func:`handle` with a ``gr.Progress``, every failure turned into
    a ``gr.Error`` whose text the page shows. Imports Gradio."""
    import gradio as gr

    def on_generate(prompt, image, views, steps, seed, guidance_scale, consistency_ratio, consistency_scale, mesh,
                    mesh_resolution, elevation=DEFAULT_ELEVATION, azimuths=None, progress=gr.Progress()):
        try:
            shown = handle(pipe, out, prompt, image, views, steps, seed, guidance_scale, consistency_ratio,
                           consistency_scale, mesh, mesh_resolution, elevation, azimuths, progress=progress)
            if NO_MESH in shown[-1]:
                gr.Warning(NO_MESH[0].upper() + NO_MESH[1:])
            return shown
        except (ValueError, GenerationError) as error:
            message = str(error)
        except Exception as error:  # noqa: BLE001  (handle() itself failed: still a sentence for the page)
            logger.exception("the demo's click handler failed")
            message = explain(error, "generate")
        # duration=None: the message stays until closed (the outputs only show "Error"); escaped: the page renders HTML
        error = gr.Error(html.escape(message, quote=False), duration=None)
        error.print_exception = False  # (Gradio >= 6) the traceback, if any, is logged above
        raise error

    return on_generate


def _slider(gr, limit: Limit, value=None, **kwargs):
    value = limit.default if value is None else min(max(value, limit.low), limit.high)
    return gr.Slider(limit.low, limit.high, value=value, step=limit.step, label=limit.label, **kwargs)


def build_ui(pipe, out: Path):
    """The Gradio page (a ``gr.Blocks``) for ``pipe``, writing under ``out``. Imports Gradio."""
    import gradio as gr

    scheduler = pipe.scheduler.config
    with gr.Blocks(title="TuneMV3D multi-view 3D generation") as ui:
        gr.Markdown("# TuneMV3D\nA prompt (or a reference image for view 0) -> consistent views, a mesh, a turntable.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", placeholder="a red chair with armrests",
                                    max_length=MAX_PROMPT_CHARS, elem_id="prompt")
                # image_mode=None: Gradio hands over the uploaded file undecoded; handle() checks its size first
                image = gr.Image(label="Reference image (optional)", type="filepath", image_mode=None, elem_id="image")
                views = _slider(gr, VIEWS, elem_id="views")
                steps = _slider(gr, STEPS, elem_id="steps")
                seed = gr.Number(value=SEED.default, precision=0, minimum=SEED.low, maximum=SEED.high, label=SEED.label,
                                 elem_id="seed")
                mesh = gr.Checkbox(value=True, label="Mesh and turntable", elem_id="mesh")
                with gr.Accordion("Cameras", open=False, elem_id="cameras"):
                    elevation = _slider(gr, ELEVATION, info="degrees above the horizon", elem_id="elevation")
                    azimuths = gr.Textbox(label="Azimuths (optional)", placeholder="e.g. 0, 90, 180, 270",
                                          info="degrees separated by commas, one view each (1-16); "
                                               "when given, Views is ignored",
                                          max_length=MAX_AZIMUTHS_CHARS, elem_id="azimuths")
                with gr.Accordion("Guidance and mesh", open=False):
                    guidance = _slider(gr, GUIDANCE, value=scheduler.guidance_scale)
                    ratio = _slider(gr, CONSISTENCY_RATIO, value=scheduler.consistency_ratio)
                    scale = _slider(gr, CONSISTENCY_SCALE, value=scheduler.consistency_scale)
                    resolution = _slider(gr, MESH_RESOLUTION)
                button = gr.Button("Generate", variant="primary", elem_id="generate")
                gr.Examples(EXAMPLES, inputs=[prompt])
            with gr.Column():
                gallery = gr.Gallery(label="Views", columns=4, elem_id="gallery")
                model3d = gr.Model3D(label="mesh.glb", elem_id="model3d")
                turntable = gr.Image(label="turntable.gif", type="filepath", elem_id="turntable")
                status = gr.Textbox(label="Status", interactive=False, elem_id="status")
        button.click(
            click_handler(pipe, out),
            inputs=[prompt, image, views, steps, seed, guidance, ratio, scale, mesh, resolution, elevation, azimuths],
            outputs=[gallery, model3d, turntable, status],
            api_name="generate",
            concurrency_limit=1,  # one pipeline: one generation at a time, the others wait in the queue
        )
    return ui


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="a Gradio web page for generate (pip install -e \".[demo]\")",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--model", default=None, help="pipeline folder or Hub id (default: the embedded pipelines/tunemv3d-tiny)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="folder for the demo's outputs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401  (checked before the pipeline is loaded)
    except ImportError as error:
        raise SystemExit(INSTALL_HINT) from error
    if not logging.getLogger().handlers:  # the tracebacks of failed clicks go to the server's console
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    ui = build_ui(load_pipeline(args.model), args.out)
    ui.queue(max_size=MAX_QUEUE)
    ui.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True,
              max_file_size=MAX_IMAGE_BYTES, allowed_paths=[str(args.out.resolve())])
    return 0
