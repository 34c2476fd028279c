"""Fidelity (DESIGN.md §6): the attribute classifier, its trainer and command, and the accuracy figures."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_mv3d.data.palette import PALETTE
from diffusers_mv3d.data.world import CATEGORIES
from diffusers_mv3d.evaluation.classifier import (
    AttributeClassifier,
    AttributeClassifierOutput,
    accuracy_from_logits,
    caption_images,
    fidelity,
)
from diffusers_mv3d.evaluation.train_classifier import augment, cli, train_attribute_classifier

TINY = dict(block_out_channels=(8, 16), norm_num_groups=4)


def write_tiny_folder(root, count=24, size=32):
    """An imagefolder of ``count`` drawn images: red or blue, square ("table") or disc ("mug"), on white."""
    os.makedirs(os.path.join(root, "images"))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    with open(os.path.join(root, "metadata.jsonl"), "w") as f:
        for i in range(count):
            category, colour = ("table", "mug")[i % 2], ("red", "blue")[(i // 2) % 2]
            cx, cy, r = rng.integers(10, size - 10, 2).tolist() + [int(rng.integers(5, 9))]
            inside = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < r) if category == "table" else (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            image = np.ones((size, size, 3))
            image[inside] = PALETTE[colour]
            name = f"images/{i:03d}.png"
            Image.fromarray((image * 255).astype(np.uint8)).save(os.path.join(root, name))
            f.write(json.dumps({"file_name": name, "text": f"a {colour} {category}", "category": category, "colour": colour}) + "\n")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny2d"))
    write_tiny_folder(root)
    return root


# ------------------------------------------------------------------------- the model
def test_classifier_defaults_take_the_world_vocabularies_and_stay_small(tmp_path):
    model = AttributeClassifier()
    assert list(model.config.categories) == list(CATEGORIES)
    assert list(model.config.colours) == list(PALETTE)
    out = model(torch.zeros(2, 3, 32, 32))
    assert out.category_logits.shape == (2, len(CATEGORIES)) and out.colour_logits.shape == (2, len(PALETTE))
    model.save_pretrained(tmp_path)
    assert os.path.getsize(tmp_path / "diffusion_pytorch_model.safetensors") < 5 * 2**20


def test_classifier_resizes_larger_views_to_its_sample_size():
    torch.manual_seed(0)
    model = AttributeClassifier(categories=["a", "b"], colours=["x", "y", "z"], **TINY).eval()
    big = torch.rand(3, 3, 64, 64) * 2 - 1
    small = torch.nn.functional.interpolate(big, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    category, colour = model(big, return_dict=False)
    assert torch.allclose(category, model(small).category_logits, atol=1e-6)
    assert colour.shape == (3, 3)


def test_classifier_validates_its_config():
    with pytest.raises(ValueError, match="norm_num_groups"):
        AttributeClassifier(block_out_channels=(8, 12), norm_num_groups=8)
    with pytest.raises(ValueError, match="categories"):
        AttributeClassifier(categories=["a", "a"])
    with pytest.raises(ValueError, match="sample_size"):
        AttributeClassifier(sample_size=2, block_out_channels=(8, 8, 8, 8), norm_num_groups=4)


def test_augment_flips_and_shifts_with_white_fill():
    g = torch.Generator().manual_seed(0)
    images = -torch.ones(16, 3, 8, 8)  # black squares fill the frame
    out = augment(images, 2, g)
    assert set(out.unique().tolist()) <= {-1.0, 1.0}
    assert (out == 1.0).any()  # some shifted images show the white fill
    assert torch.equal(augment(images, 0, torch.Generator().manual_seed(0)), images)  # flips alone: symmetric image unchanged


# ------------------------------------------------------------------------- training, save / load
def test_train_on_a_tiny_folder_then_round_trip_save_load(tiny_folder, tmp_path):
    out = str(tmp_path / "clf")
    metrics = train_attribute_classifier(tiny_folder, out, steps=4, batch_size=8, val_fraction=0.25, log_every=2, **TINY)
    assert metrics["num_val"] == 6 and metrics["num_train"] == 18
    assert 0.0 <= metrics["val_category_accuracy"] <= 1.0 and metrics["val_num_colour"] == 6
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "metrics.json", "train_config.yaml"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert json.load(open(os.path.join(out, "metrics.json")))["steps"] == 4

    loaded = AttributeClassifier.from_pretrained(out).eval()
    assert list(loaded.config.categories) == list(CATEGORIES) and tuple(loaded.config.block_out_channels) == (8, 16)
    # a second load of the same folder gives the same weights; save again and compare outputs exactly
    again = str(tmp_path / "again")
    loaded.save_pretrained(again)
    reloaded = AttributeClassifier.from_pretrained(again).eval()
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    a, b = loaded(x), reloaded(x)
    assert torch.equal(a.category_logits, b.category_logits) and torch.equal(a.colour_logits, b.colour_logits)


def test_train_classifier_command(tiny_folder, tmp_path, capsys):
    out = tmp_path / "cmd"
    flags = ["--data", tiny_folder, "--out", str(out), "--block-out-channels", "8", "16", "--norm-num-groups", "4"]
    assert cli(flags + ["--steps", "2", "--dry-run"]) == 0
    assert "steps: 2" in capsys.readouterr().out and not out.exists()
    assert cli(["--out", str(out)]) == 2
    assert "--data" in capsys.readouterr().err
    command = [sys.executable, "-m", "diffusers_mv3d.evaluation.train_classifier"] + flags
    run = subprocess.run(command + ["--steps", "2", "--batch-size", "4", "--log-every", "1"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "held out: category" in run.stdout and (out / "diffusion_pytorch_model.safetensors").is_file()


# ------------------------------------------------------------------------- accuracy figures
class LogitsInPixels(torch.nn.Module):
    """A stand-in classifier that reads hand-made logits out of the image: row 0 of channels 0 and 1."""

    def __init__(self, categories, colours):
        super().__init__()
        self.config = SimpleNamespace(categories=categories, colours=colours)

    def forward(self, images, return_dict=True):
        return AttributeClassifierOutput(images[:, 0, 0, : len(self.config.categories)], images[:, 1, 0, : len(self.config.colours)])


def hand_made_images(category_logits, colour_logits):
    images = torch.zeros(len(category_logits), 3, 4, 4)
    images[:, 0, 0, : category_logits.shape[1]] = category_logits
    images[:, 1, 0, : colour_logits.shape[1]] = colour_logits
    return images


def test_accuracy_from_logits_known_answer():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0], [0.0, 1.0]])
    accuracy, count = accuracy_from_logits(logits, torch.tensor([0, 1, 1, -100]))
    assert accuracy == pytest.approx(2 / 3) and count == 3
    accuracy, count = accuracy_from_logits(logits, torch.full((4,), -100))
    assert count == 0 and accuracy != accuracy  # nan when nothing is labelled


def test_fidelity_on_hand_made_logits():
    classifier = LogitsInPixels(["chair", "mug", "car"], ["red", "blue"])
    category_logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [3.0, 0, 0]])  # predicts chair, mug, car, chair
    colour_logits = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])  # predicts red, red, blue, blue
    attributes = [
        {"category": "chair", "colour": "red"},  # both right
        {"category": "car", "colour": "blue"},  # both wrong
        {"category": "car"},  # category right, colour unscored
        {"category": None, "colour": "blue"},  # category unscored, colour right
    ]
    result = fidelity(hand_made_images(category_logits, colour_logits), attributes, classifier)
    assert result["category_accuracy"] == pytest.approx(2 / 3) and result["num_category"] == 3
    assert result["colour_accuracy"] == pytest.approx(2 / 3) and result["num_colour"] == 3
    assert result["category_predictions"] == ["chair", "mug", "car", "chair"]
    assert result["colour_predictions"] == ["red", "red", "blue", "blue"]

    # [B, V, 3, H, W] views with one attribute mapping an object
    views = hand_made_images(category_logits, colour_logits).reshape(2, 2, 3, 4, 4)
    per_object = fidelity(views, [{"category": "chair", "colour": "red"}, {"category": "car", "colour": "blue"}], classifier)
    assert per_object["category_accuracy"] == pytest.approx(2 / 4)  # chair, mug | car, chair
    assert per_object["colour_accuracy"] == pytest.approx(1.0)  # red, red | blue, blue

    with pytest.raises(ValueError, match="dragon"):
        fidelity(hand_made_images(category_logits, colour_logits), [{"category": "dragon"}] * 4, classifier)
    with pytest.raises(ValueError, match="entries"):
        fidelity(hand_made_images(category_logits, colour_logits), attributes[:3], classifier)


def test_captions_take_the_likeliest_labels_and_the_worlds_articles():
    classifier = LogitsInPixels(["chair", "mug"], ["orange", "blue"])
    images = hand_made_images(torch.tensor([[0, 2.0], [3.0, 1.0]]), torch.tensor([[1.0, 0], [0, 1.0]]))
    assert caption_images(classifier, images) == ["an orange mug", "a blue chair"]


def test_the_shipped_classifier_captions_renders_of_training_objects_by_colour_and_category():
    from diffusers_mv3d.cameras import default_cameras
    from diffusers_mv3d.data.render import render_views
    from diffusers_mv3d.data.splits import split_object
    from diffusers_mv3d.evaluation.settings import DEFAULT_CLASSIFIER

    classifier = AttributeClassifier.from_pretrained(DEFAULT_CLASSIFIER)
    objects = [split_object("objects3d", i)[1] for i in range(3)]  # a green bench, a blue bottle, a purple bench
    renders = [render_views(obj.mesh, default_cameras(1, 32), background="white", antialias=2).rgba for obj in objects]
    views = torch.from_numpy(np.concatenate(renders))[..., :3].permute(0, 3, 1, 2) * 2 - 1
    assert caption_images(classifier, views) == [f"a {obj.colour} {obj.category}" for obj in objects]
