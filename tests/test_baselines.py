"""The baselines (``diffusers-mv3d train-baseline``, DESIGN.md §6): MVDream's self-attention over views
and camera embedding, the trainer (finetune and mvdream), their model folders, sampling, and the
``finetune`` / ``mvdream`` variants of the evaluation.

Every run is tiny: 4 rendered objects at 16 px (4 views an object), the 2-level IF-style foundation
of ``test_train_tunemv3d.py``, 3 steps.
"""

import argparse
import json

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from diffusers_mv3d.cameras import default_cameras
from diffusers_mv3d.models.multiview_self_attention import (
    MultiViewSelfAttnProcessor,
    camera_conditioned_unet,
    camera_embedding,
    set_multiview_self_attention,
)
from diffusers_mv3d.training.config import add_dataclass_arguments, config_from_args
from diffusers_mv3d.foundation import load_baseline
from diffusers_mv3d.sampling import sample_views
from diffusers_mv3d.training.train_baseline import BaselineTrainConfig, main
from dummies import TEXT_DIM, tiny_pipeline, tiny_unet
from test_train_tunemv3d import make_pixel_foundation
from training_fixtures import REPO, render_objects

VIEWS = 4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    render_objects(root / "objects")
    make_pixel_foundation(root / "foundation")
    return root


def tiny_settings(workdir, kind: str, output_dir, **overrides) -> dict:
    settings = dict(kind=kind, pretrained_model=str(workdir / "foundation"), data_dir=str(workdir / "objects"),
                    output_dir=str(output_dir), resolution=16, num_input_views=VIEWS, batch_size=2, max_train_steps=3,
                    lr_warmup_steps=1, checkpointing_steps=2, validation_steps=3, validation_timesteps=(500,),
                    validation_inference_steps=2, log_every=1)
    settings.update(overrides)
    return settings


@pytest.fixture(scope="module")
def straight_runs(workdir):
    """3 uninterrupted steps of each kind: {kind: (summary, output_dir)}."""
    return {kind: (main(BaselineTrainConfig(**tiny_settings(workdir, kind, workdir / kind))), workdir / kind)
            for kind in ("finetune", "mvdream")}


def unet_inputs(batch: int):
    torch.manual_seed(1)
    return torch.randn(batch, 3, 16, 16), torch.randint(0, 1000, (batch,)), torch.randn(batch, 5, TEXT_DIM)


# ------------------------------------------------------------------------------------------------
# Self-attention over views, camera embedding
# ------------------------------------------------------------------------------------------------


def test_one_view_is_exactly_the_default_attention():
    unet = tiny_unet()
    x, t, text = unet_inputs(3)
    with torch.no_grad():
        expected = unet(x, t, text).sample
        set_multiview_self_attention(unet, 1)
        got = unet(x, t, text).sample
    assert torch.equal(got, expected)
    processors = unet.attn_processors
    assert all(isinstance(p, MultiViewSelfAttnProcessor) for n, p in processors.items() if ".attn1." in n)
    assert all(type(p) is AttnProcessor2_0 for n, p in processors.items() if ".attn2." in n)  # text: unchanged


def test_views_of_one_object_see_each_other_only_with_the_multiview_processor():
    """2 objects x 3 views folded: changing view 2 of object 0 changes its view 0 with the joint
    self-attention (not with the default one), and never object 1."""
    unet = tiny_unet()
    x, t, text = unet_inputs(6)
    changed = x.clone()
    changed[2] += 1.0
    with torch.no_grad():
        default = unet(x, t, text).sample, unet(changed, t, text).sample
        set_multiview_self_attention(unet, 3)
        joint = unet(x, t, text).sample, unet(changed, t, text).sample
    torch.testing.assert_close(default[1][:2], default[0][:2], rtol=0, atol=1e-6)
    assert (joint[1][0] - joint[0][0]).abs().max() > 1e-3
    torch.testing.assert_close(joint[1][3:], joint[0][3:], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="num_views=3"):
        unet(x[:4], t[:4], text[:4])


def test_camera_conditioned_unet_is_the_foundation_at_initialisation():
    unet = tiny_unet()
    torch.manual_seed(0)
    cameras = camera_conditioned_unet(unet)
    assert cameras.config.class_embed_type == "projection"
    assert cameras.config.projection_class_embeddings_input_dim == 16
    assert not cameras.class_embedding.linear_2.weight.any() and not cameras.class_embedding.linear_2.bias.any()
    x, t, text = unet_inputs(VIEWS)
    labels = camera_embedding(default_cameras(VIEWS, 16))  # V 16
    assert labels.shape == (VIEWS, 16) and torch.equal(labels[0].view(4, 4), default_cameras(1, 16).cam2world[0])
    with torch.no_grad():
        expected = unet(x, t, text).sample
        assert torch.equal(cameras(x, t, text, class_labels=labels).sample, expected)
        torch.nn.init.normal_(cameras.class_embedding.linear_2.weight, std=0.1)  # trained: the camera matters
        assert not torch.allclose(cameras(x, t, text, class_labels=labels).sample, expected, atol=1e-4)
    with pytest.raises(ValueError, match="class embedding"):
        camera_conditioned_unet(cameras)


# ------------------------------------------------------------------------------------------------
# Settings and the command line
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, flag", [
    ({"kind": "controlnet"}, "--kind"),
    ({"kind": "mvdream", "num_input_views": 1}, "--num-input-views"),
    ({"caption_dropout": 1.0}, "--caption-dropout"),
    ({"validation_timesteps": ()}, "--validation-timesteps"),
])
def test_bad_settings_name_the_flag(overrides, flag):
    with pytest.raises(ValueError, match=flag):
        BaselineTrainConfig(**overrides)


def test_embedded_configs_and_a_bad_kind_on_the_command_line(capsys):
    from diffusers_mv3d.cli import main as cli_main

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, BaselineTrainConfig)
    for kind in ("finetune", "mvdream"):
        config = str(REPO / "configs" / f"baseline-{kind}-tiny.yaml")
        cfg = config_from_args(BaselineTrainConfig, parser.parse_args(["--config", config]))
        assert cfg == BaselineTrainConfig(kind=kind, output_dir=f"runs/baseline-{kind}-tiny")
        assert (cfg.resolution, cfg.batch_size, cfg.learning_rate, cfg.lr_scheduler, cfg.caption_dropout) == \
            (32, 2, 1e-4, "constant", 0.1)
        assert (cfg.pretrained_model, cfg.data_dir) == ("runs/foundation-tiny/pipeline", "data/objects3d")
    assert cli_main(["train-baseline", "--kind", "mvdreams", "--dry-run"]) == 2
    assert "--kind must be finetune or mvdream" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Training, model folders, sampling
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["finetune", "mvdream"])
def test_three_steps_write_a_model_folder_that_loads_and_samples_views(straight_runs, workdir, kind):
    summary, out = straight_runs[kind]
    assert summary["step"] == 3 and np.isfinite(summary["loss"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3] and any("val_x0_mse_t500" in r for r in log)
    assert (out / "samples" / "step-000003.png").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-000002", "checkpoint-000003"]
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]

    model = out / "model"
    assert json.loads((model / "baseline.json").read_text())["kind"] == kind
    assert (model / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert all((model / name).exists() for name in ("text_encoder", "tokenizer", "scheduler", "model_index.json"))
    card = (model / "README.md").read_text()
    assert f"# TuneMV3D baseline: {kind}" in card and "diffusers-mv3d train-baseline " in card
    assert ("--kind mvdream" in card) == (kind == "mvdream")  # the command that reproduces the run
    parts = load_baseline(str(model), kind=kind)
    mvdream = kind == "mvdream"
    assert (parts.unet.config.class_embed_type == "projection") == mvdream
    assert any(isinstance(p, MultiViewSelfAttnProcessor) for p in parts.unet.attn_processors.values()) == mvdream
    views = sample_views(parts, "a red chair", num_views=3, num_inference_steps=2, generator=torch.manual_seed(0))
    assert views.shape == (3, 3, 16, 16) and 0 <= views.min() and views.max() <= 1
    again = sample_views(parts, "a red chair", num_views=3, num_inference_steps=2, generator=torch.manual_seed(0))
    assert torch.equal(views, again)


def test_a_foundation_samples_as_the_foundation_trainer_does(workdir):
    """``sample_views`` on the untrained foundation is ``sampling.sample_ddim`` on its views
    (same DDIM schedule, guidance and noise: the evaluation's seeds mean the same start)."""
    from diffusers_mv3d.foundation import load_foundation
    from diffusers_mv3d.sampling import sample_ddim

    parts = load_foundation(str(workdir / "foundation"))
    got = sample_views(parts, "a red chair", num_views=3, num_inference_steps=3, generator=torch.manual_seed(0))
    expected = sample_ddim(parts.unet, parts.text_encoder, parts.tokenizer, ["a red chair"] * 3,
                           parts.noise_scheduler.config, 3, 3.0, torch.manual_seed(0))
    torch.testing.assert_close(got, (expected + 1) / 2, rtol=0, atol=1e-5)


def test_stop_and_resume_equals_the_uninterrupted_run(straight_runs, workdir):
    summary, _ = straight_runs["mvdream"]
    split = workdir / "split"
    first = main(BaselineTrainConfig(**tiny_settings(workdir, "mvdream", split, stop_at_step=2, validation_steps=0)))
    assert first["step"] == 2
    second = main(BaselineTrainConfig(**tiny_settings(workdir, "mvdream", split, resume="latest", validation_steps=0)))
    assert second["step"] == 3 and second["loss"] == summary["loss"]
    assert second["weights_sha256"] == summary["weights_sha256"]
    with pytest.raises(ValueError, match="--kind"):
        main(BaselineTrainConfig(**tiny_settings(workdir, "finetune", split, resume="latest")))


def test_loading_the_wrong_folder_names_the_flag(straight_runs, workdir):
    with pytest.raises(ValueError, match="--finetune-model .* not a train-baseline model folder"):
        load_baseline(str(workdir / "foundation"), flag="--finetune-model")
    with pytest.raises(ValueError, match="--mvdream-model .* holds a finetune baseline"):
        load_baseline(str(straight_runs["finetune"][1] / "model"), kind="mvdream", flag="--mvdream-model")


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


def test_evaluate_scores_the_baselines(straight_runs, workdir):
    from diffusers_mv3d.evaluation.evaluate import EvaluationConfig, evaluate

    prompts = workdir / "prompts.json"
    prompts.write_text(json.dumps([{"text": "a red chair", "category": "chair", "colour": "red"}]))
    with pytest.raises(ValueError, match="--mvdream-model"):
        EvaluationConfig(model="m", variants=("tunemv3d", "mvdream"))
    cfg = EvaluationConfig(model="in-memory", prompts=str(prompts), views=VIEWS, steps=2, seeds=(0,),
                           variants=("finetune", "mvdream"), finetune_model=str(straight_runs["finetune"][1] / "model"),
                           mvdream_model=str(straight_runs["mvdream"][1] / "model"), hull_resolution=16,
                           recon_steps=10, recon_resolution=8, fidelity=False, device="cpu")
    results = evaluate(cfg, pipe=tiny_pipeline())
    assert list(results["variants"]) == ["finetune", "mvdream"] and results["settings"]["mvdream"] == "-"
    for variant in ("finetune", "mvdream"):
        summary = results["variants"][variant]["all"]
        assert summary["objects"] == 1 and np.isfinite(summary["recon_psnr"]) and summary["seconds"] > 0
