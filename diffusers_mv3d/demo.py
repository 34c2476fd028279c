"""``diffusers-mv3d demo``: a Gradio web page around ``generate`` (needs the ``[demo]`` extra).

    pip install -e ".[demo]"
    diffusers-mv3d demo --port 7860                      # then open http://127.0.0.1:7860
    diffusers-mv3d demo --model DIR-or-Hub-id --host 0.0.0.0 --share

The pipeline is loaded once; every click of Generate runs :func:`generate.generate` with it into a
fresh folder under ``--out`` and shows the views, the mesh and the turntable. :func:`handle` is the
click without any Gradio, so it is tested like any function; :func:`build_ui` imports Gradio.
"""

import argparse
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

from .generate import generate, load_pipeline

# In-split prompts (category and colour both seen in 3D tuning, diffusers_mv3d/data/splits.py).
EXAMPLES = [
    "a red chair with armrests",
    "a blue mug with a handle",
    "a green car with four black wheels",
    "a long orange sofa with three seats",
    "a round tree in green with a brown trunk",
]
INSTALL_HINT = 'the demo needs Gradio: pip install -e ".[demo]"'


def _whole(value, field: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; a ValueError naming the UI field otherwise."""
    if not isinstance(value, (int, float)) or not float(value).is_integer() or value < minimum:
        raise ValueError(f"{field} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def handle(
    pipe,
    out: Path,
    prompt: str,
    image: Optional[str],
    views: int,
    steps: int,
    seed: int,
    guidance_scale: float,
    consistency_ratio: Optional[float],
    consistency_scale: Optional[float],
    mesh: bool,
    mesh_resolution: int = 64,
) -> Tuple[List[str], Optional[str], Optional[str], str]:
    """One click of Generate: the UI's values in, what the UI shows out.

    Args:
        pipe: the loaded pipeline.
        out: the demo's output folder; each call writes into a new sub-folder of it.
        prompt, image: the caption and an optional reference image path (image-to-multiview); one
            of them must be given.
        views, steps, seed, guidance_scale, mesh, mesh_resolution: as ``diffusers-mv3d generate``.
        consistency_ratio, consistency_scale: K and alpha of consistency guidance (eq. 4); None: the
            model's own (its scheduler config).

    Returns:
        ``(view paths for the gallery, mesh.glb path or None, turntable.gif path or None, status)``.

    Raises:
        ValueError: a message naming the offending field (the UI shows it as a ``gr.Error``).
    """
    prompt = (prompt or "").strip()
    if not prompt and not image:
        raise ValueError("Prompt is empty: give a prompt, or a reference image for image-to-multiview")
    if image and not Path(image).is_file():
        raise ValueError(f"Reference image {image} is not a file")
    views = _whole(views, "Views", 1)
    steps = _whole(steps, "Steps", 1)
    seed = _whole(seed, "Seed", 0)
    mesh_resolution = _whole(mesh_resolution, "Mesh resolution", 2)
    if consistency_ratio is not None and not 0.0 <= consistency_ratio <= 1.0:
        raise ValueError(f"K (consistency ratio) must lie in [0, 1], got {consistency_ratio}")

    out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=out))
    start = time.perf_counter()
    result = generate(
        prompt, folder, views=views, steps=steps, seed=seed, image=Path(image) if image else None,
        guidance_scale=guidance_scale, consistency_ratio=consistency_ratio, consistency_scale=consistency_scale,
        mesh=mesh, mesh_resolution=mesh_resolution, pipe=pipe,
    )
    total = time.perf_counter() - start
    files = result["files"]
    gallery = [str(files[f"view_{i:02d}"]) for i in range(views)]
    status = (
        f"{views} views, {steps} steps in {result['seconds']:.1f} s"
        + (f" ({total:.1f} s with the mesh and turntable)" if mesh else "")
        + f"; files in {folder}"
    )
    return gallery, _str_or_none(files.get("mesh")), _str_or_none(files.get("turntable")), status


def _str_or_none(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path)


def build_ui(pipe, out: Path):
    """The Gradio page (a ``gr.Blocks``) for ``pipe``, writing under ``out``. Imports Gradio."""
    import gradio as gr

    def on_generate(*values):
        try:
            return handle(pipe, out, *values)
        except ValueError as error:
            raise gr.Error(str(error)) from error

    scheduler = pipe.scheduler.config
    with gr.Blocks(title="TuneMV3D multi-view 3D generation") as ui:
        gr.Markdown("# TuneMV3D\nA prompt (or a reference image for view 0) -> consistent views, a mesh, a turntable.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", placeholder="a red chair with armrests")
                image = gr.Image(label="Reference image (optional)", type="filepath")
                views = gr.Slider(1, 16, value=8, step=1, label="Views")
                steps = gr.Slider(1, 200, value=50, step=1, label="Steps")
                seed = gr.Number(value=0, precision=0, label="Seed")
                mesh = gr.Checkbox(value=True, label="Mesh and turntable")
                with gr.Accordion("Guidance and mesh", open=False):
                    guidance = gr.Slider(1.0, 15.0, value=3.0, step=0.5, label="Guidance scale (text)")
                    ratio = gr.Slider(0.0, 1.0, value=scheduler.consistency_ratio, step=0.05,
                                      label="K: fraction of consistency-guidance steps")
                    scale = gr.Slider(0.0, 20.0, value=scheduler.consistency_scale, step=0.5,
                                      label="alpha: consistency-guidance scale (eq. 4)")
                    resolution = gr.Slider(16, 128, value=64, step=16, label="Mesh resolution")
                button = gr.Button("Generate", variant="primary")
                gr.Examples(EXAMPLES, inputs=[prompt])
            with gr.Column():
                gallery = gr.Gallery(label="Views", columns=4)
                model3d = gr.Model3D(label="mesh.glb")
                turntable = gr.Image(label="turntable.gif", type="filepath")
                status = gr.Textbox(label="Status", interactive=False)
        button.click(
            on_generate,
            inputs=[prompt, image, views, steps, seed, guidance, ratio, scale, mesh, resolution],
            outputs=[gallery, model3d, turntable, status],
            api_name="generate",
        )
    return ui


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="a Gradio web page for generate (pip install -e \".[demo]\")",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
    ui = build_ui(load_pipeline(args.model), args.out)
    ui.launch(server_name=args.host, server_port=args.port, share=args.share, allowed_paths=[str(args.out.resolve())])
    return 0
