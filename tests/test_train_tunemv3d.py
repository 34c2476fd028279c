"""diffusers-mv3d train (TuneMV3D tuning): settings, the branch step, checkpoints, resume, DDP, outputs.

Every run is tiny: 4 procedurally rendered objects at 16 px (4 input + 2 supervision views an
object), a 2-level foundation UNet saved as train-foundation saves it (an IFPipeline folder), a NeuS
rendering 8x8 with 8 + 4 samples a ray, and a few steps.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers_mv3d.training.config import add_dataclass_arguments, config_from_args, config_to_dict
from diffusers_mv3d.foundation import load_foundation
from diffusers_mv3d.training.branch import TuneMV3DBranch
from diffusers_mv3d.training.train_tunemv3d import (
    TuneMV3DTrainConfig,
    build_branch,
    main,
    diffusion_mse,
    step_draws,
    training_losses,
)
from training_fixtures import REPO, render_objects, weights
CAPTIONS = ["a red chair", "a green bench with a slatted seat", "a blue table"]


# ------------------------------------------------------------------------------------------------
# Fixtures: rendered objects, tiny foundations (pixel space as train-foundation writes it; latent space)
# ------------------------------------------------------------------------------------------------


def make_pixel_foundation(folder: Path, resolution: int = 16) -> Path:
    """An IF-style foundation (6-channel UNet, CLIP text encoder, word tokenizer, DDPM) in train-foundation's layout."""
    from diffusers_mv3d.training.text import build_text_encoder, train_word_tokenizer
    from diffusers_mv3d.training.foundation_model import build_noise_scheduler, build_unet, save_pipeline
    from diffusers_mv3d.training.train_foundation import FoundationTrainConfig

    cfg = FoundationTrainConfig(resolution=resolution, block_out_channels=(16, 32), norm_num_groups=8,
                                text_hidden_size=16, text_layers=1, text_heads=2)
    torch.manual_seed(0)
    tokenizer = train_word_tokenizer(CAPTIONS)
    save_pipeline(folder, build_unet(cfg), build_text_encoder(tokenizer, 16, 1, 2), tokenizer, build_noise_scheduler(cfg))
    return folder


def make_latent_foundation(folder: Path) -> Path:
    """A Stable-Diffusion-style folder: VAE (factor 2, 4 latent channels), 4-channel UNet, v-prediction."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from diffusers_mv3d.training.text import build_text_encoder, train_word_tokenizer

    torch.manual_seed(0)
    tokenizer = train_word_tokenizer(CAPTIONS)
    build_text_encoder(tokenizer, 16, 1, 2).save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                  norm_num_groups=4, sample_size=16).save_pretrained(folder / "vae")
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                         attention_head_dim=1, norm_num_groups=8).save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=100, prediction_type="v_prediction").save_pretrained(folder / "scheduler")
    return folder


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tunemv3d")
    render_objects(root / "objects")
    make_pixel_foundation(root / "foundation")
    return root


def tiny_settings(workdir: Path, output_dir: Path, **overrides) -> dict:
    settings = dict(
        pretrained_model=str(workdir / "foundation"),
        data_dir=str(workdir / "objects"),
        output_dir=str(output_dir),
        resolution=16,
        num_input_views=4,
        num_supervision_views=2,
        batch_size=2,
        max_train_steps=3,
        lr_warmup_steps=1,
        supervision_rays=16,
        neus_dropout=0.5,
        neus_render_resolution=8,
        neus_num_coarse_samples=8,
        neus_num_importance_samples=4,
        neus_feature_channels=8,
        neus_encoder_channels=8,
        neus_hidden_dim=16,
        neus_num_sdf_layers=2,
        neus_num_color_layers=1,
        neus_num_frequencies=2,
        checkpointing_steps=2,
        validation_steps=3,
        validation_timesteps=(500,),
        validation_inference_steps=2,
        log_every=1,
    )
    settings.update(overrides)
    return settings


@pytest.fixture(scope="module")
def straight_run(workdir):
    """3 uninterrupted steps (checkpoints at 2 and 3, a validation grid at 3)."""
    out = workdir / "straight"
    return main(TuneMV3DTrainConfig(**tiny_settings(workdir, out))), out


# ------------------------------------------------------------------------------------------------
# Settings and the command line
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, flag",
    [
        ("neus_dropout", 1.0, "--neus-dropout"),
        ("caption_dropout", -0.1, "--caption-dropout"),
        ("num_input_views", 1, "--num-input-views"),
        ("supervision_rays", 0, "--supervision-rays"),
        ("lr_scheduler", "linear", "--lr-scheduler"),
        ("geometry_attention_neighbourhood", 2, "--geometry-attention-neighbourhood"),
        ("mask_loss_weight", -1.0, "--mask-loss-weight"),
        ("validation_timesteps", (), "--validation-timesteps"),
        ("neus_num_coarse_samples", 1, "--neus-num-coarse-samples"),
        ("push_to_hub", True, "--hub-model-id"),
        ("reference_view_share", 1.5, "--reference-view-share"),
        ("ema_decay", 1.5, "--ema-decay"),
        ("max_reference_views", 99, "--max-reference-views"),
        ("max_reference_views", 0, "--max-reference-views"),
        ("reference_caption_dropout", -0.5, "--reference-caption-dropout"),
    ],
)
def test_bad_settings_name_the_flag(field, value, flag):
    with pytest.raises(ValueError, match=flag):
        TuneMV3DTrainConfig(**{field: value})


def test_settings_that_depend_on_the_foundation_name_the_flag(workdir, tmp_path):
    cases = [
        ({"geometry_attention_levels": (2,)}, "--geometry-attention-levels"),  # the tiny UNet has 2 down blocks
        ({"resolution": 15}, "--resolution"),
        ({"validation_timesteps": (5000,)}, "--validation-timesteps"),
        ({"pretrained_model": str(workdir / "objects")}, "--pretrained-model"),
        ({"data_dir": str(tmp_path / "missing")}, "--data-dir"),
    ]
    for overrides, flag in cases:
        with pytest.raises(ValueError, match=flag):
            main(TuneMV3DTrainConfig(**tiny_settings(workdir, tmp_path / "bad", **overrides)))


def test_embedded_config_is_the_dataclass_default_and_dry_run_prints_it(capsys):
    from diffusers_mv3d.cli import main as cli_main

    config = str(REPO / "configs" / "tunemv3d-tiny.yaml")
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TuneMV3DTrainConfig)
    assert config_from_args(TuneMV3DTrainConfig, parser.parse_args(["--config", config])) == TuneMV3DTrainConfig()
    # the embedded sizes for 2 CPU cores (issue 5)
    cfg = TuneMV3DTrainConfig()
    assert (cfg.resolution, cfg.neus_render_resolution, cfg.neus_num_coarse_samples, cfg.neus_num_importance_samples,
            cfg.geometry_attention_levels) == (32, 16, 16, 8, (0,))
    assert 2 <= cfg.batch_size <= 4
    assert cli_main(["train", "--config", config, "--dry-run", "--neus-dropout", "2"]) == 2
    assert "--neus-dropout" in capsys.readouterr().err


def test_cli_dry_run_in_a_subprocess():
    import yaml

    result = subprocess.run(
        [sys.executable, "-m", "diffusers_mv3d.cli", "train", "--config", str(REPO / "configs" / "tunemv3d-tiny.yaml"),
         "--dry-run", "--max-train-steps", "7", "--geometry-attention-levels", "0", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = yaml.safe_load(result.stdout)
    assert printed == config_to_dict(TuneMV3DTrainConfig(max_train_steps=7, geometry_attention_levels=(0, 1)))
    assert "# Fraction of objects whose branch runs without the NeuS" in result.stdout


def test_model_card_command_reproduces_the_settings(tmp_path):
    import shlex

    from diffusers_mv3d.training.config import command_line

    cfg = TuneMV3DTrainConfig(max_train_steps=5, geometry_attention_levels=(0, 1), resume="latest",
                              push_to_hub=True, hub_model_id="me/branch", hub_private=False, neus_dropout=0.25)
    words = shlex.split(command_line("diffusers-mv3d train", cfg))
    assert words[:2] == ["diffusers-mv3d", "train"]
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TuneMV3DTrainConfig)
    assert config_from_args(TuneMV3DTrainConfig, parser.parse_args(words[2:])) == cfg


# ------------------------------------------------------------------------------------------------
# The branch step
# ------------------------------------------------------------------------------------------------


def test_neus_dropout_runs_each_object_with_or_without_the_neus_in_place():
    from diffusers_mv3d.cameras import default_cameras
    from dummies import TEXT_DIM, tiny_controlnet, tiny_neus, tiny_unet

    unet = tiny_unet(3)
    controlnet, neus = tiny_controlnet(unet), tiny_neus(3)
    for p in controlnet.parameters():  # make the zero-initialised parts non-trivial
        torch.nn.init.normal_(p, std=0.02)
    branch = TuneMV3DBranch(controlnet, neus).eval()
    torch.manual_seed(1)
    views, text = torch.randn(3, 4, 3, 16, 16), torch.randn(3, 5, TEXT_DIM)
    t = torch.tensor([100, 500, 900])
    cameras = default_cameras(4, resolution=16).expand(3)
    keep = torch.tensor([True, False, True])
    with torch.no_grad():
        mixed = branch(views, t, text, cameras, keep)
        kept = branch(views, t, text, cameras, torch.ones(3, dtype=torch.bool))
        alone = controlnet(views[1:2], t[1:2], text[1:2], return_dict=False)
    for m, k, a in zip(mixed["down"] + (mixed["mid"],), kept["down"] + (kept["mid"],), alone[0] + (alone[1],)):
        m, k = m.reshape(3, 4, *m.shape[1:]), k.reshape(3, 4, *k.shape[1:])
        torch.testing.assert_close(m[[0, 2]], k[[0, 2]], rtol=1e-5, atol=1e-6)  # with the NeuS, unchanged
        torch.testing.assert_close(m[1], a, rtol=1e-5, atol=1e-6)  # without it, as the branch alone
        assert not torch.allclose(m[1], k[1])
    r = neus.config.render_resolution or 16
    assert mixed["x0"].shape == (3, 4, 3, r, r) and mixed["opacity"].shape == (3, 4, r, r)


def test_latent_foundation_trains_in_latent_space_with_v_prediction(workdir, tmp_path):
    from diffusers_mv3d.models.latent_sparse_neus import LatentSparseNeuS

    folder = make_latent_foundation(tmp_path / "sd")
    foundation = load_foundation(str(folder))
    assert foundation.vae is not None and foundation.vae_scale_factor == 2 and foundation.prediction_type == "v_prediction"
    assert all(not p.requires_grad for p in foundation.vae.parameters())
    out = tmp_path / "run"
    summary = main(TuneMV3DTrainConfig(**tiny_settings(workdir, out, pretrained_model=str(folder), max_train_steps=2,
                                                       neus_render_resolution=0, validation_steps=2,
                                                       validation_timesteps=(50,))))
    assert summary["step"] == 2 and np.isfinite(summary["loss"]) and np.isfinite(summary["loss_reconstruction"])
    neus = LatentSparseNeuS.from_pretrained(out / "model" / "neus")
    assert neus.config.in_channels == 4 and neus.config.background == 0.0
    assert (out / "samples" / "step-000002.png").is_file()


def test_frozen_foundation_gets_no_gradient_and_the_branch_does(workdir):
    from diffusers_mv3d.data.dataset import MultiViewDataset, collate_multiview

    cfg = TuneMV3DTrainConfig(**tiny_settings(workdir, workdir / "unused", neus_dropout=0.0))
    foundation = load_foundation(cfg.pretrained_model)
    branch = TuneMV3DBranch(*build_branch(foundation, cfg)).train()
    dataset = MultiViewDataset(cfg.data_dir, cfg.num_input_views, cfg.num_supervision_views, resolution=cfg.resolution)
    batch = collate_multiview([dataset[0], dataset[1]])
    loss, parts = training_losses(branch, foundation, batch, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    loss.backward()
    assert set(parts) >= {"loss_diffusion", "loss_reconstruction", "loss_mask"}
    assert all(np.isfinite(v) for v in parts.values())
    assert all(p.grad is None for p in foundation.unet.parameters())
    assert all(p.grad is None for p in foundation.text_encoder.parameters())
    assert branch.controlnet.encoder.controlnet_mid_block.weight.grad.abs().sum() > 0  # zero conv learns
    assert branch.neus.encoder.conv_in.weight.grad.abs().sum() > 0
    assert torch.isfinite(branch.neus.variance.grad)


def test_reference_draws_come_last_and_give_one_to_max_clean_views_in_that_share_of_objects():
    def draws(**settings):
        cfg = TuneMV3DTrainConfig(num_input_views=4, **settings)
        return step_draws(torch.Generator().manual_seed(3), 400, 4, 3, (8, 8), 1000, 16, cfg)

    plain, with_references = draws(), draws(reference_view_share=0.3, max_reference_views=3)
    assert not plain["reference_views"].any()
    for key in plain:  # the draws of a run without references are unchanged
        if key != "reference_views":
            torch.testing.assert_close(plain[key], with_references[key])
    counts = with_references["reference_views"].sum(1)
    assert set(counts.tolist()) == {0, 1, 2, 3}
    assert 0.2 < (counts > 0).float().mean() < 0.4
    assert len(set(with_references["reference_views"].float().argmax(1).tolist())) == 4  # any view may be one


def test_reference_caption_dropout_drops_captions_of_objects_with_references_only():
    def draws(**settings):
        cfg = TuneMV3DTrainConfig(num_input_views=4, reference_view_share=0.3, caption_dropout=0.1, **settings)
        return step_draws(torch.Generator().manual_seed(3), 400, 4, 3, (8, 8), 1000, 16, cfg)

    plain, dropping = draws(), draws(reference_caption_dropout=1.0)
    for key in plain:  # every other draw is unchanged
        if key != "drop_caption":
            torch.testing.assert_close(plain[key], dropping[key])
    with_references = dropping["reference_views"].any(1)
    assert dropping["drop_caption"][with_references].all()
    torch.testing.assert_close(dropping["drop_caption"][~with_references], plain["drop_caption"][~with_references])
    assert plain["drop_caption"][with_references].float().mean() < 0.3  # only caption_dropout's share before


def test_diffusion_mse_leaves_out_reference_views():
    prediction, target = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 4, 3, 8, 8)
    none = torch.zeros(2, 4, dtype=torch.bool)
    assert diffusion_mse(prediction, target, none) == torch.nn.functional.mse_loss(prediction, target)
    references = none.clone()
    references[0, 1] = references[1, 3] = True
    moved = prediction.clone()
    moved[0, 1] += 5.0
    moved[1, 3] -= 5.0
    torch.testing.assert_close(diffusion_mse(moved, target, references), diffusion_mse(prediction, target, references))
    noisy = (prediction - target)[~references]
    torch.testing.assert_close(diffusion_mse(prediction, target, references), noisy.pow(2).mean())


def test_reference_views_reach_the_branch_and_the_unet_clean_at_t_zero(workdir):
    from diffusers_mv3d.data.dataset import MultiViewDataset, collate_multiview

    cfg = TuneMV3DTrainConfig(**tiny_settings(workdir, workdir / "unused", neus_dropout=0.0, reference_view_share=1.0,
                                              max_reference_views=2))
    foundation = load_foundation(cfg.pretrained_model)
    branch = TuneMV3DBranch(*build_branch(foundation, cfg)).train()
    seen = {}
    branch.register_forward_pre_hook(lambda module, args: seen.update(views=args[0], t=args[1]))
    unet_t = []
    foundation.unet.register_forward_pre_hook(lambda module, args: unet_t.append(args[1]))
    dataset = MultiViewDataset(cfg.data_dir, cfg.num_input_views, cfg.num_supervision_views, resolution=cfg.resolution)
    batch = collate_multiview([dataset[0], dataset[1]])
    training_losses(branch, foundation, batch, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    references = seen["t"] == 0
    assert 1 <= references.sum(1).min() and references.sum(1).max() <= 2
    clean = foundation.to_space(batch["images"], None)
    torch.testing.assert_close(seen["views"][references], clean[references])
    assert not torch.allclose(seen["views"][~references], clean[~references])
    torch.testing.assert_close(unet_t[0], seen["t"].flatten())


# ------------------------------------------------------------------------------------------------
# Training runs
# ------------------------------------------------------------------------------------------------


def test_three_steps_write_checkpoints_samples_and_a_loadable_model_folder(straight_run, workdir):
    from diffusers_mv3d.models.latent_sparse_neus import LatentSparseNeuS
    from diffusers_mv3d.models.multiview_controlnet import MultiViewControlNetModel

    summary, out = straight_run
    assert summary["step"] == 3 and np.isfinite(summary["loss"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for record in steps:  # the losses are logged separately
        assert {"loss_diffusion", "loss_reconstruction", "loss_mask", "lr", "samples_per_s", "peak_rss_mb"} <= set(record)
        assert all(np.isfinite(record[k]) for k in ("loss", "loss_diffusion", "loss_reconstruction", "loss_mask"))
    assert any("val_neus_mse_t500" in r for r in log)
    assert (out / "samples" / "step-000003.png").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-000002", "checkpoint-000003"]
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    assert not [p for p in out.rglob(".tmp-*")]

    model = out / "model"
    controlnet = MultiViewControlNetModel.from_pretrained(model / "controlnet")
    neus = LatentSparseNeuS.from_pretrained(model / "neus")
    assert (model / "controlnet" / "diffusion_pytorch_model.safetensors").is_file()
    assert tuple(controlnet.config.geometry_attention_levels) == (0,) and neus.config.render_resolution == 8
    assert neus.config.in_channels == 3 and neus.config.background == 1.0
    final = weights(out / "checkpoints" / "checkpoint-000003" / "neus" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(final[k], v) for k, v in neus.state_dict().items())
    card = (model / "README.md").read_text()
    assert str(workdir / "foundation") in card and str(workdir / "objects") in card
    assert "- Steps: 3" in card and "loss_diffusion" in card
    assert "diffusers-mv3d train --" in card and f"--pretrained-model {workdir / 'foundation'}" in card


def test_stop_and_resume_equals_the_uninterrupted_run(straight_run, workdir):
    summary, straight = straight_run
    split = workdir / "split"
    first = main(TuneMV3DTrainConfig(**tiny_settings(workdir, split, stop_at_step=2, validation_steps=0)))
    assert first["step"] == 2
    second = main(TuneMV3DTrainConfig(**tiny_settings(workdir, split, resume="latest", validation_steps=0)))
    assert second["step"] == 3 and second["loss"] == summary["loss"]
    assert second["weights_sha256"] == summary["weights_sha256"]
    for name in ("controlnet/diffusion_pytorch_model.safetensors", "neus/diffusion_pytorch_model.safetensors",
                 "optimizer.safetensors"):
        a = weights(straight / "checkpoints" / "checkpoint-000003" / name)
        b = weights(split / "checkpoints" / "checkpoint-000003" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")
    with pytest.raises(ValueError, match="--neus-hidden-dim"):
        main(TuneMV3DTrainConfig(**tiny_settings(workdir, split, resume="latest", neus_hidden_dim=32)))


def test_ema_run_saves_averaged_weights_and_resumes_exactly(workdir):
    settings = dict(ema_decay=0.9, validation_steps=0, max_train_steps=3)
    straight, split = workdir / "ema-straight", workdir / "ema-split"
    main(TuneMV3DTrainConfig(**tiny_settings(workdir, straight, **settings)))
    checkpoint = straight / "checkpoints" / "checkpoint-000003"
    average = weights(checkpoint / "ema.safetensors")  # keyed "controlnet.<name>", "neus.<name>"
    raw = weights(checkpoint / "neus" / "diffusion_pytorch_model.safetensors")
    saved = weights(straight / "model" / "neus" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(saved[name], average[f"neus.{name}"]) for name in saved)
    assert any(not torch.equal(saved[name], raw[name]) for name in saved)  # the average lags the weights

    main(TuneMV3DTrainConfig(**tiny_settings(workdir, split, stop_at_step=2, **settings)))
    main(TuneMV3DTrainConfig(**tiny_settings(workdir, split, resume="latest", **settings)))
    resumed = weights(split / "checkpoints" / "checkpoint-000003" / "ema.safetensors")
    for key in average:
        torch.testing.assert_close(resumed[key], average[key], rtol=0, atol=1e-6, msg=key)
    with pytest.raises(ValueError, match="--ema-decay"):  # a run without an EMA cannot resume with one
        plain = workdir / "ema-plain"
        main(TuneMV3DTrainConfig(**tiny_settings(workdir, plain, stop_at_step=2, validation_steps=0)))
        main(TuneMV3DTrainConfig(**tiny_settings(workdir, plain, resume="latest", **settings)))


def test_init_from_starts_a_fresh_run_from_a_model_folder_and_checks_its_settings(straight_run, workdir):
    summary, straight = straight_run
    settings = dict(init_from=str(straight / "model"), learning_rate=1e-12, neus_learning_rate=1e-12,
                    max_train_steps=1, validation_steps=0, seed=1)  # a new branch would differ from seed 0's
    out = workdir / "continued"
    assert main(TuneMV3DTrainConfig(**tiny_settings(workdir, out, **settings)))["step"] == 1
    for name in ("controlnet", "neus"):  # the weights are the folder's (a learning rate of 1e-12 keeps them)
        before = weights(straight / "model" / name / "diffusion_pytorch_model.safetensors")
        after = weights(out / "checkpoints" / "checkpoint-000001" / name / "diffusion_pytorch_model.safetensors")
        assert before.keys() == after.keys()
        assert all(torch.allclose(before[key], after[key], atol=1e-6) for key in before)

    # the occlusion test is switched on by such a run: same weights, the saved config takes the settings'
    switched = workdir / "occlusion"
    main(TuneMV3DTrainConfig(**tiny_settings(workdir, switched, neus_occlusion_aware=True, **settings)))
    neus_config = json.loads((switched / "model" / "neus" / "config.json").read_text())
    assert neus_config["occlusion_aware"] is True and neus_config["occlusion_margin"] == 0.1
    before = weights(straight / "model" / "neus" / "diffusion_pytorch_model.safetensors")
    after = weights(switched / "model" / "neus" / "diffusion_pytorch_model.safetensors")
    assert all(torch.allclose(before[key], after[key], atol=1e-6) for key in before)

    with pytest.raises(ValueError, match="--init-from .*geometry_attention_neighbourhood"):  # no shape, still checked
        main(TuneMV3DTrainConfig(**tiny_settings(workdir, workdir / "bad", geometry_attention_neighbourhood=5, **settings)))
    with pytest.raises(ValueError, match="--init-from .*no controlnet/"):
        main(TuneMV3DTrainConfig(**tiny_settings(workdir, workdir / "bad2", **{**settings, "init_from": str(workdir)})))


def _free_port() -> int:
    """A free port below the ephemeral range (32768+), where a client of the rendezvous store could
    otherwise be given the store's own port and connect to itself."""
    import random

    for port in random.Random(os.getpid()).sample(range(20000, 32000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def _run_process_group(command, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a session of its own; on timeout the whole group is killed (a launcher's
    ranks too, which ``subprocess.run`` would leave running) and the test fails with their output."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, **kwargs)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{command[2]} ran past {timeout} s; stderr:\n{stderr[-3000:]}\nstdout:\n{stdout[-1000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_two_processes_train_in_sync(workdir, tmp_path):
    """accelerate launch --multi_gpu on CPUs: gloo DDP, each rank its share of the batch, equal weights."""
    out = tmp_path / "ddp"
    config = tmp_path / "ddp.json"
    config.write_text(json.dumps(tiny_settings(workdir, out, max_train_steps=2, validation_steps=0, neus_dropout=0.5)))
    result = _run_process_group(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--main_process_port", str(_free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
         "-m", "diffusers_mv3d.cli", "train", "--config", str(config)],
        timeout=300, cwd=str(tmp_path), env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 2, result.stdout[-3000:]
    summaries = {s["rank"]: s for s in map(json.loads, lines)}
    assert sorted(summaries) == [0, 1]  # two ranks, not two lone rank-0 processes
    assert summaries[0]["step"] == summaries[1]["step"] == 2
    assert summaries[0]["process_loss"] != summaries[1]["process_loss"]  # each rank trained on its own objects ...
    assert summaries[0]["loss"] == summaries[1]["loss"]  # (the logged loss is their mean)
    assert summaries[0]["weights_sha256"] == summaries[1]["weights_sha256"]  # ... and the weights agree
    assert (out / "model" / "controlnet" / "diffusion_pytorch_model.safetensors").is_file()
