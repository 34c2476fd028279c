"""`diffusers-mv3d generate` on a tiny pipeline folder: the files it promises, atomically written."""
import json
import shutil
import subprocess
import sys

import PIL.Image
import pytest
import trimesh

import torch

from diffusers_mv3d import Cameras
from diffusers_mv3d.cli import main
from diffusers_mv3d.generate import generate, view_grid
from dummies import randomize_branch, tiny_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    pipe = tiny_pipeline()
    randomize_branch(pipe)
    folder = tmp_path_factory.mktemp("model")
    pipe.save_pretrained(folder)
    return folder


def test_generate_writes_views_grid_cameras_mesh_and_turntable(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["generate", "a red chair with armrests", "--model", str(model_dir), "--views", "4", "--steps", "2",
                 "--out", str(out), "--mesh-resolution", "16"])
    assert code == 0
    assert sorted(p.name for p in out.glob("view_*.png")) == [f"view_{i:02d}.png" for i in range(4)]
    assert PIL.Image.open(out / "views.png").size == (4 * 16, 16)
    cameras = json.loads((out / "cameras.json").read_text())
    assert len(cameras["views"]) == 4 and cameras["height"] == 16 and cameras["prompt"].startswith("a red chair")
    assert len(trimesh.load(out / "mesh.glb", force="mesh").vertices) > 0
    assert PIL.Image.open(out / "turntable.gif").n_frames == 24
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert str(out) in capsys.readouterr().out


def test_generate_from_a_reference_image_keeps_it_as_view_zero(model_dir, tmp_path, capsys):
    reference = PIL.Image.new("RGB", (16, 16), (200, 30, 30))
    reference.save(tmp_path / "ref.png")
    out = tmp_path / "out"
    main(["generate", "--image", str(tmp_path / "ref.png"), "--model", str(model_dir), "--views", "2", "--steps", "2",
          "--out", str(out), "--no-mesh"])
    assert PIL.Image.open(out / "view_00.png").getpixel((8, 8)) == (200, 30, 30)
    assert not (out / "mesh.glb").exists()
    printed = capsys.readouterr().out  # no caption given: the image is captioned, and the caption used
    caption = json.loads((out / "cameras.json").read_text())["prompt"]
    assert caption.startswith("a ") and f"captioned --image as {caption!r}" in printed
    main(["generate", "--image", str(tmp_path / "ref.png"), "--model", str(model_dir), "--views", "2", "--steps", "1",
          "--out", str(out), "--no-mesh", "--no-auto-caption"])
    assert "without a caption" in capsys.readouterr().out  # the hint: a caption makes the other views follow
    assert json.loads((out / "cameras.json").read_text())["prompt"] == ""
    main(["generate", "a red mug", "--image", str(tmp_path / "ref.png"), "--model", str(model_dir), "--views", "2",
          "--steps", "1", "--out", str(out), "--no-mesh"])
    printed = capsys.readouterr().out
    assert "without a caption" not in printed and "captioned" not in printed
    assert json.loads((out / "cameras.json").read_text())["prompt"] == "a red mug"


def test_generate_captions_a_reference_with_the_models_captioner(model_dir, tmp_path, capsys):
    from diffusers_mv3d import RetrievalCaptioner, TuneMV3DPipeline
    from diffusers_mv3d.generate import _packaged_classifier

    pipe = TuneMV3DPipeline.from_pretrained(model_dir)
    pipe.register_modules(captioner=RetrievalCaptioner(["a tall blue lamp with a drum shade"], ["blue"], key_size=4))
    pipe.save_pretrained(tmp_path / "model")
    reference = PIL.Image.new("RGB", (16, 16), (200, 30, 30))
    reference.save(tmp_path / "ref.png")
    main(["generate", "--image", str(tmp_path / "ref.png"), "--model", str(tmp_path / "model"), "--views", "2",
          "--steps", "1", "--out", str(tmp_path / "out"), "--no-mesh"])
    caption = json.loads((tmp_path / "out" / "cameras.json").read_text())["prompt"]
    classifier = _packaged_classifier()
    colour = classifier.config.colours[int(classifier(pipe.preprocess_image(reference, "--image")[None]).colour_logits.argmax())]
    assert caption == f"a tall {colour} lamp with a drum shade"  # the captioner's caption in the classifier's colour
    assert f"captioned --image as {caption!r}" in capsys.readouterr().out


def test_generate_bad_arguments_exit_with_a_message_before_loading_the_model(model_dir, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "a-file").write_text("")
    cases = [
        (["a mug", "--views", "0"], "--views"),
        (["--image", str(tmp_path / "missing.png")], "--image"),
        (["--image", str(tmp_path / "notes.txt")], "--image"),
        (["a mug", "--steps", "0"], "--steps"),
        (["a mug", "--azimuths", "0", "90", "--views", "3"], "--azimuths"),
        (["a mug", "--elevation", "95"], "--elevation"),
        (["a mug", "--out", str(tmp_path / "a-file")], "--out"),
        ([""], "prompt"),
        (["a mug", "--seed", str(2**64)], "--seed"),
        (["a mug", "--seed", "-1"], "--seed"),
        (["a mug", "--consistency-ratio", "2"], "--consistency-ratio"),
        (["a mug", "--eta", "nan"], "--eta"),
        (["a mug", "--mesh-resolution", "1"], "--mesh-resolution"),
        (["a mug", "--num-threads", "-1"], "--num-threads"),
    ]
    for argv, flag in cases:
        out = ["--out", str(tmp_path / "out")] if "--out" not in argv else []
        assert main(["generate", *argv, "--model", str(model_dir), *out]) == 2, argv
        error = capsys.readouterr().err
        assert error.startswith("diffusers-mv3d generate: error:") and flag in error and "Traceback" not in error
    # every --model problem is one line naming --model
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights_file = next(broken.glob("unet/*.safetensors"))
    weights_file.write_bytes(weights_file.read_bytes()[:100])
    bad_json = tmp_path / "bad-json"
    shutil.copytree(model_dir, bad_json)
    (bad_json / "model_index.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    for model in (tmp_path / "missing", tmp_path / "empty", broken, bad_json):
        assert main(["generate", "a mug", "--model", str(model), "--out", str(tmp_path / "o")]) == 2, model
        error = capsys.readouterr().err
        assert "--model" in error and str(model) in error and "Traceback" not in error
    with pytest.raises(ValueError, match="--views"):  # the library raises; only the CLI turns it into a message
        generate("a mug", tmp_path / "lib", model=str(model_dir), views=0)


def test_chosen_elevation_and_azimuths_reach_the_cameras(model_dir, tmp_path):
    out = tmp_path / "orbit"
    assert main(["generate", "a red chair", "--model", str(model_dir), "--elevation", "30", "--azimuths", "0", "90", "180",
                 "--steps", "1", "--out", str(out), "--no-mesh"]) == 0
    assert sorted(p.name for p in out.glob("view_*.png")) == ["view_00.png", "view_01.png", "view_02.png"]
    cameras = Cameras.from_dict(json.loads((out / "cameras.json").read_text()))
    expected = Cameras.orbit(30.0, [0.0, 90.0, 180.0], height=16)
    assert torch.allclose(cameras.world_to_camera, expected.world_to_camera, atol=1e-5)


def test_generating_again_into_the_same_folder_leaves_no_stale_files(model_dir, tmp_path):
    out = tmp_path / "again"
    assert main(["generate", "a blue mug", "--model", str(model_dir), "--views", "4", "--steps", "1", "--out", str(out),
                 "--mesh-resolution", "16"]) == 0
    (out / "notes.txt").write_text("mine")  # not a generate output: kept
    assert main(["generate", "a blue mug", "--model", str(model_dir), "--views", "2", "--steps", "1", "--out", str(out),
                 "--no-mesh"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cameras.json", "notes.txt", "view_00.png", "view_01.png", "views.png"]


def test_console_script_runs_in_a_subprocess(model_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "diffusers_mv3d.cli", "generate", "a blue mug", "--model", str(model_dir), "--views", "2",
         "--steps", "1", "--out", str(tmp_path / "o"), "--no-mesh"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o" / "views.png").exists()


def test_view_grid_tiles_views():
    grid = view_grid([PIL.Image.new("RGB", (4, 4), c) for c in ("red", "green", "blue")], columns=2)
    assert grid.size == (8, 8)
    assert grid.getpixel((5, 1)) == (0, 128, 0) and grid.getpixel((5, 5)) == (255, 255, 255)


def test_without_embree_generate_skips_the_mesh_with_a_warning(model_dir, tmp_path, monkeypatch):
    import diffusers_mv3d.generate as generate_module

    monkeypatch.setattr(generate_module, "embree_available", lambda: False)
    with pytest.warns(UserWarning, match="embreex"):
        result = generate("a red chair", tmp_path / "out", model=str(model_dir), views=2, steps=1)
    assert "mesh" not in result["files"] and (tmp_path / "out" / "views.png").is_file()


@pytest.mark.parametrize("command", ["generate", "demo"])
def test_help_shows_real_defaults_and_never_none(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    assert "(default: the embedded pipelines/tunemv3d-tiny)" in text
    assert ("(default: 30)" if command == "generate" else "(default: 7860)") in text


@pytest.mark.parametrize("command", ["evaluate", "train", "train-foundation", "train-reconstructor", "train-baseline"])
def test_settings_commands_help_never_shows_none(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    assert "(default: 0)" in text  # the other defaults are still shown


def test_num_threads_applies_to_the_run_and_is_restored(monkeypatch, tmp_path):
    import diffusers_mv3d.generate as module

    seen = []
    monkeypatch.setattr(module, "generate", lambda *args, **kwargs: seen.append(torch.get_num_threads())
                        or {"files": {}, "views": 1, "seconds": 0.0, "prompt": kwargs.get("prompt", args[0])})
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["generate", "a mug", "--num-threads", "1", "--out", str(tmp_path)]) == 0
        assert main(["generate", "a mug", "--out", str(tmp_path)]) == 0
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
