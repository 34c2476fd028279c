"""``diffusers-mv3d render``: splits, user meshes, foundation images, resuming, settings checks."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import trimesh
from PIL import Image

from diffusers_mv3d.cli import main
from diffusers_mv3d.data import ImageTextDataset, MultiViewDataset
from diffusers_mv3d.data.render_dataset import RenderConfig, render

SMALL = dict(resolution=16, num_views=4, num_input_views=2, workers=1)


def test_resume_skips_complete_objects_and_redoes_half_written_ones(tmp_path):
    out = str(tmp_path / "chairs")
    first = render(RenderConfig(out=out, split="chairs3d", num_objects=3, **SMALL))
    assert (first.rendered, first.skipped, first.failed) == (3, 0, 0) and first.bytes_on_disk > 0
    names = sorted(n for n in os.listdir(out) if n != "render.json")
    kept = os.path.join(out, names[0], "rgba", "000.png")
    kept_mtime, redo_bytes = os.stat(kept).st_mtime_ns, open(os.path.join(out, names[1], "rgba", "001.png"), "rb").read()
    # an interrupted run: object 1 was being written (only its temporary folder exists)
    os.rename(os.path.join(out, names[1]), os.path.join(out, ".tmp-" + names[1]))
    os.remove(os.path.join(out, ".tmp-" + names[1], "cameras.json"))

    second = render(RenderConfig(out=out, split="chairs3d", num_objects=4, **SMALL))
    assert (second.rendered, second.skipped) == (2, 2)  # object 1 again, and the new object 3
    assert not any(n.startswith(".tmp-") for n in os.listdir(out))
    assert os.stat(kept).st_mtime_ns == kept_mtime  # untouched
    assert open(os.path.join(out, names[1], "rgba", "001.png"), "rb").read() == redo_bytes  # deterministic
    assert len(MultiViewDataset(out, num_input_views=2, num_supervision_views=2)) == 4


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    out = str(tmp_path / "chairs")
    render(RenderConfig(out=out, split="chairs3d", num_objects=1, **SMALL))
    with pytest.raises(ValueError, match="render.json.*resolution: 16 -> 32"):
        render(RenderConfig(out=out, split="chairs3d", num_objects=1, **dict(SMALL, resolution=32)))
    with pytest.raises(ValueError, match="--num-objects"):
        render(RenderConfig(out=out, split="chairs3d", **SMALL))
    with pytest.raises(ValueError, match="--split and --mesh-dir"):
        render(RenderConfig(out=out, **SMALL))


def test_user_meshes(tmp_path):
    meshes = tmp_path / "meshes"
    (meshes / "sub").mkdir(parents=True)
    trimesh.creation.box((2.0, 1.0, 0.5)).export(meshes / "flat_box.obj")
    sphere = trimesh.creation.icosphere(subdivisions=2)
    sphere.visual.vertex_colors = [0, 0, 255, 255]
    sphere.export(meshes / "sub" / "ball.ply")
    (meshes / "sub" / "ball.txt").write_text("a blue ball\n")
    (meshes / "broken.obj").write_text("v 0 0 0\n")  # no faces
    out = str(tmp_path / "out")
    with pytest.warns(UserWarning, match="broken.obj"):
        stats = render(RenderConfig(out=out, mesh_dir=str(meshes), **SMALL))
    assert (stats.rendered, stats.failed) == (2, 1)
    dataset = MultiViewDataset(out, num_input_views=2, num_supervision_views=2)
    captions = {dataset[i]["object_id"]: dataset[i]["caption"] for i in range(len(dataset))}
    assert captions == {"flat_box": "flat box", "sub_ball": "a blue ball"}
    ball = next(dataset[i] for i in range(2) if dataset[i]["object_id"] == "sub_ball")
    blue = ball["images"][:, 2][ball["masks"][:, 0] > 0]
    assert (blue > ball["images"][:, 0][ball["masks"][:, 0] > 0] + 0.3).all()


def test_foundation_images_and_resume(tmp_path):
    out = str(tmp_path / "foundation")
    config = RenderConfig(out=out, split="foundation2d", num_objects=5, resolution=16, workers=1)
    assert render(config).rendered == 5
    with open(os.path.join(out, "metadata.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["file_name"] for r in records] == [f"images/{i:06d}.png" for i in range(5)]
    for r in records:
        assert r["category"] in r["text"] and r["colour"] in r["text"]
        image = Image.open(os.path.join(out, r["file_name"]))
        assert image.size == (16, 16) and image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)
    again = render(config)
    assert (again.rendered, again.skipped) == (0, 5)
    larger = render(RenderConfig(out=out, split="foundation2d", num_objects=7, resolution=16, workers=1))
    assert larger.rendered == 7  # the one partial chunk [0, 5) became [0, 7): redone
    dataset = ImageTextDataset(out)
    assert len(dataset) == 7 and dataset[6]["caption"] and dataset[0]["caption"] == records[0]["text"]


def test_command_line_with_two_workers(tmp_path, capfd):
    out = str(tmp_path / "cli")
    args = ["render", "--split", "objects3d", "--num-objects", "3", "--resolution", "16", "--num-views", "3",
            "--num-input-views", "2", "--workers", "2", "--no-mesh", "--out", out]
    assert main(args) == 0
    printed = capfd.readouterr()
    assert "rendered 3, skipped 0" in printed.out and "objects/s" in printed.out
    assert "objects3d" in printed.err  # the progress bar
    objects = sorted(n for n in os.listdir(out) if n != "render.json")
    assert len(objects) == 3 and not os.path.exists(os.path.join(out, objects[0], "mesh.glb"))
    assert main(args[:-2] + ["--resolution", "32", "--out", out]) == 2
    assert "other settings" in capfd.readouterr().err
    assert main(args + ["--dry-run"]) == 0
    assert json.loads(capfd.readouterr().out)["split"] == "objects3d"


@pytest.mark.slow
def test_console_script_runs_the_command(tmp_path):
    """The installed entry point reaches the command (in a subprocess: imports take a few seconds)."""
    command = [sys.executable, "-m", "diffusers_mv3d.cli", "render", "--mesh-dir", str(tmp_path), "--out",
               str(tmp_path / "out"), "--dry-run"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["mesh_dir"] == str(tmp_path)


def test_mesh_dir_renders_a_y_up_glb_upright(tmp_path, capfd):
    """A +y-up glb (a tall column, as glTF stores it) renders standing; --up-axis +z lays it down."""
    import trimesh

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.box(extents=[0.2, 1.6, 0.2]).export(meshes / "column.glb")

    def silhouette_height_over_width(out):
        dataset = MultiViewDataset(out, num_input_views=1, num_supervision_views=0)
        mask = dataset[0]["masks"][0, 0].numpy() > 0.5  # view 0: elevation 20, azimuth 0
        rows, cols = np.nonzero(mask)
        return (rows.max() - rows.min() + 1) / (cols.max() - cols.min() + 1)

    base = ["render", "--mesh-dir", str(meshes), "--resolution", "32", "--num-views", "1", "--num-input-views", "1",
            "--workers", "1", "--no-mesh"]
    assert main(base + ["--out", str(tmp_path / "upright")]) == 0
    assert silhouette_height_over_width(str(tmp_path / "upright")) > 3  # standing
    assert main(base + ["--out", str(tmp_path / "as-stored"), "--up-axis", "+z"]) == 0
    assert silhouette_height_over_width(str(tmp_path / "as-stored")) < 1  # lying on its side
    capfd.readouterr()
    assert main(base + ["--out", str(tmp_path / "upright"), "--up-axis", "+z"]) == 2  # a resume must keep the axis
    assert "up_axis" in capfd.readouterr().err


def test_mesh_dir_problems_are_errors_not_empty_renders(tmp_path, capfd):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["render", "--mesh-dir", str(empty), "--out", str(tmp_path / "o1"), "--workers", "1"]) == 2
    assert "holds no mesh files" in capfd.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert main(["render", "--split", "objects3d", "--num-objects", "1", "--out", str(tmp_path / "a-file")]) == 2
    assert "is a file" in capfd.readouterr().err
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    box = trimesh.creation.box()
    broken = box.copy()
    broken.vertices[0] = np.nan
    broken.export(meshes / "nan.ply")
    huge = box.copy()
    huge.vertices = huge.vertices * 1e30  # (1e200 overflows .ply's float32 to inf: the NaN case)
    huge.export(meshes / "huge.ply")
    box.export(meshes / "fine.ply")
    out = tmp_path / "o2"
    with pytest.warns(UserWarning) as warned:
        assert main(["render", "--mesh-dir", str(meshes), "--out", str(out), "--resolution", "16", "--num-views", "1",
                     "--num-input-views", "1", "--workers", "1", "--no-mesh"]) == 1  # failures: exit 1
    assert "rendered 1, skipped 0 (complete), failed 2" in capfd.readouterr().out
    messages = " ".join(str(w.message) for w in warned)  # each failure named with its file and cause
    assert "nan.ply: 1 vertices have NaN" in messages and "huge.ply: vertex coordinates span" in messages
    assert sorted(n for n in os.listdir(out) if n != "render.json") == ["fine"]
