"""train-foundation: settings, loss, checkpoints, resume, and the pipeline folder it writes.

Every run is tiny (16x16 images, a 2-level UNet, a few steps) on a folder of coloured shapes that
the tests draw themselves, so they do not depend on the renderer.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from diffusers_mv3d.training.config import add_dataclass_arguments, config_from_args, field_docs
from diffusers_mv3d.training.diffusion_loss import (
    DiffusionTerms,
    diffusion_loss,
    min_snr_weights,
    model_log_variance,
    predicted_x0_and_eps,
    training_target,
    vlb_bits_per_dim,
)
from diffusers_mv3d.training.checkpointing import latest_checkpoint, save_training_checkpoint
from diffusers_mv3d.training.common import global_batch_indices
from diffusers_mv3d.training.ema import WeightAverage
from diffusers_mv3d.training.foundation_model import FoundationModel, build_noise_scheduler, foundation_checkpoint_extras
from diffusers_mv3d.training.train_foundation import FoundationTrainConfig, build_unet, main
from diffusers_mv3d.training.text import MAX_LENGTH, build_text_encoder, encode_prompts, train_word_tokenizer

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"red": (220, 20, 20), "blue": (25, 70, 230), "green": (40, 160, 45)}


def make_image_text_folder(root: Path, size: int = 16) -> Path:
    """6 images in the foundation2d layout: root/metadata.jsonl + root/images/*.png."""
    (root / "images").mkdir(parents=True)
    lines = []
    for i, (colour, shape) in enumerate([(c, s) for s in ("box", "ball") for c in COLOURS]):
        image = Image.new("RGB", (size, size), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        box = (3, 3, size - 4, size - 4)
        (draw.rectangle if shape == "box" else draw.ellipse)(box, fill=COLOURS[colour])
        name = f"images/{i:06d}.png"
        image.save(root / name)
        lines.append({"file_name": name, "text": f"a {colour} {shape}", "category": shape, "colour": colour})
    (root / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def tiny_settings(data_dir: Path, output_dir: Path) -> dict:
    return dict(
        data_dir=str(data_dir),
        output_dir=str(output_dir),
        resolution=16,
        batch_size=4,
        max_train_steps=3,
        lr_warmup_steps=1,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        text_hidden_size=16,
        text_layers=1,
        text_heads=2,
        checkpointing_steps=2,
        validation_steps=3,
        validation_inference_steps=2,
        validation_images_per_prompt=1,
        validation_prompts=("a red box", "a blue ball"),
        log_every=1,
        num_threads=1,  # robust on a busy machine (oversubscribed OpenMP threads stall each other)
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_image_text_folder(tmp_path_factory.mktemp("foundation2d"))


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


# ------------------------------------------------------------------------------------------------
# Settings and flags
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Toy:
    rate: float = 0.5
    """A rate."""
    sizes: Tuple[int, ...] = (1, 2)
    """Some sizes."""
    name: Optional[str] = None
    """A name."""
    fast: bool = False
    """Go fast."""


def _parse(cls, argv):
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, cls)
    return parser.parse_args(argv)


def test_flags_from_dataclass_defaults_file_and_overrides(tmp_path):
    assert field_docs(_Toy)["sizes"] == "Some sizes."
    assert config_from_args(_Toy, _parse(_Toy, [])) == _Toy()
    file = tmp_path / "toy.yaml"
    file.write_text("rate: 2\nsizes: [4, 5, 6]\nname: hello\nfast: true\n")
    from_file = config_from_args(_Toy, _parse(_Toy, ["--config", str(file)]))
    assert from_file == _Toy(rate=2.0, sizes=(4, 5, 6), name="hello", fast=True)
    assert isinstance(from_file.rate, float)
    overridden = config_from_args(_Toy, _parse(_Toy, ["--config", str(file), "--sizes", "7", "--no-fast", "--name", "none"]))
    assert overridden == _Toy(rate=2.0, sizes=(7,), name=None, fast=False)
    json_file = tmp_path / "toy.json"
    json_file.write_text(json.dumps({"rate": 1, "bogus": 3}))
    with pytest.raises(ValueError, match="--bogus"):
        config_from_args(_Toy, _parse(_Toy, ["--config", str(json_file)]))
    json_file.write_text(json.dumps({"rate": "fast"}))
    with pytest.raises(ValueError, match="--rate"):
        config_from_args(_Toy, _parse(_Toy, ["--config", str(json_file)]))


@pytest.mark.parametrize(
    "field, value, flag",
    [
        ("learning_rate", 0.0, "--learning-rate"),
        ("caption_dropout", 1.0, "--caption-dropout"),
        ("batch_size", 0, "--batch-size"),
        ("norm_num_groups", 12, "--norm-num-groups"),
        ("resolution", 30, "--resolution"),
        ("mixed_precision", "fp8", "--mixed-precision"),
        ("text_heads", 3, "--text-heads"),
        ("attention_from_level", 4, "--attention-from-level"),
        ("zero_terminal_snr", True, "--zero-terminal-snr"),  # with epsilon prediction
        ("prediction_type", "sample", "--prediction-type"),
        ("snr_gamma", -1.0, "--snr-gamma"),
        ("noise_offset", -0.1, "--noise-offset"),
    ],
)
def test_bad_settings_name_the_flag(field, value, flag):
    with pytest.raises(ValueError, match=flag):
        FoundationTrainConfig(**{field: value})


def test_embedded_config_file_is_the_dataclass_default_and_dry_run_prints_it(capsys):
    from diffusers_mv3d.cli import main as cli_main

    config = str(REPO / "configs" / "foundation-tiny.yaml")
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, FoundationTrainConfig)
    assert config_from_args(FoundationTrainConfig, parser.parse_args(["--config", config])) == FoundationTrainConfig()
    assert cli_main(["train-foundation", "--config", config, "--dry-run", "--max-train-steps", "7"]) == 0
    printed = capsys.readouterr().out
    assert "max_train_steps: 7\n" in printed and "checkpointing_steps: 250\n" in printed
    import yaml

    assert yaml.safe_load(printed)["block_out_channels"] == [32, 64, 128]
    assert cli_main(["train-foundation", "--config", config, "--dry-run", "--ema-decay", "2"]) == 2
    assert "--ema-decay" in capsys.readouterr().err


def test_a_config_file_that_sets_a_setting_twice_is_an_error(tmp_path):
    from diffusers_mv3d.training.config import load_config_file

    for name, text in (("a.yaml", "seed: 1\nlearning_rate: 0.1\nseed: 2\n"), ("b.yaml", "learning-rate: 0.1\nlearning_rate: 0.2\n"),
                       ("c.json", '{"seed": 1, "seed": 2}')):
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=r"--config: .* sets (seed|learning_rate) more than once"):
            load_config_file(str(tmp_path / name))
    (tmp_path / "d.yaml").write_text("seed: 1\nvalidation_timesteps: [1, 2]\n")
    assert load_config_file(str(tmp_path / "d.yaml")) == {"seed": 1, "validation_timesteps": [1, 2]}
    for config in sorted((REPO / "configs").glob("*.yaml")):  # the embedded configs set each setting once
        load_config_file(str(config))


# ------------------------------------------------------------------------------------------------
# Text side and loss
# ------------------------------------------------------------------------------------------------


def test_tokenizer_round_trip_and_text_encoder(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = train_word_tokenizer(["a red box", "a blue ball."])
    ids = tokenizer("A Red ball", padding="max_length", max_length=MAX_LENGTH).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[4] == tokenizer.eos_token_id and ids[5] == tokenizer.pad_token_id
    assert tokenizer.unk_token_id not in ids[1:4] and tokenizer.convert_ids_to_tokens(ids[1:4]) == ["a", "red", "ball"]
    tokenizer.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert reloaded("A Red ball", padding="max_length", max_length=MAX_LENGTH).input_ids == ids
    torch.manual_seed(0)
    encoder = build_text_encoder(tokenizer, hidden_size=16, num_layers=1, num_heads=2)
    embeddings = encode_prompts(tokenizer, encoder, ["a red box", ""])
    assert embeddings.shape == (2, MAX_LENGTH, 16) and torch.isfinite(embeddings).all()


def test_learned_variance_matches_the_ddpm_scheduler_and_the_bound_vanishes_for_a_perfect_model():
    cfg = FoundationTrainConfig()
    scheduler = build_noise_scheduler(cfg)
    terms = DiffusionTerms(scheduler.alphas_cumprod)
    v = torch.linspace(-1, 1, 4).view(4, 1, 1, 1)
    for t in (1, 10, 500, 999):
        ours = model_log_variance(terms, v, torch.full((4,), t)).view(-1)
        theirs = torch.stack([scheduler._get_variance(t, predicted_variance=x) for x in v.view(-1)])
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-5, atol=1e-5)

    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=generator) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=generator)
    t = torch.tensor([3, 50, 400, 900])
    x_t = scheduler.add_noise(x0, noise, t)
    # x0 exact and v = -1 (the posterior variance): every KL term is 0
    kl = vlb_bits_per_dim(terms, x0, -torch.ones_like(x0), x0, x_t, t)
    assert kl.abs().max() < 1e-3
    worse = vlb_bits_per_dim(terms, x0, torch.ones_like(x0), x0, x_t, t)
    assert (worse > kl).all()
    nll = vlb_bits_per_dim(terms, x0, torch.zeros_like(x0), x0, scheduler.add_noise(x0, noise, t * 0), t * 0)
    assert torch.isfinite(nll).all() and (nll > 0).all()
    loss, parts = diffusion_loss(torch.cat([noise, -torch.ones_like(x0)], 1), noise, x0, x_t, t, terms, 0.001)
    assert parts["mse"] == 0.0 and abs(loss.item()) < 1e-2


def test_v_prediction_target_recovers_x0_and_noise_at_every_timestep_with_zero_terminal_snr():
    cfg = FoundationTrainConfig(prediction_type="v_prediction", zero_terminal_snr=True)
    scheduler = build_noise_scheduler(cfg)
    assert scheduler.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-12)  # pure noise at t = T - 1
    assert scheduler.config.timestep_spacing == "trailing"
    terms = DiffusionTerms(scheduler.alphas_cumprod)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=generator) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=generator)
    t = torch.tensor([0, 10, 500, 999])
    x_t = scheduler.add_noise(x0, noise, t)
    target = training_target(terms, x0, noise, t, "v_prediction")
    torch.testing.assert_close(target, scheduler.get_velocity(x0, noise, t), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(target[3], -x0[3])  # at zero SNR v is -x0: the model learns the image mean
    x0_back, noise_back = predicted_x0_and_eps(terms, target, x_t, t, "v_prediction")
    torch.testing.assert_close(x0_back.float(), x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(noise_back.float(), noise, rtol=1e-5, atol=1e-5)
    # the hybrid loss of a perfect v model: zero MSE and finite everywhere, the last timestep included
    loss, parts = diffusion_loss(torch.cat([target, -torch.ones_like(x0)], 1), noise, x0, x_t, t, terms, 0.001,
                                 "v_prediction", snr_gamma=5.0)
    assert parts["mse"] < 1e-10 and torch.isfinite(loss)


def test_min_snr_weights_clip_the_snr_at_gamma():
    terms = DiffusionTerms(build_noise_scheduler(FoundationTrainConfig()).alphas_cumprod)
    t = torch.tensor([0, 100, 500, 900])
    snr = (terms.sqrt_abar[t] / terms.sqrt_one_minus_abar[t]) ** 2
    assert snr[0] > 5 > snr[3]
    eps_weights = min_snr_weights(terms, t, 5.0, "epsilon")
    torch.testing.assert_close(eps_weights, (snr.clamp(max=5.0) / snr).float())
    assert eps_weights[3] == 1.0 and eps_weights[0] < 0.01  # noisy steps keep weight 1, nearly clean ones lose it
    v_weights = min_snr_weights(terms, t, 5.0, "v_prediction")
    torch.testing.assert_close(v_weights, (snr.clamp(max=5.0) / (snr + 1)).float())
    # a huge gamma is plain MSE on epsilon
    torch.testing.assert_close(min_snr_weights(terms, t, 1e12, "epsilon"), torch.ones(4))


def test_batch_order_is_a_function_of_seed_and_step():
    first = [global_batch_indices(step, 4, 6, seed=0) for step in range(3)]
    assert sorted(first[0] + first[1][:2]) == list(range(6))  # one epoch is a permutation
    assert first == [global_batch_indices(step, 4, 6, seed=0) for step in range(3)]
    assert first != [global_batch_indices(step, 4, 6, seed=1) for step in range(3)]


# ------------------------------------------------------------------------------------------------
# Training runs
# ------------------------------------------------------------------------------------------------


def test_train_three_steps_writes_a_pipeline_folder_that_ifpipeline_loads(data_dir, tmp_path):
    from diffusers import DPMSolverMultistepScheduler, IFPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer

    out = tmp_path / "run"
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(tiny_settings(data_dir, out)))
    # the CLI in a subprocess, as a user runs it
    result = subprocess.run(
        [sys.executable, "-m", "diffusers_mv3d.cli", "train-foundation", "--config", str(config_file)],
        capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["step"] == 3 and np.isfinite(summary["loss"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    assert {"lr", "samples_per_s", "peak_rss_mb", "mse", "vlb"} <= set(log[0])
    assert (out / "samples" / "step-000003.png").is_file()
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["checkpoint-000002", "checkpoint-000003"]
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]

    folder = out / "pipeline"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "IFPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "PreTrainedTokenizerFast"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "text_encoder" / "model.safetensors").is_file()

    # the saved UNet is the EMA one
    ema = weights(out / "checkpoints" / "checkpoint-000003" / "ema.safetensors")
    saved = weights(folder / "unet" / "diffusion_pytorch_model.safetensors")
    raw = weights(out / "checkpoints" / "checkpoint-000003" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(saved[name], ema[f"unet.{name}"]) for name in saved)
    assert any(not torch.equal(saved[name], raw[name]) for name in saved)

    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    assert tokenizer.unk_token_id not in tokenizer("a red box").input_ids
    assert UNet2DConditionModel.from_pretrained(folder / "unet").config.out_channels == 6
    pipe = IFPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        "a red box", num_inference_steps=2, guidance_scale=3.0, output_type="np", clean_caption=False,
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()
    # DPM-Solver reads variance_type="learned_range" from the saved config and works inside IFPipeline too
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    images = pipe("a blue ball", num_inference_steps=2, guidance_scale=3.0, output_type="np", clean_caption=False).images
    assert np.isfinite(images).all()


def test_a_v_prediction_run_starts_from_an_init_from_folder_and_saves_its_scheduler(data_dir, tmp_path):
    from diffusers import DDPMScheduler

    first = main(FoundationTrainConfig(**{**tiny_settings(data_dir, tmp_path / "first"), "validation_steps": 0}))
    init = Path(first["pipeline"])
    settings = {**tiny_settings(data_dir, tmp_path / "v"), "max_train_steps": 1, "learning_rate": 1e-12,
                "validation_steps": 1, "prediction_type": "v_prediction", "zero_terminal_snr": True,
                "snr_gamma": 5.0, "noise_offset": 0.1, "init_from": str(init)}
    summary = main(FoundationTrainConfig(**settings))
    assert summary["step"] == 1 and np.isfinite(summary["loss"])
    scheduler = DDPMScheduler.from_pretrained(tmp_path / "v" / "pipeline" / "scheduler")
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.rescale_betas_zero_snr
    assert scheduler.config.timestep_spacing == "trailing"
    # the weights are the init folder's (a learning rate of 1e-12 leaves them where they started)
    before = weights(init / "unet" / "diffusion_pytorch_model.safetensors")
    after = weights(tmp_path / "v" / "checkpoints" / "checkpoint-000001" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.allclose(before[name], after[name], atol=1e-6) for name in before)
    assert (tmp_path / "v" / "samples" / "step-000001.png").is_file()  # sampling with v and trailing spacing

    with pytest.raises(ValueError, match="--init-from"):  # weights of another shape
        main(FoundationTrainConfig(**{**settings, "output_dir": str(tmp_path / "bad"), "text_hidden_size": 32}))
    with pytest.raises(ValueError, match="unet/"):  # not a pipeline folder
        main(FoundationTrainConfig(**{**settings, "output_dir": str(tmp_path / "bad2"), "init_from": str(tmp_path)}))


def test_a_run_resumed_with_another_learning_rate_uses_it_from_the_next_step(data_dir, tmp_path, capsys):
    settings = {**tiny_settings(data_dir, tmp_path), "max_train_steps": 4, "validation_steps": 0, "learning_rate": 1e-3}
    main(FoundationTrainConfig(**{**settings, "stop_at_step": 2}))
    main(FoundationTrainConfig(**{**settings, "learning_rate": 5e-4, "resume": "latest"}))
    assert "using the settings'" in capsys.readouterr().out
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines()) if "lr" in r}
    # logged: the next step's lr; 1 warm-up step, then cosine to 0 at step 4: factors 0.75, 0.25, 0
    assert lrs[2] == pytest.approx(0.75e-3) and lrs[3] == pytest.approx(0.25 * 5e-4) and lrs[4] == 0.0
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-000004" / "trainer_state.json").read_text())
    assert [group["initial_lr"] for group in state["optimizer"]["param_groups"]] == [5e-4]  # what a next resume restores


def test_stop_and_resume_equals_the_uninterrupted_run(data_dir, tmp_path):
    settings = {**tiny_settings(data_dir, tmp_path), "max_train_steps": 4, "validation_steps": 0}
    straight = main(FoundationTrainConfig(**{**settings, "output_dir": str(tmp_path / "straight")}))
    first = main(FoundationTrainConfig(**{**settings, "output_dir": str(tmp_path / "split"), "stop_at_step": 3}))
    assert first["step"] == 3 and latest_checkpoint(tmp_path / "split" / "checkpoints").name == "checkpoint-000003"
    second = main(FoundationTrainConfig(**{**settings, "output_dir": str(tmp_path / "split"), "resume": "latest"}))
    assert straight["step"] == second["step"] == 4
    assert second["loss"] == straight["loss"]
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "ema.safetensors", "optimizer.safetensors"):
        a = weights(tmp_path / "straight" / "checkpoints" / "checkpoint-000004" / name)
        b = weights(tmp_path / "split" / "checkpoints" / "checkpoint-000004" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = weights(tmp_path / "straight" / "pipeline" / name), weights(tmp_path / "split" / "pipeline" / name)
        assert all(torch.equal(a[key], b[key]) for key in a)

    with pytest.raises(ValueError, match="--text-layers"):
        main(FoundationTrainConfig(**{**settings, "output_dir": str(tmp_path / "split"), "resume": "latest",
                                      "text_layers": 2}))


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    import safetensors.torch
    from diffusers.optimization import get_cosine_schedule_with_warmup
    cfg = FoundationTrainConfig(**tiny_settings(tmp_path, tmp_path))
    tokenizer = train_word_tokenizer(["a red box"])
    model = FoundationModel(build_unet(cfg), build_text_encoder(tokenizer, 16, 1, 2), tokenizer)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 1, 3)
    average = WeightAverage(model, 0.9999, 0.75)
    models = {"unet": model.unet, "text_encoder": model.text_encoder}

    def save_checkpoint(folder):
        save_training_checkpoint(folder, 1, models, optimizer, scheduler, cfg, foundation_checkpoint_extras(model, average))

    checkpoints = tmp_path / "checkpoints"
    final = checkpoints / "checkpoint-000001"
    real_save_file = safetensors.torch.save_file
    seen = []

    def failing_save_file(tensors, filename, *args, **kwargs):
        # mid-write: the files go to a temporary folder, the finished name does not exist yet
        seen.append(Path(filename).relative_to(checkpoints).parts[0])
        assert not final.exists()
        if filename.endswith("optimizer.safetensors"):
            raise OSError("disk full")
        return real_save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(final)
    assert seen and all(name.startswith(".tmp-checkpoint-000001") for name in seen)
    assert not final.exists() and list(checkpoints.iterdir()) == []  # the partial folder was removed
    assert latest_checkpoint(checkpoints) is None

    monkeypatch.setattr(safetensors.torch, "save_file", real_save_file)
    save_checkpoint(final)
    # a killed writer leaves a temporary folder; --resume latest ignores it and any unfinished folder
    (checkpoints / ".tmp-checkpoint-000009-123").mkdir()
    (checkpoints / "checkpoint-000008").mkdir()
    assert latest_checkpoint(checkpoints) == final
    # rewriting an existing checkpoint replaces it whole
    save_checkpoint(final)
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        ".tmp-checkpoint-000009-123", "checkpoint-000001", "checkpoint-000008"]


def test_time_budget_stops_with_a_checkpoint(data_dir, tmp_path):
    settings = {**tiny_settings(data_dir, tmp_path), "max_train_steps": 50, "validation_steps": 0, "max_minutes": 1e-6}
    summary = main(FoundationTrainConfig(**settings))
    assert summary["step"] == 1
    assert latest_checkpoint(tmp_path / "checkpoints").name == "checkpoint-000001"
    assert (tmp_path / "pipeline" / "model_index.json").is_file()


# ------------------------------------------------------------------------------------------------
# Kills and corruption (issue 16): a SIGKILL inside any final write, then the same command
# ------------------------------------------------------------------------------------------------

_KILLING_RUN = """
import json, os, signal, sys
from pathlib import Path
import diffusers_mv3d.io_utils
import diffusers_mv3d.training.train_foundation as tf

target = sys.argv[2]
original = diffusers_mv3d.io_utils.atomic_write_folder

def write_then_die(final, write):
    if Path(final).name != target:
        return original(final, write)
    tmp = Path(final).with_name(f".tmp-{Path(final).name}-{os.getpid()}")
    tmp.mkdir(parents=True)
    write(tmp)  # the folder is complete, but the process dies before the rename
    os.kill(os.getpid(), signal.SIGKILL)

for module in list(sys.modules.values()):  # every module that imported the folder writer
    if getattr(module, "atomic_write_folder", None) is original:
        module.atomic_write_folder = write_then_die
tf.main(tf.FoundationTrainConfig(**json.loads(Path(sys.argv[1]).read_text())))
"""


@pytest.mark.parametrize("target", ["pipeline", "checkpoint-000003"])
def test_a_kill_inside_the_final_write_then_the_same_command_gives_the_uninterrupted_pipeline(data_dir, tmp_path, target):
    reference = main(FoundationTrainConfig(**{**tiny_settings(data_dir, tmp_path / "reference"), "validation_steps": 0}))
    settings = {**tiny_settings(data_dir, tmp_path / "killed"), "validation_steps": 0, "resume": "latest"}
    config_file = tmp_path / "settings.json"
    config_file.write_text(json.dumps(settings))
    killed = subprocess.run([sys.executable, "-c", _KILLING_RUN, str(config_file), target], capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    parent = tmp_path / "killed" / ("checkpoints" if target.startswith("checkpoint") else "")
    assert any(p.name.startswith(f".tmp-{target}-") for p in parent.iterdir())  # what the kill left behind
    again = main(FoundationTrainConfig(**settings))  # the same command
    assert again["step"] == 3
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        ours, theirs = weights(tmp_path / "killed" / "pipeline" / name), weights(Path(reference["pipeline"]) / name)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    leftovers = [p for p in (tmp_path / "killed").rglob(".*") if p.name.startswith((".tmp-", ".old-"))]
    assert not leftovers


def test_resume_latest_skips_a_corrupt_newest_checkpoint_and_a_named_one_is_an_error(data_dir, tmp_path):
    from diffusers_mv3d.training.checkpointing import newest_intact_checkpoint, resolve_resume

    settings = {**tiny_settings(data_dir, tmp_path / "run"), "validation_steps": 0}
    main(FoundationTrainConfig(**settings))
    checkpoints = tmp_path / "run" / "checkpoints"
    newest = checkpoints / "checkpoint-000003"
    optimizer_file = newest / "optimizer.safetensors"
    optimizer_file.write_bytes(optimizer_file.read_bytes()[: optimizer_file.stat().st_size // 2])  # truncated
    with pytest.warns(UserWarning, match="optimizer.safetensors"):
        assert newest_intact_checkpoint(checkpoints) == checkpoints / "checkpoint-000002"
    with pytest.raises(ValueError, match="optimizer.safetensors"):
        resolve_resume(FoundationTrainConfig(**{**settings, "resume": str(newest)}))
    (checkpoints / "checkpoint-000002" / "trainer_state.json").write_text('{"step": 2, "optimizer": ')  # cut short
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert newest_intact_checkpoint(checkpoints) is None  # nothing intact: a fresh start
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2  # each corrupt checkpoint named once, with the file that is wrong
    assert "checkpoint-000003 (" in messages[0] and "optimizer.safetensors" in messages[0]
    assert "checkpoint-000002 (" in messages[1] and "trainer_state.json" in messages[1]


def test_an_output_dir_that_is_a_file_is_a_clear_error(data_dir, tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="--output-dir .* is a file"):
        main(FoundationTrainConfig(**tiny_settings(data_dir, tmp_path / "a-file")))


def test_stale_temporaries_of_dead_processes_are_cleaned_up(tmp_path):
    from diffusers_mv3d.training.checkpointing import remove_stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f".tmp-checkpoint-000004-{dead_pid}").mkdir()  # half-written: deleted
    (tmp_path / f".old-pipeline-{dead_pid}").mkdir()  # killed between the renames: restored
    (tmp_path / "model").mkdir()
    (tmp_path / f".old-model-{dead_pid}").mkdir()  # the rename finished: the old copy is deleted
    (tmp_path / f".tmp-model-{os.getpid()}").mkdir()  # a live writer's folder: left alone
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".tmp-model-{os.getpid()}", "model", "pipeline"]


def test_a_resume_keeps_seed_and_batch_size_and_the_log_has_each_step_once(data_dir, tmp_path):
    settings = {**tiny_settings(data_dir, tmp_path / "run"), "validation_steps": 0}
    main(FoundationTrainConfig(**{**settings, "max_train_steps": 3, "stop_at_step": 2}))
    log = tmp_path / "run" / "log.jsonl"
    with open(log, "a") as handle:  # what a run killed after step 2's checkpoint would have logged
        handle.write(json.dumps({"step": 3, "loss": 1.0}) + "\n" + '{"step": 4, "lo')
    for name, value in (("seed", 1), ("batch_size", 2)):
        with pytest.raises(ValueError, match=f"--{name.replace('_', '-')} .* differs from the checkpoint"):
            main(FoundationTrainConfig(**{**settings, "resume": "latest", name: value}))
    main(FoundationTrainConfig(**{**settings, "resume": "latest"}))
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_a_resume_with_another_learning_rate_uses_it(data_dir, tmp_path):
    settings = {**tiny_settings(data_dir, tmp_path / "run"), "validation_steps": 0, "max_train_steps": 3}
    main(FoundationTrainConfig(**{**settings, "stop_at_step": 2}))
    main(FoundationTrainConfig(**{**settings, "resume": "latest", "learning_rate": 1e-12}))
    checkpoints = tmp_path / "run" / "checkpoints"
    state = json.loads((checkpoints / "checkpoint-000003" / "trainer_state.json").read_text())
    assert state["lr_scheduler"]["base_lrs"] == [1e-12]
    before = weights(checkpoints / "checkpoint-000002" / "unet" / "diffusion_pytorch_model.safetensors")
    after = weights(checkpoints / "checkpoint-000003" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.allclose(before[name], after[name], atol=1e-8) for name in before)  # step 3 hardly moved


def test_the_foundation_v2_config_is_the_v1_config_plus_the_pilots_winning_recipe():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, FoundationTrainConfig)
    v1 = config_from_args(FoundationTrainConfig, parser.parse_args(["--config", str(REPO / "configs" / "foundation-tiny.yaml")]))
    v2 = config_from_args(FoundationTrainConfig, parser.parse_args(["--config", str(REPO / "configs" / "foundation-v2-tiny.yaml")]))
    changed = {f.name for f in dataclasses.fields(FoundationTrainConfig) if getattr(v1, f.name) != getattr(v2, f.name)}
    recipe = {"prediction_type", "zero_terminal_snr", "snr_gamma", "init_from", "lr_warmup_steps"}
    bookkeeping = {"output_dir", "num_threads", "checkpointing_steps", "resume", "validation_guidance_scale"}
    assert changed == recipe | bookkeeping
    assert (v2.prediction_type, v2.zero_terminal_snr, v2.snr_gamma) == ("v_prediction", True, 5.0)
    assert v2.architecture() == v1.architecture()  # the v1 weights it starts from fit
