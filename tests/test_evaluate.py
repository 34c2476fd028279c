"""The evaluation (``diffusers-mv3d evaluate``, ``benchmarks/bench_quality.py``): the prompt set, the
variants' hooks, the mesh metrics against known answers, and an end-to-end run on a tiny random
pipeline (2 prompts, 4 views, 2 steps, small grids)."""

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from diffusers_mv3d import cli
from diffusers_mv3d.data.splits import is_in_3d_split
from diffusers_mv3d.data.world import generate_object
from diffusers_mv3d.evaluation.classifier import AttributeClassifier
from diffusers_mv3d.evaluation.evaluate import (
    DEFAULT_VARIANTS,
    EvalPrompt,
    EvaluationConfig,
    chamfer_l1,
    evaluate,
    ground_truth_object,
    load_prompt_set,
    sample_foundation,
    volume_iou,
    voxelize_mesh,
    without_geometry_attention,
    without_neus,
)
from dummies import randomize_branch, tiny_pipeline

REPO = Path(__file__).resolve().parents[1]
FAST = ["--views", "4", "--steps", "2", "--seeds", "0", "--hull-resolution", "16", "--recon-steps", "10",
        "--recon-resolution", "8", "--mesh-resolution", "16", "--mesh-iou-resolution", "16", "--chamfer-points", "500",
        "--num-threads", "1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def one_thread():
    """Two threads on a machine whose other core is busy are several times slower than one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A saved tiny pipeline, a tiny classifier, and a 2-prompt set (one in, one out of the 3D splits)."""
    root = tmp_path_factory.mktemp("evaluate")
    tiny_pipeline().save_pretrained(root / "pipe")
    torch.manual_seed(0)
    AttributeClassifier(sample_size=16, block_out_channels=(8, 16), norm_num_groups=4).save_pretrained(root / "classifier")
    prompts = [{"text": "a red chair with armrests", "category": "chair", "colour": "red"},
               {"text": "a pink mug", "category": "mug", "colour": "pink"}]
    (root / "prompts.json").write_text(json.dumps({"prompts": prompts, "seeds": [0]}))
    (root / "one_prompt.json").write_text(json.dumps(prompts[:1]))
    return root


def run_pipe(pipe, **kwargs):
    return pipe("a red chair with armrests", num_views=3, num_inference_steps=2, output_type="pt",
                generator=torch.Generator().manual_seed(0), **kwargs).images


# ------------------------------------------------------------------------- the prompt set
def test_the_fixed_prompt_set_has_labelled_in_and_out_of_split_prompts():
    prompts, seeds = load_prompt_set()  # benchmarks/prompts.py
    inside = [p for p in prompts if p.in_split]
    outside = [p for p in prompts if not p.in_split]
    assert len(inside) == 8 and len(outside) == 4 and seeds == (0, 1)
    assert sum(p.category == "chair" for p in inside) == 2
    assert all(is_in_3d_split(p.category, p.colour) for p in inside)
    assert all(p.category in p.text and p.colour in p.text for p in prompts)
    with pytest.raises(ValueError, match="category"):
        EvalPrompt("a red dragon", "dragon", "red")


def test_ground_truth_objects_have_the_prompts_attributes():
    for prompt in (EvalPrompt("a red chair", "chair", "red"), EvalPrompt("a white snowman", "snowman", "white")):
        first_id, first = ground_truth_object(prompt, 0)
        second_id, _ = ground_truth_object(prompt, 1)
        assert (first.category, first.colour) == (prompt.category, prompt.colour) and first_id != second_id
    assert ground_truth_object(EvalPrompt("a red chair", "chair", "red"), 0)[0].endswith("-chair-red")  # an eval3d object


def test_config_errors_name_the_flag():
    with pytest.raises(ValueError, match="--variants"):
        EvaluationConfig(model="m", variants=("tunemv3d", "bogus"))
    with pytest.raises(ValueError, match="--views"):
        EvaluationConfig(model="m", views=1)
    with pytest.raises(ValueError, match="--model"):
        EvaluationConfig()
    with pytest.raises(ValueError, match="--seeds"):
        EvaluationConfig(model="m", seeds=(0, -1))


def test_evaluate_refuses_an_out_file_before_sampling(tiny_folder, tmp_path, capsys, monkeypatch):
    import diffusers_mv3d.evaluation.evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "evaluate", lambda *a, **k: pytest.fail("sampled before checking --out"))
    (tmp_path / "a-file").write_text("")
    argv = ["evaluate", "--model", str(tiny_folder / "pipe"), "--prompts", str(tiny_folder / "prompts.json"), *FAST,
            "--out", str(tmp_path / "a-file")]
    assert cli.main(argv) == 2
    assert "--out" in capsys.readouterr().err


# ------------------------------------------------------------------------- variants
def test_foundation_variant_is_the_pipeline_without_its_branch():
    """A fresh branch adds exactly zero, so the UNet alone with the same loop and noise gives the same views."""
    pipe = tiny_pipeline()
    expected = run_pipe(pipe)
    got = sample_foundation(pipe, "a red chair with armrests", 3, 2, 3.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("context", [without_geometry_attention, without_neus])
def test_ablation_contexts_change_the_output_and_restore_the_pipeline(context):
    pipe = tiny_pipeline()
    randomize_branch(pipe)
    attention, forward = pipe.controlnet.geometry_attention, type(pipe.neus).forward
    before = run_pipe(pipe)
    with context(pipe):
        ablated = run_pipe(pipe, consistency_ratio=0.0)
    after = run_pipe(pipe)
    assert torch.equal(before, after)
    assert not torch.allclose(ablated, before, atol=1e-4)
    assert pipe.controlnet.geometry_attention is attention and len(attention) == 2
    assert "forward" not in pipe.neus.__dict__ and type(pipe.neus).forward is forward


def test_without_neus_feeds_the_branch_no_neus_output():
    pipe = tiny_pipeline()
    seen = []
    original = pipe.branch_residuals
    pipe.branch_residuals = lambda *args, **kwargs: seen.append(args[4] if len(args) > 4 else kwargs.get("neus_output")) or original(*args, **kwargs)
    with without_neus(pipe):
        run_pipe(pipe, consistency_ratio=0.0)
    assert seen and all(s is None for s in seen)
    seen.clear()
    run_pipe(pipe, consistency_ratio=0.0)
    assert seen and all(s is not None for s in seen)


# ------------------------------------------------------------------------- image metrics
def test_image_psnr_is_capped_for_identical_views():
    from diffusers_mv3d.evaluation.consistency import MAX_PSNR
    from diffusers_mv3d.evaluation.metrics import image_psnr_ssim

    views = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert image_psnr_ssim(views, views) == (MAX_PSNR, 1.0)
    noisy = (views + 0.1).clamp(0, 1)
    psnr, ssim = image_psnr_ssim(noisy, views)
    assert 15.0 < psnr < 30.0 and ssim < 1.0


# ------------------------------------------------------------------------- mesh metrics
def test_mesh_metrics_identical_and_shifted():
    chair = generate_object("chair", 3, "red").mesh
    assert chamfer_l1(chair, chair, 2000) == 0.0
    assert volume_iou(chair, chair, 24) == 1.0
    shifted = chair.copy()
    shifted.apply_translation([0.15, 0.0, 0.0])
    assert chamfer_l1(chair, shifted, 2000) > 0.05
    assert volume_iou(chair, shifted, 24) < 0.8
    farther = chair.copy()
    farther.apply_translation([0.3, 0.0, 0.0])
    assert chamfer_l1(chair, farther, 2000) > chamfer_l1(chair, shifted, 2000)
    assert volume_iou(chair, farther, 24) < volume_iou(chair, shifted, 24)


def test_voxelize_mesh_counts_overlapping_parts_as_inside():
    """Two overlapping closed boxes: parity over the whole mesh would call the overlap outside."""
    a = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    b = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    b.apply_translation([0.5, 0.0, 0.0])
    union = trimesh.util.concatenate([a, b])
    occupancy = voxelize_mesh(union, 16)  # centres at -1 + (i + 0.5) / 8
    axis = -1.0 + (np.arange(16) + 0.5) / 8
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    expected = (x > -0.5) & (x < 1.0) & (np.abs(y) < 0.5) & (np.abs(z) < 0.5)  # the naive union
    assert np.array_equal(occupancy, expected)
    assert volume_iou(a, union, 16) == pytest.approx(expected[x < 0.5].sum() / expected.sum())


# ------------------------------------------------------------------------- end to end
def test_evaluate_command_writes_every_variant(tiny_folder, tmp_path):
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(tiny_folder / "pipe"), "--classifier", str(tiny_folder / "classifier"),
            "--prompts", str(tiny_folder / "prompts.json"), "--image-to-multiview", "1", *FAST, "--out", str(out)]
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    markdown = (out / "results.md").read_text()
    assert list(results["variants"]) == list(DEFAULT_VARIANTS)  # the baselines need their folders
    for variant in DEFAULT_VARIANTS:
        assert f"| {variant} |" in markdown
        assert results["variants"][variant]["all"]["objects"] == 2
        assert results["variants"][variant]["in_split"]["objects"] == 1
        assert (out / "views" / variant / "00-s0.png").is_file()
    assert results["command"].startswith("diffusers-mv3d evaluate ") and f"`{results['command']}`" in markdown
    assert "cores" in markdown and results["date"] in markdown
    truth, control = results["variants"]["ground-truth"]["all"], results["variants"]["negative-control"]["all"]
    assert truth["vh_iou"] > control["vh_iou"]
    assert truth["category_accuracy"] is not None  # the classifier ran
    i2mv = results["image_to_multiview"]
    assert len(i2mv["objects"]) == 1 and i2mv["mean"]["psnr"] is not None and "### Image-to-multiview" in markdown
    assert "| tunemv3d, image alone |" in markdown and i2mv["objects"][0]["prompt"] is None
    assert len(results["objects"]) == 2 * len(DEFAULT_VARIANTS)


def test_image_to_multiview_prompts_none_the_caption_or_an_auto_caption(tiny_folder, tmp_path):
    from diffusers_mv3d.data.splits import split_fingerprints, split_objects, unseen_split_objects
    from diffusers_mv3d.evaluation.classifier import caption_images
    from diffusers_mv3d.evaluation.evaluate import image_to_multiview
    from diffusers_mv3d.evaluation.variants import render_object
    from diffusers_mv3d.cameras import default_cameras

    pipe = tiny_pipeline()
    classifier = AttributeClassifier.from_pretrained(tiny_folder / "classifier")
    settings = dict(model="in-memory", views=4, steps=1, image_to_multiview=1, mesh_resolution=16,
                    mesh_iou_resolution=16, chamfer_points=200)
    # the first eval3d object that none of the first 2000 objects3d objects (the training renders) equals
    (object_id, obj), = unseen_split_objects("eval3d", 1, split_fingerprints("objects3d", 2000))
    (first_id, first), = split_objects("eval3d", 1)
    assert first_id != object_id  # eval3d object 0 repeats a training object: skipped
    reference = render_object(obj, default_cameras(4, pipe.image_size))[:1]
    for flags, expected in (({}, None), ({"image_to_multiview_caption": True}, obj.caption),
                            ({"image_to_multiview_auto_caption": True}, caption_images(classifier, reference * 2 - 1)[0])):
        record, = image_to_multiview(pipe, EvaluationConfig(**settings, **flags), 0, classifier)["objects"]
        assert record["prompt"] == expected and record["object_id"] == object_id
    record, = image_to_multiview(pipe, EvaluationConfig(**settings, seen_objects3d=0, image_to_multiview_caption=True),
                                 0, classifier, views_dir=str(tmp_path))["objects"]
    assert (record["object_id"], record["prompt"]) == (first_id, first.caption)
    # the saved rows: the generated views begin with the reference, exactly (clamped), beside the renders
    from PIL import Image

    row = np.asarray(Image.open(tmp_path / "image-to-multiview" / f"{first_id}.png"))
    renders = np.asarray(Image.open(tmp_path / "image-to-multiview" / f"{first_id}-renders.png"))
    size = pipe.image_size
    assert row.shape == renders.shape == (size, 4 * size, 3)
    assert np.array_equal(row[:, :size], renders[:, :size])
    with pytest.raises(ValueError, match="--seen-objects3d must be >= 0"):
        EvaluationConfig(**settings, seen_objects3d=-1)
    # a pipeline with a captioner: its caption, in the classifier's colour
    from diffusers_mv3d.captioning import RetrievalCaptioner, caption_references

    pipe.register_modules(captioner=RetrievalCaptioner(["a tall blue lamp"], ["blue"], key_size=4))
    result = image_to_multiview(pipe, EvaluationConfig(**settings, image_to_multiview_auto_caption=True), 0, classifier)
    assert result["objects"][0]["prompt"] == caption_references(reference * 2 - 1, classifier, pipe.captioner)[0]
    assert result["objects"][0]["prompt"].endswith(" lamp") and result["auto_captioner"] == "the pipeline's captioner"
    with pytest.raises(ValueError, match="--image-to-multiview-auto-caption needs the attribute classifier"):
        image_to_multiview(pipe, EvaluationConfig(**settings, image_to_multiview_auto_caption=True), 0, None)
    with pytest.raises(ValueError, match="exclude each other"):
        EvaluationConfig(**settings, image_to_multiview_caption=True, image_to_multiview_auto_caption=True)


def test_bench_script_wraps_the_same_evaluation_and_skips_a_missing_classifier(tiny_folder, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "benchmarks" / "bench_quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "results_quality.md"
    argv = ["--model", str(tiny_folder / "pipe"), "--classifier", str(tmp_path / "nothing"), "--prompts",
            str(tiny_folder / "prompts.json"), "--variants", "tunemv3d", "ground-truth", *FAST, "--out", str(out)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert bench.main(argv) == 0
    assert any("fidelity is skipped" in str(w.message) for w in caught)
    markdown = out.read_text()
    results = json.loads(out.with_suffix(".json").read_text())
    assert markdown.count("| tunemv3d |") == 2 and "| ground-truth |" in markdown and "| k0 |" not in markdown
    assert results["command"] == "python benchmarks/bench_quality.py " + " ".join(argv)
    assert results["variants"]["ground-truth"]["all"]["category_accuracy"] is None  # fidelity skipped
    assert "| ground-truth | - |" in markdown


def test_evaluate_in_process_with_a_pipeline(tiny_folder):
    """The library call: a loaded pipeline, the references only, one prompt (the negative control
    then mixes two objects of that prompt), fidelity switched off."""
    cfg = EvaluationConfig(model="in-memory", prompts=str(tiny_folder / "one_prompt.json"), views=4,
                           variants=("ground-truth", "negative-control"), hull_resolution=16, recon_steps=10,
                           recon_resolution=8, fidelity=False)
    results = evaluate(cfg, pipe=tiny_pipeline())
    assert results["classifier"].startswith("skipped") and results["seeds"] == [0]
    assert results["variants"]["ground-truth"]["all"]["objects"] == 1
    assert results["variants"]["ground-truth"]["all"]["vh_iou"] > results["variants"]["negative-control"]["all"]["vh_iou"]


def test_model_card_quality_section_is_inserted_once_and_replaced(tmp_path):
    from diffusers_mv3d.evaluation.report import update_model_card

    readme = tmp_path / "README.md"
    readme.write_text("---\nlibrary_name: diffusers\n---\n\n# Model\n\n## Usage\n\ncode\n\n## How it was made\n\ncmd\n")
    update_model_card(str(readme), "## Multi-view quality\n\n| a |\n\n### Image-to-multiview\n\nfirst\n")
    update_model_card(str(readme), "## Multi-view quality\n\n| b |\n")
    text = readme.read_text()
    assert text.count("## Quality") == 1 and "| a |" not in text and "first" not in text
    assert text.index("## Usage") < text.index("## Quality\n\n### Multi-view quality\n\n| b |") < text.index("## How it was made")
    assert text.endswith("## How it was made\n\ncmd\n")
    with pytest.raises(ValueError, match="--model-card"):
        update_model_card(str(tmp_path / "missing.md"), "x")


def test_fidelity_classifies_views_on_white_unless_told_not_to(monkeypatch):
    from diffusers_mv3d.evaluation import classifier as classifier_module
    from diffusers_mv3d.evaluation.evaluate import EvalPrompt, EvaluationConfig, _fidelity_record

    seen = []
    monkeypatch.setattr(classifier_module, "fidelity",
                        lambda images, attributes, classifier: seen.append(images) or
                        {"category_accuracy": 1.0, "colour_accuracy": 0.5})
    views = torch.tensor([0.7, 0.9, 0.8])[None, :, None, None].repeat(2, 1, 8, 8)  # a tinted background in [0, 1]
    views[:, :, 2:5, 3:6] = torch.tensor([0.8, 0.1, 0.1])[:, None, None]  # a red object
    prompt = EvalPrompt("a red chair", "chair", "red")
    for on_white in (True, False):
        record = _fidelity_record(views, prompt, object(), EvaluationConfig(model="x", fidelity_on_white=on_white))
        assert record == {"category_accuracy": 1.0, "colour_accuracy": 0.5}
    whitened, untouched = seen
    assert torch.equal(whitened[:, :, 2:5, 3:6], views[:, :, 2:5, 3:6] * 2 - 1)
    assert (whitened[:, :, :2] == 1).all() and (whitened[:, :, 5:] == 1).all()
    assert torch.equal(untouched, views * 2 - 1)


def test_render_object_gives_the_coverage_as_a_fourth_channel_on_request():
    from diffusers_mv3d.cameras import default_cameras
    from diffusers_mv3d.data.splits import split_object
    from diffusers_mv3d.evaluation.variants import render_object

    obj, cameras = split_object("eval3d", 0)[1], default_cameras(2, 16)
    rgb, rgba = render_object(obj, cameras), render_object(obj, cameras, alpha=True)
    assert rgb.shape == (2, 3, 16, 16) and rgba.shape == (2, 4, 16, 16) and torch.equal(rgba[:, :3], rgb)
    coverage = rgba[:, 3]
    assert coverage.min() == 0 and coverage.max() == 1  # background and object
    assert torch.all(rgb[0][:, coverage[0] == 0] == 1)  # uncovered pixels are white


def test_compose_views_stacks_image_to_multiview_rows_above_their_renders(tmp_path):
    from PIL import Image

    spec = importlib.util.spec_from_file_location("compose_views", REPO / "benchmarks" / "compose_views.py")
    compose = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compose)
    folder = tmp_path / "views" / "image-to-multiview"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 2), (255, 0, 0)).save(folder / "000002-lamp-cyan.png")
    Image.new("RGB", (8, 2), (0, 0, 255)).save(folder / "000002-lamp-cyan-renders.png")
    out = tmp_path / "sheet.png"
    assert compose.main(["--views-dir", str(tmp_path / "views"), "--image-to-multiview", "--scale", "3",
                         "--out", str(out)]) == 0
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == (2 * 2 * 3, 130 + 8 * 3, 3)
    assert tuple(sheet[0, -1]) == (255, 0, 0) and tuple(sheet[-1, -1]) == (0, 0, 255)  # generated, then renders
    with pytest.raises(SystemExit):
        compose.main(["--views-dir", str(tmp_path), "--image-to-multiview", "--out", str(out)])  # no such views
    with pytest.raises(SystemExit):
        compose.main(["--views-dir", str(tmp_path / "views"), "--out", str(out)])  # neither mode


def test_paired_difference_pairs_image_to_multiview_records_by_object(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("paired_difference", REPO / "benchmarks" / "paired_difference.py")
    paired = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paired)

    def records(photo, chamfer):  # score_reconstructor.py --records: keyed by tuning object, no variant
        return {"records": [{"object_index": i, "seed": 0, "photo_psnr": p, "ssim": 0.5, "silhouette_iou": 0.6,
                             "volume_iou": 0.3, "chamfer_l1": c} for i, (p, c) in enumerate(zip(photo, chamfer))]}

    baseline, candidate = tmp_path / "a.json", tmp_path / "b.json"
    baseline.write_text(json.dumps(records([17.0, 18.0, 16.0], [0.06, 0.07, 0.08])))
    candidate.write_text(json.dumps(records([17.5, 18.5, 16.5], [0.05, float("nan"), 0.06])))
    a, b = paired.load_objects(str(baseline), "generated"), paired.load_objects(str(candidate), "generated")
    assert paired.shared_metrics(a, b) == ["photo_psnr", "ssim", "silhouette_iou", "volume_iou", "chamfer_l1"]
    assert paired.paired(a, b, "photo_psnr") == pytest.approx((0.5, 0.0, 3))
    mean, _, count = paired.paired(a, b, "chamfer_l1")  # the object without a surface drops out
    assert (mean, count) == (pytest.approx(-0.015), 2)
    with pytest.raises(ValueError, match="share none of the metrics"):
        paired.shared_metrics(a, {(0, 0): {"loss": 1.0}})


def test_best_of_n_ranks_each_objects_samples_and_measures_seed_effects():
    spec = importlib.util.spec_from_file_location("best_of_n", REPO / "benchmarks" / "best_of_n.py")
    best_of_n = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(best_of_n)

    def record(obj, seed, psnr, vh_iou):
        return {"object_index": obj, "seed": seed, "photo_psnr": psnr, "ssim": 0.5, "vh_iou": vh_iou,
                "consistency_photo_psnr": 15.0, "recon_psnr": 20.0}

    # object 0: the more consistent sample is the better one; object 1: the worse; object 2 lacks seed 1
    records = [record(0, 0, 16.0, 0.8), record(0, 1, 18.0, 0.9), record(1, 0, 17.0, 0.95), record(1, 1, 19.0, 0.85),
               record(2, 0, 30.0, 0.9)]
    table = best_of_n.by_object(records, [0, 1])
    assert sorted(table) == [0, 1]
    picked = best_of_n.selection(table, "vh_iou")
    assert picked["chosen"] == pytest.approx((18.0 + 17.0) / 2)
    assert picked["random"] == pytest.approx((17.0 + 18.0) / 2)
    assert picked["best"] == pytest.approx((18.0 + 19.0) / 2)
    assert (picked["gain"], picked["gain_se"]) == (pytest.approx(0.0), pytest.approx(1.0))
    # seed 1 is 2 dB above seed 0 on every object: a seed effect shared by all objects, with no spread
    assert best_of_n.seed_effect(table, 1) == pytest.approx((18.5, 2.0, 0.0))
    lines = best_of_n.report(records, [0, 1])
    assert lines[0].startswith("2 objects x seeds 0 1")
    assert "| 1 | 18.50 | 0.500 | +2.00 (0.00) |" in lines
