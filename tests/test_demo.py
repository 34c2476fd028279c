"""`diffusers-mv3d demo`: the click handler on a tiny pipeline, its errors, the missing-Gradio exit, the UI."""
import sys

import PIL.Image
import pytest

from diffusers_mv3d.cli import main
from diffusers_mv3d.data.palette import PALETTE
from diffusers_mv3d.data.splits import is_in_3d_split
from diffusers_mv3d.data.world import CATEGORIES
from diffusers_mv3d.demo import EXAMPLES, INSTALL_HINT, build_ui, handle
from dummies import randomize_branch, tiny_pipeline

# prompt, image, views, steps, seed, guidance, K, alpha, mesh, mesh resolution: as the UI passes them
VALUES = ("a red chair with armrests", None, 3, 2, 0, 3.0, 0.5, 7.5, True, 16)


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_pipeline()
    randomize_branch(pipe)
    return pipe


def test_handler_writes_the_files_and_returns_what_the_ui_shows(pipe, tmp_path):
    gallery, mesh, turntable, status = handle(pipe, tmp_path, *VALUES)
    assert [PIL.Image.open(path).size for path in gallery] == [(16, 16)] * 3
    assert mesh.endswith("mesh.glb") and turntable.endswith("turntable.gif")
    (folder,) = tmp_path.iterdir()  # one fresh folder a click, holding everything generate writes
    assert {p.name for p in folder.iterdir()} >= {"views.png", "cameras.json", "mesh.glb", "turntable.gif"}
    assert status.startswith("3 views, 2 steps in ") and str(folder) in status

    handle(pipe, tmp_path, *VALUES)
    assert len(list(tmp_path.iterdir())) == 2  # a second click does not overwrite the first


def test_handler_from_a_reference_image_without_prompt_or_mesh(pipe, tmp_path):
    PIL.Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "ref.png")
    gallery, mesh, turntable, status = handle(pipe, tmp_path / "out", "", str(tmp_path / "ref.png"), 2, 1, 0, 3.0,
                                              None, None, False)
    assert PIL.Image.open(gallery[0]).getpixel((8, 8)) == (200, 30, 30)
    assert mesh is None and turntable is None and "turntable" not in status


@pytest.mark.parametrize(
    "index, value, field",
    [(0, "  ", "Prompt"), (2, 0, "Views"), (2, 2.5, "Views"), (3, None, "Steps"), (4, -1, "Seed"), (6, 1.5, "K"),
     (9, 1, "Mesh resolution")],
)
def test_handler_bad_input_names_the_field(pipe, tmp_path, index, value, field):
    values = list(VALUES)
    values[index] = value
    with pytest.raises(ValueError, match=field):
        handle(pipe, tmp_path, *values)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # checked before anything runs


def test_missing_reference_image_names_the_field(pipe, tmp_path):
    with pytest.raises(ValueError, match="Reference image"):
        handle(pipe, tmp_path, "", str(tmp_path / "missing.png"), *VALUES[2:])


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
