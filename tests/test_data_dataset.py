"""The on-disk multi-view format and its readers: MultiViewDataset, zero123 folders, ImageTextDataset."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from diffusers_mv3d.cameras import Cameras, default_cameras
from diffusers_mv3d.data import ImageTextDataset, MultiViewDataset, collate_multiview, render_views
from diffusers_mv3d.data.format import ObjectFolderError
from diffusers_mv3d.data.render import UP_AXIS_ROTATIONS
from diffusers_mv3d.data.render_dataset import RenderConfig, render


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Three chairs3d objects (6 views: 4 fixed + 2 random, 16 px) and six foundation2d images."""
    root = tmp_path_factory.mktemp("data")
    multiview = str(root / "chairs")
    render(RenderConfig(out=multiview, split="chairs3d", num_objects=3, resolution=16, num_views=6, num_input_views=4, workers=1))
    foundation = str(root / "foundation")
    render(RenderConfig(out=foundation, split="foundation2d", num_objects=6, resolution=16, workers=1))
    return multiview, foundation


@pytest.fixture
def multiview_copy(rendered, tmp_path):
    """A copy of the multi-view data that a test may damage."""
    return shutil.copytree(rendered[0], str(tmp_path / "chairs"))


def test_object_folder_layout(rendered):
    folder = os.path.join(rendered[0], sorted(os.listdir(rendered[0]))[0])
    assert sorted(os.listdir(folder)) == ["cameras.json", "caption.txt", "mesh.glb", "object.json", "rgba"]
    assert sorted(os.listdir(os.path.join(folder, "rgba"))) == [f"{i:03d}.png" for i in range(6)]
    with open(os.path.join(folder, "cameras.json")) as f:
        data = json.load(f)
    assert data["num_input_views"] == 4 and data["height"] == data["width"] == 16 and len(data["views"]) == 6
    cameras = Cameras.from_dict(data)
    fixed = default_cameras(4, 16)
    assert torch.allclose(cameras.world_to_camera[:4], fixed.world_to_camera, atol=1e-6)
    assert [round(v["elevation"]) for v in data["views"][:4]] == [20] * 4
    assert [round(v["azimuth"]) % 360 for v in data["views"][:4]] == [0, 90, 180, 270]
    image = Image.open(os.path.join(folder, "rgba", "000.png"))
    assert image.mode == "RGBA" and image.size == (16, 16)


def test_multiview_item_shapes_values_and_cameras(rendered):
    dataset = MultiViewDataset(rendered[0], num_input_views=4, num_supervision_views=2)
    assert len(dataset) == 3
    item = dataset[0]
    assert item["images"].shape == (4, 3, 16, 16) and item["masks"].shape == (4, 1, 16, 16)
    assert item["supervision_images"].shape == (2, 3, 16, 16) and item["supervision_masks"].shape == (2, 1, 16, 16)
    assert item["images"].min() >= -1 and item["images"].max() <= 1
    assert set(item["masks"].unique().tolist()) == {0.0, 1.0}
    assert torch.all(item["images"][:, :, 0, 0] == 1.0)  # white background
    assert item["images"][item["masks"].expand(-1, 3, -1, -1) == 0].mean() > 0.9  # edges: antialiased
    assert len(item["cameras"]) == 4 and len(item["supervision_cameras"]) == 2
    assert "chair" in item["caption"] and item["object_id"].startswith("000000-chair")
    # the mask is what the renderer sees from those cameras: coverage >= 0.5
    mesh = trimesh.load(os.path.join(rendered[0], item["object_id"], "mesh.glb"), force="mesh")
    mesh.vertices = mesh.vertices @ UP_AXIS_ROTATIONS["+y"].T  # stored +y up (glTF): back to the world's +z up
    again = render_views(mesh, item["supervision_cameras"], antialias=2)
    assert torch.equal(torch.from_numpy(again.rgba[..., 3] >= 0.5).float(), item["supervision_masks"][:, 0])


def test_occupancy_samples_are_inside_exactly_where_the_mesh_is():
    from diffusers_mv3d.data.dataset import occupancy_samples

    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    points, inside = occupancy_samples(sphere, 400, seed=3)
    assert points.shape == (400, 3) and inside.shape == (400,) and points.dtype == inside.dtype == torch.float32
    radius = points.norm(dim=-1)
    clear = (radius - 0.5).abs() > 0.01  # the facets lie up to ~0.002 inside the true sphere
    assert torch.equal(inside[clear], (radius[clear] < 0.5).float())
    assert (radius[200:] - 0.5).abs().max() < 0.15 and (radius[:200] - 0.5).abs().mean() > 0.2  # near / uniform halves
    again, _ = occupancy_samples(sphere, 400, seed=3)
    assert torch.equal(points, again)


def test_items_carry_occupancy_from_the_objects_mesh(rendered, multiview_copy):
    dataset = MultiViewDataset(rendered[0], num_input_views=4, num_supervision_views=2, occupancy_points=64)
    item = dataset[1]
    assert item["occupancy_points"].shape == (64, 3) and 0 < item["occupancy"].mean() < 1
    assert torch.equal(dataset[1]["occupancy_points"], item["occupancy_points"])  # the same points every time
    mesh = trimesh.load(os.path.join(rendered[0], item["object_id"], "mesh.glb"), force="mesh")
    mesh.vertices = mesh.vertices @ UP_AXIS_ROTATIONS["+y"].T  # back to the world's +z up, where the cameras are
    points = item["occupancy_points"].double().numpy()
    inside = np.any([part.contains(points) for part in mesh.split(only_watertight=False)], axis=0)
    assert np.array_equal(item["occupancy"].numpy(), inside.astype(np.float32))
    batch = collate_multiview([item, dataset[0]])
    assert batch["occupancy_points"].shape == (2, 64, 3) and batch["occupancy"].shape == (2, 64)
    os.remove(os.path.join(multiview_copy, sorted(os.listdir(multiview_copy))[0], "mesh.glb"))
    with pytest.raises(ObjectFolderError, match="has no mesh.glb, which occupancy_points needs"):
        MultiViewDataset(multiview_copy, num_input_views=4, num_supervision_views=2, occupancy_points=64)
    with pytest.raises(ValueError, match="occupancy_points must be >= 0"):
        MultiViewDataset(rendered[0], occupancy_points=-1)


def test_fewer_input_views_and_resizing(rendered):
    dataset = MultiViewDataset(rendered[0], num_input_views=2, num_supervision_views=1, resolution=8)
    item = dataset[1]
    assert item["images"].shape == (2, 3, 8, 8) and item["supervision_images"].shape == (1, 3, 8, 8)
    _, azimuths = item["cameras"].elevations_azimuths()
    assert torch.allclose(azimuths, torch.tensor([0.0, 180.0]), atol=1e-3)  # every other fixed view
    assert item["cameras"].height == 8 and torch.allclose(item["cameras"].intrinsics, default_cameras(2, 8).intrinsics)
    with pytest.raises(ObjectFolderError, match="input views"):
        MultiViewDataset(rendered[0], num_input_views=5)
    with pytest.raises(ObjectFolderError, match="too few"):
        MultiViewDataset(rendered[0], num_input_views=4, num_supervision_views=3)


def test_collate_makes_batch_cameras(rendered):
    dataset = MultiViewDataset(rendered[0], num_input_views=4, num_supervision_views=2)
    batch = collate_multiview([dataset[0], dataset[2]])
    assert batch["images"].shape == (2, 4, 3, 16, 16) and batch["supervision_masks"].shape == (2, 2, 1, 16, 16)
    assert batch["cameras"].batch_shape == (2, 4) and batch["supervision_cameras"].batch_shape == (2, 2)
    assert batch["caption"] == [dataset[0]["caption"], dataset[2]["caption"]]
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate_multiview)
    assert next(iter(loader))["images"].shape == (3, 4, 3, 16, 16)


def test_corrupt_png_raises_naming_the_file_or_is_skipped(multiview_copy):
    first = sorted(os.listdir(multiview_copy))[0]
    bad = os.path.join(multiview_copy, first, "rgba", "001.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n garbage")
    dataset = MultiViewDataset(multiview_copy, num_input_views=4, num_supervision_views=2)
    with pytest.raises(ObjectFolderError, match=os.path.join(first, "rgba", "001.png")):
        dataset[0]
    skipping = MultiViewDataset(multiview_copy, num_input_views=4, num_supervision_views=2, skip_invalid=True)
    with pytest.warns(UserWarning, match="001.png"):
        item = skipping[0]
    assert item["object_id"] != first


def test_wrong_size_or_rgb_png_raises(multiview_copy):
    first = sorted(os.listdir(multiview_copy))[0]
    Image.new("RGBA", (8, 8)).save(os.path.join(multiview_copy, first, "rgba", "002.png"))
    Image.new("RGB", (16, 16)).save(os.path.join(multiview_copy, first, "rgba", "003.png"))
    dataset = MultiViewDataset(multiview_copy, num_input_views=4, num_supervision_views=2)
    with pytest.raises(ObjectFolderError, match="002.png: is 8 x 8, expected 16 x 16"):
        dataset[0]
    os.remove(os.path.join(multiview_copy, first, "rgba", "002.png"))
    Image.new("RGBA", (16, 16)).save(os.path.join(multiview_copy, first, "rgba", "002.png"))
    with pytest.raises(ObjectFolderError, match="003.png: has no alpha"):
        dataset[0]


def test_missing_files_raise_naming_them_or_are_skipped(multiview_copy):
    names = sorted(os.listdir(multiview_copy))
    os.remove(os.path.join(multiview_copy, names[0], "cameras.json"))
    os.remove(os.path.join(multiview_copy, names[1], "rgba", "005.png"))
    os.makedirs(os.path.join(multiview_copy, ".tmp-000009-chair-red", "rgba"))  # half-written: ignored
    with pytest.raises(ObjectFolderError, match=os.path.join(names[0], "cameras.json") + ": missing"):
        MultiViewDataset(multiview_copy, num_input_views=4, num_supervision_views=2)
    with pytest.warns(UserWarning) as warned:
        dataset = MultiViewDataset(multiview_copy, num_input_views=4, num_supervision_views=2, skip_invalid=True)
    assert len(dataset) == 1 and dataset[0]["object_id"] == names[2]
    messages = " ".join(str(w.message) for w in warned)
    assert "cameras.json" in messages and "005.png" in messages
    # an incomplete folder is invalid even when the missing view is not asked for
    shutil.rmtree(os.path.join(multiview_copy, names[0]))
    with pytest.raises(ObjectFolderError, match="005.png: missing"):
        MultiViewDataset(multiview_copy, num_input_views=4, num_supervision_views=1)
    with open(os.path.join(multiview_copy, names[2], "cameras.json"), "w") as f:
        f.write("{not json")
    with pytest.warns(UserWarning) as warned, pytest.raises(ValueError, match="no valid"):
        MultiViewDataset(multiview_copy, num_input_views=4, num_supervision_views=2, skip_invalid=True)
    assert "cameras.json: not a valid cameras file" in " ".join(str(w.message) for w in warned)


def test_zero123_folders(tmp_path):
    """Blender-convention RT matrices in NNN.npy with NNN.png: cameras come back as rendered."""
    obj_dir = tmp_path / "zero123" / "abc123"
    obj_dir.mkdir(parents=True)
    fov = 49.1
    cameras = Cameras.orbit([10, 30, -5], [15, 140, 260], fov=fov, height=24)
    out = render_views(trimesh.creation.box((1.0, 0.6, 0.4)), cameras, background="transparent")
    for i, (rgba, rt) in enumerate(zip(out.rgba, cameras.to_zero123())):
        Image.fromarray((rgba * 255).round().astype(np.uint8), "RGBA").save(obj_dir / f"{i:03d}.png")
        np.save(obj_dir / f"{i:03d}.npy", rt.numpy())
    dataset = MultiViewDataset(str(tmp_path / "zero123"), num_input_views=2, num_supervision_views=1, resolution=12)
    item = dataset[0]
    assert item["caption"] == "" and item["images"].shape == (2, 3, 12, 12)
    assert torch.allclose(item["cameras"].world_to_camera, cameras.world_to_camera[:2], atol=1e-5)
    assert torch.allclose(item["supervision_cameras"].world_to_camera, cameras.world_to_camera[2:], atol=1e-5)
    assert torch.allclose(item["cameras"].intrinsics, cameras.rescale(12).intrinsics[:2], atol=1e-4)
    (obj_dir / "caption.txt").write_text("a small box\n")
    assert MultiViewDataset(str(tmp_path / "zero123"), 2, 1)[0]["caption"] == "a small box"
    os.remove(obj_dir / "001.png")
    with pytest.raises(ObjectFolderError, match="001.png: missing"):
        MultiViewDataset(str(tmp_path / "zero123"), 2, 1)


def test_image_text_dataset(rendered, tmp_path):
    dataset = ImageTextDataset(rendered[1], resolution=8)
    assert len(dataset) == 6
    item = dataset[2]
    assert item["pixel_values"].shape == (3, 8, 8) and item["pixel_values"].min() >= -1
    with open(os.path.join(rendered[1], "metadata.jsonl")) as f:
        record = [json.loads(line) for line in f][2]
    assert item["caption"] == record["text"] and item["category"] == record["category"] and item["colour"] == record["colour"]
    assert record["category"] in item["caption"] and record["colour"] in item["caption"]
    assert ImageTextDataset(rendered[1])[0]["pixel_values"].shape == (3, 16, 16)

    broken = shutil.copytree(rendered[1], str(tmp_path / "broken"))
    with open(os.path.join(broken, "metadata.jsonl"), "a") as f:
        f.write('{"file_name": "images/999999.png", "text": "a lost chair"}\n{oops\n')
    with pytest.raises(ObjectFolderError, match="999999.png: missing"):
        ImageTextDataset(broken)
    with pytest.warns(UserWarning) as warned:
        skipping = ImageTextDataset(broken, skip_invalid=True)
    assert len(skipping) == 6
    messages = [str(w.message) for w in warned]
    assert len(messages) == 2
    assert "images/999999.png: missing (listed at" in messages[0] and "metadata.jsonl:8: not JSON" in messages[1]
    with open(os.path.join(broken, "images", "000000.png"), "wb") as f:
        f.write(b"not a png")
    with pytest.warns(UserWarning, match="000000.png: cannot decode"):
        assert skipping[0]["caption"] == dataset[1]["caption"]
    os.remove(os.path.join(broken, "metadata.jsonl"))
    with open(os.path.join(rendered[1], "metadata.jsonl")) as f, open(os.path.join(broken, "metadata.jsonl"), "w") as g:
        g.write(f.read())
    with pytest.raises(ObjectFolderError, match="000000.png: cannot decode"):
        ImageTextDataset(broken)[0]
