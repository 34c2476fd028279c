"""`diffusers-mv3d demo`: the click handler on a tiny pipeline, its limits and errors, the progress it
reports, the missing-Gradio exit, the UI. tests/test_demo_browser.py drives the real page."""
import json
import logging
import sys

import PIL.Image
import pytest

from diffusers_mv3d import demo
from diffusers_mv3d.cli import main
from diffusers_mv3d.data.palette import PALETTE
from diffusers_mv3d.data.splits import is_in_3d_split
from diffusers_mv3d.data.world import CATEGORIES
from diffusers_mv3d.demo import EXAMPLES, INSTALL_HINT, GenerationError, build_ui, click_handler, handle
from dummies import randomize_branch, tiny_pipeline

# prompt, image, views, steps, seed, guidance, K, alpha, mesh, mesh resolution, elevation, azimuths: as the UI
# passes them
VALUES = ("a red chair with armrests", None, 3, 2, 0, 3.0, 0.5, 7.5, True, 16, 20.0, "")


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_pipeline()
    randomize_branch(pipe)
    return pipe


def with_values(**changes):
    names = ("prompt", "image", "views", "steps", "seed", "guidance", "K", "alpha", "mesh", "resolution", "elevation",
             "azimuths")
    values = dict(zip(names, VALUES))
    values.update(changes)
    return [values[name] for name in names]


def test_handler_writes_the_files_and_returns_what_the_ui_shows(pipe, tmp_path):
    gallery, mesh, turntable, status = handle(pipe, tmp_path, *VALUES)
    assert [PIL.Image.open(path).size for path in gallery] == [(16, 16)] * 3
    assert mesh.endswith("mesh.glb") and turntable.endswith("turntable.gif")
    (folder,) = tmp_path.iterdir()  # one fresh folder a click, holding everything generate writes
    assert {p.name for p in folder.iterdir()} >= {"views.png", "cameras.json", "mesh.glb", "turntable.gif"}
    assert status.startswith("3 views, 2 steps in ") and "mesh and turntable" in status
    assert status.endswith(f"saved in {folder.name}/") and str(tmp_path) not in status  # short: relative to --out

    handle(pipe, tmp_path, *VALUES)
    assert len(list(tmp_path.iterdir())) == 2  # a second click does not overwrite the first


def test_handler_from_a_reference_image_without_prompt_or_mesh(pipe, tmp_path):
    PIL.Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "ref.png")
    gallery, mesh, turntable, status = handle(pipe, tmp_path / "out", "", str(tmp_path / "ref.png"), 2, 1, 0, 3.0,
                                              None, None, False)
    assert PIL.Image.open(gallery[0]).getpixel((8, 8)) == (200, 30, 30)
    assert mesh is None and turntable is None and "turntable" not in status
    assert "no prompt: the image captioned as 'a " in status  # by the package's attribute classifier


class Progress:
    """Records calls as gr.Progress receives them; like gr.Progress it has length 0 (so it is falsy)."""

    def __init__(self):
        self.calls = []

    def __len__(self):
        return 0

    def __call__(self, value, desc=None):
        self.calls.append((value, desc))


def test_without_embree_the_page_says_why_there_is_no_mesh(pipe, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "embree_available", lambda: False)
    gallery, mesh, turntable, status = handle(pipe, tmp_path, *VALUES)
    assert len(gallery) == 3 and mesh is None and turntable is None
    assert "no mesh and turntable: the server lacks embree ray casting (pip install embreex)" in status


def test_handler_reports_the_denoising_steps_then_the_mesh(pipe, tmp_path):
    progress = Progress()
    handle(pipe, tmp_path, *VALUES, progress=progress)
    calls = progress.calls
    assert [value for value, _ in calls] == [(0, 2), (1, 2), (2, 2), (2, 2)]
    assert calls[0][1] == "denoising 3 views" and calls[-1][1] == "mesh and turntable"


def test_azimuths_give_one_view_per_angle_at_the_elevation(pipe, tmp_path):
    gallery, _, _, status = handle(pipe, tmp_path, *with_values(views=16, elevation=-10.0, azimuths=" 0, 90,180 ",
                                                                mesh=False))
    assert len(gallery) == 3 and status.startswith("3 views")  # the Views slider is ignored
    (folder,) = tmp_path.iterdir()
    cameras = json.loads((folder / "cameras.json").read_text())["views"]
    assert [round(c["azimuth"]) % 360 for c in cameras] == [0, 90, 180]
    assert [round(c["elevation"]) for c in cameras] == [-10] * 3


@pytest.mark.parametrize(
    "field, value, message",
    [("prompt", "  ", "Prompt is empty"), ("prompt", "x" * 301, "Prompt is too long"),
     ("views", 0, "Views"), ("views", 2.5, "Views"), ("views", 17, "Views"), ("views", 100_000, "Views"),
     ("views", True, "Views"), ("steps", None, "Steps"), ("steps", 201, "Steps"), ("seed", -1, "Seed"),
     ("seed", 2**32, "Seed"), ("guidance", 0.5, "Guidance"), ("guidance", float("nan"), "Guidance"),
     ("K", 1.5, "K"), ("alpha", 21.0, "alpha"), ("resolution", 1, "Mesh resolution"),
     ("resolution", 129, "Mesh resolution"), ("elevation", 61, "Elevation"), ("elevation", -31, "Elevation"),
     ("azimuths", "0, north", "Azimuths must be numbers"), ("azimuths", ",".join(["0"] * 17), "1 to 16 angles"),
     ("azimuths", "0, inf", "Azimuths must lie"), ("azimuths", "0, 400", "Azimuths must lie"),
     ("azimuths", "0 " * 150, "Azimuths is too long")],
)
def test_handler_enforces_the_limits_naming_the_field(pipe, tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        handle(pipe, tmp_path, *with_values(**{field: value}))
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # checked before anything runs


def test_sliders_are_the_server_limits():
    assert (demo.VIEWS.low, demo.VIEWS.high, demo.STEPS.low, demo.STEPS.high) == (1, 16, 1, 200)
    assert (demo.MESH_RESOLUTION.low, demo.MESH_RESOLUTION.high, demo.SEED.high) == (16, 128, 2**32 - 1)
    assert (demo.ELEVATION.low, demo.ELEVATION.high, demo.ELEVATION.default) == (-30, 60, 20)


def test_reference_image_limits(pipe, tmp_path, monkeypatch):
    def check(path, message):
        with pytest.raises(ValueError, match=message):
            handle(pipe, tmp_path / "out", "", str(path), *VALUES[2:])

    check(tmp_path / "missing.png", "Reference image was not found")
    (tmp_path / "notes.png").write_text("not an image")
    check(tmp_path / "notes.png", "Reference image is not an image")
    PIL.Image.new("L", (4097, 1)).save(tmp_path / "wide.png")  # a few bytes; the size is read from the header
    check(tmp_path / "wide.png", r"4097x1 pixels \(at most 4096x4096\)")
    PIL.Image.new("RGB", (16, 16)).save(tmp_path / "small.png")
    monkeypatch.setattr(demo, "MAX_IMAGE_BYTES", 10)
    check(tmp_path / "small.png", "Reference image is too large")
    assert not (tmp_path / "out").exists()


def fail_in_the_mesh_step(monkeypatch):
    """An unexpected failure in the mesh step (the issue's: trimesh's fallback ray caster wanted rtree)."""
    import diffusers_mv3d.mesh

    def missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'rtree'")

    monkeypatch.setattr(diffusers_mv3d.mesh, "turntable_frames", missing)


def test_an_unexpected_failure_names_the_step_type_and_message_and_logs_the_traceback(pipe, tmp_path, monkeypatch,
                                                                                     caplog):
    fail_in_the_mesh_step(monkeypatch)
    with caplog.at_level(logging.ERROR, logger="diffusers_mv3d.demo"), pytest.raises(GenerationError) as error:
        handle(pipe, tmp_path, *VALUES)
    message = str(error.value)
    assert message.startswith("The mesh and turntable step failed (ModuleNotFoundError: No module named 'rtree')")
    assert 'pip install -e ".[demo]"' in message and 'untick "Mesh and turntable"' in message
    (record,) = caplog.records
    assert record.exc_info and "rtree" in caplog.text and "Traceback" in caplog.text  # the console gets it all


def test_click_turns_every_failure_into_a_readable_gradio_error(pipe, tmp_path, monkeypatch):
    gr = pytest.importorskip("gradio")
    on_generate = click_handler(pipe, tmp_path)
    with pytest.raises(gr.Error, match="Prompt is empty"):
        on_generate(*with_values(prompt=""))
    with pytest.raises(gr.Error) as error:
        on_generate(*with_values(azimuths="<b>"))
    assert "got '&lt;b&gt;'" in error.value.message  # the page renders the message as HTML: escaped
    fail_in_the_mesh_step(monkeypatch)
    with pytest.raises(gr.Error, match="mesh and turntable step failed .ModuleNotFoundError"):
        on_generate(*VALUES)
    monkeypatch.setattr(demo, "handle", lambda *args, **kwargs: 1 / 0)  # a failure outside generate
    with pytest.raises(gr.Error, match="ZeroDivisionError: division by zero"):
        on_generate(*VALUES)


def test_examples_are_in_split_prompts():
    for prompt in EXAMPLES:
        (category,) = [word for word in prompt.split() if word in CATEGORIES]
        colours = [word for word in prompt.split() if word in PALETTE]
        assert is_in_3d_split(category, colours[0]), prompt


def test_demo_without_gradio_exits_with_the_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--model", str(tmp_path / "never-loaded"), "--out", str(tmp_path)])
    assert exit_info.value.code == INSTALL_HINT  # a message: the interpreter exits with status 1
    assert 'pip install -e ".[demo]"' in INSTALL_HINT


def test_ui_builds_when_gradio_is_installed(pipe, tmp_path):
    gr = pytest.importorskip("gradio")
    ui = build_ui(pipe, tmp_path)
    assert isinstance(ui, gr.Blocks)
    kinds = {type(block).__name__ for block in ui.blocks.values()}
    assert {"Textbox", "Image", "Slider", "Button", "Gallery", "Model3D", "Dataset"} <= kinds
    sliders = {block.label: block for block in ui.blocks.values() if isinstance(block, gr.Slider)}
    assert (sliders["Views"].minimum, sliders["Views"].maximum) == (demo.VIEWS.low, demo.VIEWS.high)
    assert (sliders["Elevation"].minimum, sliders["Elevation"].maximum, sliders["Elevation"].value) == (-30, 60, 20)
