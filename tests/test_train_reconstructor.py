"""diffusers-mv3d train-reconstructor (§3.5): settings, the step, checkpoints, resume, outputs.

Every run is tiny: 4 procedurally rendered objects at 16 px (4 input + 2 supervision views an
object), a small pixel-space LatentSparseNeuS with 8 + 4 samples a ray, 16 rays a view, a few steps.
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers_mv3d.training.config import add_dataclass_arguments, config_from_args, config_to_dict
from diffusers_mv3d.training.train_reconstructor import (
    ReconstructorStep,
    ReconstructorTrainConfig,
    build_reconstructor,
    main,
    misaligned,
    over_background,
    reconstruction_losses,
)
from training_fixtures import REPO, render_objects, weights


@pytest.fixture(scope="module")
def objects_dir(tmp_path_factory) -> Path:
    return render_objects(tmp_path_factory.mktemp("reconstructor") / "objects")


def tiny_settings(objects_dir: Path, output_dir: Path, **overrides) -> dict:
    settings = dict(
        data_dir=str(objects_dir),
        output_dir=str(output_dir),
        resolution=16,
        num_input_views=4,
        num_supervision_views=2,
        batch_size=2,
        max_train_steps=3,
        lr_warmup_steps=1,
        rays_per_view=16,
        eikonal_weight=0.1,
        eikonal_points=32,
        neus_feature_channels=8,
        neus_encoder_channels=8,
        neus_hidden_dim=16,
        neus_num_sdf_layers=2,
        neus_num_color_layers=1,
        neus_num_frequencies=2,
        neus_num_coarse_samples=8,
        neus_num_importance_samples=4,
        checkpointing_steps=2,
        validation_steps=3,
        validation_mesh_resolution=16,
        log_every=1,
    )
    settings.update(overrides)
    return settings


@pytest.fixture(scope="module")
def straight_run(objects_dir):
    out = objects_dir.parent / "straight"
    return main(ReconstructorTrainConfig(**tiny_settings(objects_dir, out))), out


@pytest.mark.parametrize(
    "field, value, flag",
    [
        ("rays_per_view", 0, "--rays-per-view"),
        ("eikonal_weight", -1.0, "--eikonal-weight"),
        ("neus_init_radius", 1.5, "--neus-init-radius"),
        ("neus_num_coarse_samples", 1, "--neus-num-coarse-samples"),
        ("validation_mesh_resolution", 4, "--validation-mesh-resolution"),
        ("lr_scheduler", "step", "--lr-scheduler"),
        ("batch_size", 0, "--batch-size"),
        ("push_to_hub", True, "--hub-model-id"),
        ("tinted_background_share", 1.5, "--tinted-background-share"),
        ("misaligned_view_share", -0.1, "--misaligned-view-share"),
        ("misalignment_pixels", -1.0, "--misalignment-pixels"),
        ("generated_view_share", 1.5, "--generated-view-share"),
        ("generated_view_share", 0.5, "--generated-view-share"),  # without generated_views_dir
    ],
)
def test_bad_settings_name_the_flag(field, value, flag):
    with pytest.raises(ValueError, match=flag):
        ReconstructorTrainConfig(**{field: value})


def test_embedded_config_is_the_dataclass_default(capsys):
    from diffusers_mv3d.cli import main as cli_main

    config = str(REPO / "configs" / "reconstructor-tiny.yaml")
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, ReconstructorTrainConfig)
    assert config_from_args(ReconstructorTrainConfig, parser.parse_args(["--config", config])) == ReconstructorTrainConfig()
    assert cli_main(["train-reconstructor", "--config", config, "--dry-run", "--rays-per-view", "0"]) == 2
    assert "--rays-per-view" in capsys.readouterr().err


def test_cli_dry_run_in_a_subprocess():
    import yaml

    result = subprocess.run(
        [sys.executable, "-m", "diffusers_mv3d.cli", "train-reconstructor", "--config",
         str(REPO / "configs" / "reconstructor-tiny.yaml"), "--dry-run", "--eikonal-weight", "0.5"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert yaml.safe_load(result.stdout) == config_to_dict(ReconstructorTrainConfig(eikonal_weight=0.5))


def test_the_step_trains_colours_masks_and_the_eikonal_term(objects_dir):
    from diffusers_mv3d.data.dataset import MultiViewDataset, collate_multiview

    cfg = ReconstructorTrainConfig(**tiny_settings(objects_dir, objects_dir.parent / "unused"))
    neus = build_reconstructor(cfg)
    assert neus.config.in_channels == 3 and neus.config.background == 1.0 and neus.config.render_resolution is None
    dataset = MultiViewDataset(cfg.data_dir, cfg.num_input_views, cfg.num_supervision_views, resolution=cfg.resolution)
    batch = collate_multiview([dataset[0], dataset[1]])
    loss, parts = reconstruction_losses(ReconstructorStep(neus).train(), batch, cfg, torch.Generator().manual_seed(0),
                                        torch.device("cpu"))
    assert set(parts) == {"loss_reconstruction", "loss_mask", "loss_eikonal"} and all(np.isfinite(list(parts.values())))
    loss.backward()
    assert neus.encoder.conv_in.weight.grad.abs().sum() > 0 and neus.field.sdf_head.weight.grad.abs().sum() > 0
    # the same draws give the same loss (a step is a function of its generator)
    again, _ = reconstruction_losses(ReconstructorStep(neus).train(), batch, cfg, torch.Generator().manual_seed(0),
                                     torch.device("cpu"))
    assert again.item() == loss.item()



@pytest.fixture(scope="module")
def objects_with_meshes(tmp_path_factory) -> Path:
    return render_objects(tmp_path_factory.mktemp("reconstructor") / "meshed", num_objects=2, save_mesh=True)


def test_the_occupancy_term_reads_inside_as_negative_sdf(objects_dir, objects_with_meshes):
    """3D supervision: the BCE of sigmoid(-50 sdf) against the mesh's insideness, at the dataset's points."""
    from diffusers_mv3d.data.dataset import collate_multiview
    from diffusers_mv3d.training.runner import load_multiview_dataset
    from diffusers_mv3d.training.train_reconstructor import OCCUPANCY_SHARPNESS

    cfg = ReconstructorTrainConfig(**tiny_settings(objects_with_meshes, objects_dir.parent / "unused",
                                                   occupancy_weight=1.0, occupancy_points=32))
    dataset = load_multiview_dataset(cfg)
    batch = collate_multiview([dataset[0], dataset[1]])
    assert batch["occupancy"].shape == (2, 32)
    neus = build_reconstructor(cfg)  # its SDF starts as the sphere |x| - 0.5
    points = batch["occupancy_points"]
    sphere = (points.norm(dim=-1) < 0.5).float()

    def occupancy_loss(labels):
        _, parts = reconstruction_losses(ReconstructorStep(neus).train(), dict(batch, occupancy=labels), cfg,
                                         torch.Generator().manual_seed(0), torch.device("cpu"))
        return parts["loss_occupancy"]

    with torch.no_grad():
        context = neus.encode(batch["images"], 0, batch["cameras"])
        expected = torch.nn.functional.binary_cross_entropy_with_logits(
            -OCCUPANCY_SHARPNESS * neus.sdf(points, context), batch["occupancy"])
    assert occupancy_loss(batch["occupancy"]) == pytest.approx(expected.item(), rel=1e-5)
    assert occupancy_loss(sphere) < 0.5 * occupancy_loss(1 - sphere)  # inside the sphere is inside
    plain = ReconstructorTrainConfig(**tiny_settings(objects_dir, objects_dir.parent / "unused"))
    assert "occupancy" not in load_multiview_dataset(plain)[0]  # off by default: no meshes read


def test_three_steps_write_checkpoints_samples_and_a_loadable_reconstructor(straight_run, objects_dir):
    from diffusers_mv3d.models.latent_sparse_neus import LatentSparseNeuS

    summary, out = straight_run
    assert summary["step"] == 3 and np.isfinite(summary["loss"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all({"loss_reconstruction", "loss_mask", "loss_eikonal", "samples_per_s", "peak_rss_mb"} <= set(r) for r in steps)
    validation = [r for r in log if "val_novel_psnr" in r]
    assert validation and np.isfinite(validation[0]["val_novel_psnr"])
    assert (out / "samples" / "step-000003.png").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-000002", "checkpoint-000003"]
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]

    reconstructor = LatentSparseNeuS.from_pretrained(out / "model" / "reconstructor")
    assert (out / "model" / "reconstructor" / "diffusion_pytorch_model.safetensors").is_file()
    assert reconstructor.config.hidden_dim == 16 and reconstructor.config.in_channels == 3
    card = (out / "model" / "README.md").read_text()
    assert str(objects_dir) in card and "- Steps: 3" in card and "diffusers-mv3d train-reconstructor" in card


def test_stop_and_resume_equals_the_uninterrupted_run(straight_run, objects_dir):
    summary, straight = straight_run
    split = objects_dir.parent / "split"
    first = main(ReconstructorTrainConfig(**tiny_settings(objects_dir, split, stop_at_step=2, validation_steps=0)))
    assert first["step"] == 2
    second = main(ReconstructorTrainConfig(**tiny_settings(objects_dir, split, resume="latest", validation_steps=0)))
    assert second["step"] == 3 and second["loss"] == summary["loss"]
    for name in ("reconstructor/diffusion_pytorch_model.safetensors", "optimizer.safetensors"):
        a = weights(straight / "checkpoints" / "checkpoint-000003" / name)
        b = weights(split / "checkpoints" / "checkpoint-000003" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")
    with pytest.raises(ValueError, match="--neus-hidden-dim"):
        main(ReconstructorTrainConfig(**tiny_settings(objects_dir, split, resume="latest", neus_hidden_dim=32)))


def test_init_from_starts_a_fresh_run_from_a_model_folder_and_checks_its_settings(straight_run, objects_dir):
    summary, straight = straight_run
    settings = dict(init_from=str(straight / "model"), learning_rate=1e-12, max_train_steps=1, validation_steps=0,
                    seed=1)  # a new reconstructor would differ from seed 0's
    out = objects_dir.parent / "continued"
    assert main(ReconstructorTrainConfig(**tiny_settings(objects_dir, out, **settings)))["step"] == 1
    name = "reconstructor/diffusion_pytorch_model.safetensors"
    before, after = weights(straight / "model" / name), weights(out / "checkpoints" / "checkpoint-000001" / name)
    assert before.keys() == after.keys() and all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    calibrated = objects_dir.parent / "calibrated"  # a pipeline folder's reconstructor saves its mesh level
    shutil.copytree(straight / "model", calibrated)
    config = calibrated / "reconstructor" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "mesh_level": 0.02}))
    out = objects_dir.parent / "continued-calibrated"
    main(ReconstructorTrainConfig(**tiny_settings(objects_dir, out, **{**settings, "init_from": str(calibrated)})))
    assert json.loads((out / "model" / "reconstructor" / "config.json").read_text())["mesh_level"] == 0.02  # kept
    with pytest.raises(ValueError, match="--init-from .*init_radius"):  # a setting that shapes no weight, still checked
        main(ReconstructorTrainConfig(**tiny_settings(objects_dir, objects_dir.parent / "bad", neus_init_radius=0.3,
                                                      **settings)))
    with pytest.raises(ValueError, match="--init-from .*no reconstructor/"):
        main(ReconstructorTrainConfig(**tiny_settings(objects_dir, objects_dir.parent / "bad2",
                                                      **{**settings, "init_from": str(objects_dir)})))


def test_settings_of_the_old_spelling_load_from_config_files_and_checkpoints(tmp_path):
    """Issue 15 spelled the NeuS settings as train does (hidden_dim -> neus_hidden_dim): files and
    checkpoints written before still load, with a warning naming both names."""
    import json

    from diffusers_mv3d.training.checkpointing import STATE_FILE, check_architecture

    old = tmp_path / "old.yaml"
    old.write_text("hidden_dim: 32\ninit_radius: 0.4\nbatch_size: 2\n")
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, ReconstructorTrainConfig)
    with pytest.warns(FutureWarning, match="'hidden_dim' was renamed 'neus_hidden_dim'"):
        cfg = config_from_args(ReconstructorTrainConfig, parser.parse_args(["--config", str(old)]))
    assert (cfg.neus_hidden_dim, cfg.neus_init_radius, cfg.batch_size) == (32, 0.4, 2)

    checkpoint = tmp_path / "checkpoint-000002"
    checkpoint.mkdir()
    saved = {name.replace("neus_", ""): value for name, value in cfg.architecture().items()}  # the old names
    (checkpoint / STATE_FILE).write_text(json.dumps({"step": 2, "architecture": saved, "config": {}}))
    with pytest.warns(FutureWarning, match="renamed"):
        check_architecture(cfg, checkpoint)
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="--neus-hidden-dim 64 differs"):
        check_architecture(ReconstructorTrainConfig(neus_init_radius=0.4), checkpoint)


def test_a_resume_keeps_the_neus_aggregation_options_its_checkpoint_saved(tmp_path):
    """Occlusion-aware aggregation and view weights fix no weight shape, but a resumed run that switched
    them would train another model: the resume refuses. A checkpoint from before the options resumes."""
    import json

    from diffusers_mv3d.training.checkpointing import STATE_FILE, check_architecture
    from diffusers_mv3d.training.config import config_to_dict

    cfg = ReconstructorTrainConfig()
    checkpoint = tmp_path / "checkpoint-000002"
    checkpoint.mkdir()
    config = config_to_dict(cfg)
    state = {"step": 2, "architecture": cfg.architecture(), "config": config}
    (checkpoint / STATE_FILE).write_text(json.dumps(state))
    check_architecture(cfg, checkpoint)
    for name, value in (("neus_occlusion_aware", True), ("neus_occlusion_margin", 0.3),
                        ("neus_view_weight_timescale", 250.0)):
        with pytest.raises(ValueError, match=f"--{name.replace('_', '-')} .* differs from the checkpoint"):
            check_architecture(ReconstructorTrainConfig(**{name: value}), checkpoint)
    older = {key: value for key, value in config.items() if "occlusion" not in key and "timescale" not in key}
    (checkpoint / STATE_FILE).write_text(json.dumps(dict(state, config=older)))
    check_architecture(ReconstructorTrainConfig(neus_occlusion_aware=True), checkpoint)


def step_inputs(cfg: ReconstructorTrainConfig):
    """One training step on the first two objects: ``(batch, the views the step module was given, loss)``."""
    from diffusers_mv3d.data.dataset import MultiViewDataset, collate_multiview

    dataset = MultiViewDataset(cfg.data_dir, cfg.num_input_views, cfg.num_supervision_views, resolution=cfg.resolution,
                               generated_views_dir=cfg.generated_views_dir)
    batch = collate_multiview([dataset[0], dataset[1]])
    seen = []

    class Spy(ReconstructorStep):
        def forward(self, views, *args):
            seen.append(views)
            return super().forward(views, *args)

    neus = build_reconstructor(cfg)
    loss, _ = reconstruction_losses(Spy(neus).train(), batch, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    (views,) = seen
    return batch, views, loss


def test_tinted_backgrounds_change_only_the_input_backgrounds_of_the_chosen_objects(objects_dir):
    cfg = ReconstructorTrainConfig(**tiny_settings(objects_dir, objects_dir.parent / "unused", tinted_background_share=1.0))
    batch, views, _ = step_inputs(cfg)
    background, foreground = batch["masks"].expand_as(views) == 0, batch["masks"].expand_as(views) == 1
    assert background.any() and foreground.any()
    torch.testing.assert_close(views[foreground], batch["images"][foreground])  # the object is untouched
    per_view = views.masked_fill(~background, float("nan")).flatten(3).nanmean(-1)  # [B, V, 3] background colour
    assert (per_view.std(dim=1) > 0.05).all()  # a colour a view, not white
    assert not torch.allclose(views[background], torch.ones_like(views[background]))
    # objects not chosen keep their views; chosen ones get the colour wherever the alpha is 0
    colours = torch.zeros(2, views.shape[1], 3, 1, 1)
    kept = over_background(batch["images"], batch["masks"], colours, torch.tensor([False, True]))
    torch.testing.assert_close(kept[0], batch["images"][0])
    torch.testing.assert_close(kept[1][background[1]], torch.zeros_like(kept[1][background[1]]))


def test_misaligned_moves_and_scales_the_chosen_objects_views_by_the_pixels_asked():
    images = torch.ones(2, 2, 3, 16, 16)
    images[:, :, :, 6:10, 6:10] = -1.0  # a dark 4-pixel square in the middle of every view
    offsets = torch.tensor([[[2.0, 0.0], [0.0, -3.0]], [[5.0, 5.0], [5.0, 5.0]]])
    scales = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    moved = misaligned(images, offsets, scales, torch.tensor([True, False]))
    expected = torch.ones(2, 3, 16, 16)
    expected[0, :, 6:10, 8:12] = -1.0  # x + 2
    expected[1, :, 3:7, 6:10] = -1.0  # y - 3
    torch.testing.assert_close(moved[0], expected)
    torch.testing.assert_close(moved[1], images[1])  # not chosen: unchanged
    doubled = misaligned(images[:1, :1], torch.zeros(1, 1, 2), torch.tensor([[2.0]]), torch.tensor([True]))
    assert (doubled[0, 0, 0] < 0).sum() == 64  # the square's side doubles: 8 x 8 pixels
    assert (doubled[0, 0, 0, 4:12, 4:12] < 0).all()


def test_misaligned_views_are_the_inputs_and_the_targets_stay_put(objects_dir):
    cfg = ReconstructorTrainConfig(**tiny_settings(objects_dir, objects_dir.parent / "unused", misaligned_view_share=1.0,
                                                  misalignment_pixels=2.0))
    batch, views, loss = step_inputs(cfg)
    assert views.shape == batch["images"].shape and not torch.allclose(views, batch["images"])
    dark = lambda x: (x.mean(2) < 0.5).flatten(2).float()  # noqa: E731 the object's pixels
    assert (dark(views).sum(-1) > 0).all()  # each view still shows its object
    # off by whole pixels in every view, not more than the shift and scale allow (area within a factor)
    assert ((dark(views) - dark(batch["images"])).abs().sum(-1) > 0).all()
    ratio = dark(views).sum(-1) / dark(batch["images"]).sum(-1)
    assert ((ratio > 0.5) & (ratio < 2.0)).all()
    # the same step without misalignment sees the dataset's views and its loss differs
    plain_batch, plain_views, plain = step_inputs(ReconstructorTrainConfig(**tiny_settings(objects_dir, objects_dir.parent / "unused")))
    torch.testing.assert_close(plain_views, plain_batch["images"])
    assert not torch.isclose(loss, plain)


def write_generated_views(objects_dir: Path, out: Path, count: int) -> list:
    """Generated versions of the fixed input views of the first ``count`` objects, as
    scripts/generate_reconstructor_inputs.py writes them: view v of object i a flat grey 10 * (i + 1) + v."""
    from PIL import Image

    from diffusers_mv3d.data.format import open_object, view_name

    greys = []
    for i, path in enumerate(sorted(p for p in objects_dir.iterdir() if p.is_dir())[:count]):
        folder = open_object(str(path))
        (out / path.name).mkdir(parents=True)
        size = (folder.cameras.width, folder.cameras.height)
        for v in range(folder.num_input_views):
            Image.new("RGB", size, (10 * (i + 1) + v,) * 3).save(out / path.name / f"{view_name(v)}.png")
        greys.append([10 * (i + 1) + v for v in range(folder.num_input_views)])
    return greys


def test_generated_views_are_the_inputs_and_the_targets_stay_the_renders(objects_dir, tmp_path):
    from diffusers_mv3d.data.dataset import MultiViewDataset

    greys = write_generated_views(objects_dir, tmp_path / "generated", 2)
    cfg = ReconstructorTrainConfig(**tiny_settings(objects_dir, tmp_path / "unused", generated_views_dir=str(tmp_path / "generated"),
                                                  generated_view_share=1.0))
    assert len(MultiViewDataset(cfg.data_dir, generated_views_dir=cfg.generated_views_dir)) == 2  # only the objects it holds
    batch, views, loss = step_inputs(cfg)
    # the inputs are the generated views of the input views (evenly spaced: 4 of the 8 fixed ones) ...
    expected = torch.tensor([[greys[i][v] for v in (0, 2, 4, 6)] for i in range(2)]) / 255 * 2 - 1
    torch.testing.assert_close(views, expected[:, :, None, None, None].expand_as(views))
    # ... while the batch's renders, the targets, are the objects' own views
    assert (batch["images"] > 0.99).any() and not torch.allclose(batch["images"], views)
    plain_batch, plain_views, plain = step_inputs(ReconstructorTrainConfig(**tiny_settings(
        objects_dir, tmp_path / "unused", generated_views_dir=str(tmp_path / "generated"))))
    torch.testing.assert_close(plain_views, plain_batch["images"])  # share 0: the renders are the inputs
    assert not torch.isclose(loss, plain)


def test_a_generated_views_folder_without_the_objects_is_refused(objects_dir, tmp_path):
    from diffusers_mv3d.data.dataset import MultiViewDataset

    (tmp_path / "generated" / "another-object").mkdir(parents=True)
    with pytest.raises(ValueError, match="generated_views_dir holds no folder"):
        MultiViewDataset(str(objects_dir), generated_views_dir=str(tmp_path / "generated"))
