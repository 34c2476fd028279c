"""The retrieval captioner of image-to-multiview references (diffusers_mv3d.captioning)."""

import json

import pytest
import torch
from training_fixtures import render_objects

from diffusers_mv3d.captioning import RetrievalCaptioner, build_captioner, caption_references, recolour_caption
from diffusers_mv3d.cli import main
from diffusers_mv3d.data.dataset import MultiViewDataset


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return render_objects(tmp_path_factory.mktemp("objects") / "objects", num_objects=4, resolution=16)


def views_zero(folder):
    """Every object's view 0 ``[N, 3, H, W]`` in [-1, 1] over white, and the objects' captions."""
    dataset = MultiViewDataset(str(folder), num_input_views=1, resolution=16)
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([item["images"][0] for item in items]), [item["caption"] for item in items]


def test_recolour_caption_replaces_the_colour_word_and_fixes_the_article():
    assert recolour_caption("an orange mug with a handle", "orange", "red") == "a red mug with a handle"
    assert recolour_caption("a red chair with a low back", "red", "orange") == "an orange chair with a low back"
    assert recolour_caption("this sofa is grey and has armrests", "grey", "white") == "this sofa is white and has armrests"
    assert recolour_caption("a tall bottle", "", "red") == "a tall bottle"  # colour unknown: unchanged
    assert recolour_caption("a tall bottle", "blue", "red") == "a tall bottle"  # colour not named: unchanged


def test_a_view_of_the_index_is_captioned_with_its_own_caption(rendered):
    captioner = build_captioner(str(rendered), progress=False)
    images, captions = views_zero(rendered)
    assert captioner.config.captions == captions and captioner.view_keys.shape == (4, 4, 16, 16)
    assert captioner.nearest(images).tolist() == [0, 1, 2, 3]
    assert captioner(images) == captions
    colours = [json.loads((rendered / name / "object.json").read_text())["colour"]
               for name in sorted(p.name for p in rendered.iterdir() if p.is_dir())]
    assert captioner.config.colours == colours
    recoloured = captioner(images, ["purple"] * 4)  # the caller's colour replaces the object's
    assert recoloured == [recolour_caption(c, colour, "purple") for c, colour in zip(captions, colours)]
    assert all("purple" in c for c in recoloured)


def test_the_silhouette_decides_before_the_colour():
    wide, narrow, query = torch.ones(3, 1, 3, 16, 16)  # white images
    wide[..., 4:12, 5:11] = -1.0  # black, two columns wider than the query
    narrow[..., 4:12, 6:10] = 0.8  # pale grey, the query's shape
    query[..., 4:12, 6:10] = -1.0  # black
    for pixel_weight, expected in ((0.3, "a narrow thing"), (1000.0, "a wide thing")):  # pixels alone: the colour wins
        captioner = RetrievalCaptioner(["a wide thing", "a narrow thing"], pixel_weight=pixel_weight)
        captioner.view_keys.copy_(captioner.image_keys(torch.cat([wide, narrow])))
        assert captioner(query) == [expected]


def test_save_load_round_trip_and_inside_a_pipeline(rendered, tmp_path):
    from dummies import tiny_pipeline

    from diffusers_mv3d import TuneMV3DPipeline

    captioner = build_captioner(str(rendered), progress=False)
    captioner.save_pretrained(tmp_path / "captioner")
    loaded = RetrievalCaptioner.from_pretrained(tmp_path / "captioner")
    assert torch.equal(loaded.view_keys, captioner.view_keys) and loaded.config.captions == captioner.config.captions
    images, _ = views_zero(rendered)
    assert loaded(images, ["red"] * 4) == captioner(images, ["red"] * 4)

    pipe = tiny_pipeline()
    pipe.register_modules(captioner=captioner)
    pipe.save_pretrained(tmp_path / "pipe")
    again = TuneMV3DPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(again.captioner, RetrievalCaptioner) and torch.equal(again.captioner.view_keys, captioner.view_keys)
    assert again.captioner.dtype == torch.float32  # a pipeline's dtype is any one module's: no half-precision keys
    pipe.register_modules(captioner=None)  # optional: a pipeline without one saves and loads
    pipe.save_pretrained(tmp_path / "plain")
    assert TuneMV3DPipeline.from_pretrained(tmp_path / "plain").captioner is None


def test_caption_references_uses_the_classifiers_colour_or_its_caption():
    from diffusers_mv3d.evaluation.classifier import AttributeClassifier, caption_images

    torch.manual_seed(0)
    classifier = AttributeClassifier(categories=["mug", "lamp"], colours=["red", "orange"], block_out_channels=(8, 8),
                                     sample_size=16).eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert caption_references(images, classifier) == caption_images(classifier, images)
    captioner = RetrievalCaptioner(["a tall blue lamp"], ["blue"], key_size=4)
    colours = [classifier.config.colours[i] for i in classifier(images).colour_logits.argmax(-1).tolist()]
    expected = [f"a tall {c} lamp" for c in colours]
    assert caption_references(images, classifier, captioner) == expected


def test_bad_input_raises_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="data_dir .* is not a folder"):
        build_captioner(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no object folders"):
        build_captioner(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="colours must give one colour a caption"):
        RetrievalCaptioner(["a", "b"], ["red"])
    captioner = RetrievalCaptioner(["a"], key_size=4)
    with pytest.raises(ValueError, match=r"images must be \[B, 3, H, W\]"):
        captioner(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="colours must give one colour an image"):
        captioner(torch.zeros(2, 3, 16, 16), ["red"])


def test_build_captioner_command_writes_a_loadable_folder(rendered, tmp_path, capsys):
    assert main(["build-captioner", "--data", str(rendered), "--out", str(tmp_path / "captioner")]) == 0
    assert "captioner of 4 objects" in capsys.readouterr().out
    assert RetrievalCaptioner.from_pretrained(tmp_path / "captioner").config.captions == views_zero(rendered)[1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    assert main(["build-captioner", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "c2")]) == 2
    assert not (tmp_path / "c2").exists()


def test_build_captioner_adds_it_to_a_saved_pipeline(rendered, tmp_path):
    from dummies import tiny_pipeline

    from diffusers_mv3d import TuneMV3DPipeline

    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    before = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert main(["build-captioner", "--data", str(rendered), "--pipeline", str(tmp_path / "pipe")]) == 0
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index == {**before, "captioner": ["diffusers_mv3d.captioning", "RetrievalCaptioner"]}
    loaded = TuneMV3DPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.captioner.config.captions == views_zero(rendered)[1]
    assert main(["build-captioner", "--data", str(rendered), "--pipeline", str(tmp_path / "no-pipe")]) == 2
    assert not (tmp_path / "no-pipe").exists()
