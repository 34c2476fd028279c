"""diffusers_mv3d.assembly and scripts/: assemble a TuneMV3DPipeline from tiny SD-like (latent) and IF-like (pixel) pipelines saved
with save_pretrained, and convert a diffusers ControlNetModel into a MultiViewControlNetModel. No download."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, DDIMScheduler, DDPMScheduler, PNDMScheduler, UNet2DConditionModel

from diffusers_mv3d import (
    Cameras,
    ConsistencyGuidanceScheduler,
    LatentSparseNeuS,
    MultiViewControlNetModel,
    RetrievalCaptioner,
    TuneMV3DPipeline,
)
from diffusers_mv3d.assembly import (
    FreshBranchConfig,
    assemble_pipeline,
    convert_controlnet,
    fresh_branch,
    model_card_text,
)
from dummies import TEXT_DIM, randomize_branch, tiny_controlnet, tiny_neus, tiny_text, tiny_unet, tiny_vae

ROOT = Path(__file__).resolve().parents[1]
ASSEMBLE = ROOT / "scripts" / "assemble_pipeline.py"
CONVERT = ROOT / "scripts" / "convert_controlnet.py"


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem + "_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def if_like_unet() -> UNet2DConditionModel:
    """Pixel space, 3 channels in, 6 out (epsilon + IF's learned variance)."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=6, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=2, norm_num_groups=8,
    )


@pytest.fixture(scope="module")
def sd_base(tmp_path_factory):
    """A tiny Stable Diffusion folder: 4-channel 8x8 UNet + AutoencoderKL + CLIPTextModel + PNDM."""
    from diffusers import StableDiffusionPipeline

    tokenizer, text_encoder = tiny_text()
    scheduler = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=tiny_unet(4, 8),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("sd") / "base"
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def if_base(tmp_path_factory):
    """A tiny IF stage I-like folder: pixel 16x16 UNet with learned variance, no VAE, DDPM (as train-foundation)."""
    from diffusers import IFPipeline

    tokenizer, text_encoder = tiny_text()
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range", clip_sample=True,
                              timestep_spacing="trailing")
    pipe = IFPipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=if_like_unet(), scheduler=scheduler,
                      safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("if") / "base"
    pipe.save_pretrained(folder)
    return folder


def generate(pipe, num_views, **kwargs):
    """2 steps, no text guidance (one branch + UNet pass a step: the tests' time goes here)."""
    pipe.set_progress_bar_config(disable=True)
    kwargs.setdefault("guidance_scale", 1.0)
    return pipe("a red chair with armrests", num_views=num_views, num_inference_steps=2, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs)


def assert_state_equal(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def branch_residuals(pipe, num_views=3):
    """Run the pipeline's NeuS and branch once on random views; return the residuals."""
    size = pipe.unet.config.sample_size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, num_views, pipe.unet.config.in_channels, size, size, generator=generator)
    cameras = Cameras.orbit(20.0, [i * 360.0 / num_views for i in range(num_views)], height=size)
    text = torch.randn(1, 77, TEXT_DIM, generator=generator)
    with torch.no_grad():
        neus = pipe.neus(x, torch.tensor([500]), cameras)
        return pipe.controlnet(x, torch.tensor([500]), text, cameras, neus_render=neus.x0, sample_points=neus.sample_points,
                               sample_weights=neus.sample_weights, return_dict=False)


@pytest.mark.parametrize("kind", ["sd", "if"])
def test_assemble_fresh_branch_loads_generates_and_adds_zero(kind, sd_base, if_base, tmp_path):
    base = sd_base if kind == "sd" else if_base
    out = tmp_path / "pipe"
    pipe = assemble_pipeline(base, out=out, neus_render_resolution=8)

    # the folder: model_index.json naming our classes, safetensors only, a model card
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "TuneMV3DPipeline"
    assert index["controlnet"][0].startswith("diffusers_mv3d") and index["controlnet"][1] == "MultiViewControlNetModel"
    assert (index["vae"][1] == "AutoencoderKL") == (kind == "sd")
    assert list(out.rglob("*.safetensors")) and not list(out.rglob("*.bin"))
    card = (out / "README.md").read_text()
    assert "library_name: diffusers" in card and str(base) in card and "fresh" in card
    assert f'TuneMV3DPipeline.from_pretrained("{out}")' in card
    assert f"scripts/assemble_pipeline.py --base {base}" in card

    loaded = TuneMV3DPipeline.from_pretrained(out)
    # the frozen parts are the base's, bit for bit; the scheduler is DDIM on the base's schedule
    base_unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    assert_state_equal(loaded.unet, base_unet)
    assert isinstance(loaded.scheduler, ConsistencyGuidanceScheduler) and isinstance(loaded.scheduler.inner, DDIMScheduler)
    assert loaded.scheduler.config.consistency_ratio == 0.5 and loaded.scheduler.config.consistency_scale == 7.5
    base_scheduler = json.loads((base / "scheduler" / "scheduler_config.json").read_text())
    for key in ("beta_schedule", "num_train_timesteps", "prediction_type", "beta_start", "beta_end"):
        assert loaded.scheduler.inner.config[key] == base_scheduler[key], key
    assert loaded.scheduler.inner.config.clip_sample == (kind == "if")  # latents are never clipped to [-1, 1]
    assert loaded.neus.config.in_channels == base_unet.config.in_channels
    assert loaded.neus.config.render_resolution == 8
    assert loaded.neus.background_color.detach()[0].item() == (0.0 if kind == "sd" else 1.0)
    assert (loaded.vae is not None) == (kind == "sd") and loaded.reconstructor is None

    # a fresh branch adds exactly zero
    down, mid = branch_residuals(loaded)
    assert all(torch.count_nonzero(residual) == 0 for residual in down) and torch.count_nonzero(mid) == 0

    for name in ("unet", "controlnet", "neus", "text_encoder"):  # the returned pipeline is the saved one
        assert_state_equal(getattr(loaded, name), getattr(pipe, name))
    num_views = 3 if kind == "sd" else 2
    images = generate(loaded, num_views, consistency_ratio=0.0).images
    assert images.shape == (num_views, 16, 16, 3) and np.isfinite(images).all()


def test_fresh_branch_is_the_trainers_initial_branch(if_base):
    train = pytest.importorskip("diffusers_mv3d.training.train_tunemv3d")
    from types import SimpleNamespace

    cfg = train.TuneMV3DTrainConfig()
    defaults = FreshBranchConfig()
    for name, value in vars(defaults).items():
        assert getattr(cfg, name) == value, name  # FreshBranchConfig mirrors the trainer's defaults
    unet = UNet2DConditionModel.from_pretrained(if_base, subfolder="unet")
    controlnet, neus = fresh_branch(unet, latent=False)
    expected = train.build_branch(SimpleNamespace(unet=unet, channels=3, vae=None), cfg)
    assert_state_equal(controlnet, expected[0])
    assert_state_equal(neus, expected[1])
    assert dict(neus.config) == dict(expected[1].config)


def test_assemble_script_with_trained_branch_and_reconstructor(if_base, tmp_path):
    unet = UNet2DConditionModel.from_pretrained(if_base, subfolder="unet")
    branch = tmp_path / "branch"
    holder = torch.nn.Module()
    holder.controlnet = tiny_controlnet(unet)
    randomize_branch(holder)  # non-zero residual convs: a "trained" branch
    holder.controlnet.save_pretrained(branch / "controlnet")
    tiny_neus(3).save_pretrained(branch / "neus")
    torch.manual_seed(5)
    reconstructor = LatentSparseNeuS(in_channels=3, feature_channels=4, encoder_channels=4, hidden_dim=8,
                                     num_sdf_layers=1, num_color_layers=1, num_frequencies=1, num_coarse_samples=4,
                                     num_importance_samples=0, timestep_embedding_dim=4)
    reconstructor.save_pretrained(tmp_path / "recon" / "reconstructor")  # train-reconstructor's model/ layout
    captioner = RetrievalCaptioner(["a tall red lamp", "a blue mug"], ["red", "blue"], key_size=4, data_dir="data/x")
    captioner.view_keys.normal_()
    captioner.save_pretrained(tmp_path / "captioner")
    out = tmp_path / "pipe"

    command = [sys.executable, str(ASSEMBLE), "--base", str(if_base), "--branch", str(branch), "--reconstructor",
               str(tmp_path / "recon"), "--out", str(out), "--consistency-ratio", "0.25", "--consistency-scale", "2.0",
               "--neus-render-resolution", "8", "--guidance-scale", "1", "--captioner", str(tmp_path / "captioner"),
               "--reconstructor-mesh-level", "0.02"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote" in result.stdout

    loaded = TuneMV3DPipeline.from_pretrained(out)
    assert_state_equal(loaded.controlnet, holder.controlnet)
    assert_state_equal(loaded.reconstructor, reconstructor)
    assert loaded.reconstructor.config.mesh_level == 0.02 and reconstructor.config.mesh_level == 0.0
    assert_state_equal(loaded.captioner, captioner) and loaded.captioner.config.captions == ["a tall red lamp", "a blue mug"]
    assert loaded.scheduler.config.consistency_ratio == 0.25 and loaded.scheduler.config.consistency_scale == 2.0
    assert loaded.scheduler.config.guidance_scale == 1.0
    card = (out / "README.md").read_text()
    assert str(branch) in card and "--consistency-ratio 0.25" in card and "trained" in card
    assert "--guidance-scale 1" in card and "guidance_scale=1.0" in card  # the command and the usage example
    assert "fresh (untrained)" not in card
    assert f"diffusers-mv3d build-captioner --data data/x --out {tmp_path / 'captioner'}" in card
    # from a pipeline folder's captioner/: built into that folder
    pipeline_card = model_card_text(loaded, str(if_base), "assemble ...", captioner=str(out))
    assert f"diffusers-mv3d build-captioner --data data/x --pipeline {out}" in pipeline_card
    images = generate(loaded, 2, consistency_ratio=0.5).images  # one consistency step of the two
    assert images.shape == (2, 16, 16, 3)


def test_branch_for_another_unet_is_refused_naming_both_flags(sd_base, if_base, tmp_path):
    unet = UNet2DConditionModel.from_pretrained(if_base, subfolder="unet")
    tiny_controlnet(unet).save_pretrained(tmp_path / "branch" / "controlnet")
    tiny_neus(3).save_pretrained(tmp_path / "branch" / "neus")
    with pytest.raises(ValueError, match=r"--branch .*--base .*in_channels"):
        assemble_pipeline(sd_base, branch=tmp_path / "branch")
    tiny_neus(4).save_pretrained(tmp_path / "latent-neus")  # a reconstructor reads RGB pixels
    with pytest.raises(ValueError, match=r"--reconstructor .*in_channels=4"):
        assemble_pipeline(if_base, reconstructor=tmp_path / "latent-neus")
    with pytest.raises(ValueError, match=r"--reconstructor-mesh-level .*neither --branch nor --reconstructor"):
        assemble_pipeline(if_base, reconstructor_mesh_level=0.02)
    (tmp_path / "half").mkdir()
    with pytest.raises(ValueError, match=r"--branch .*missing controlnet/, neus/"):
        assemble_pipeline(if_base, branch=tmp_path / "half")


def test_bad_base_raises_naming_it(tmp_path, capsys):
    missing = tmp_path / "no-such-pipeline"
    with pytest.raises(ValueError, match=r"--base '.*no-such-pipeline'.*no such folder"):
        assemble_pipeline(missing, out=tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"--base .*missing unet/, text_encoder/, tokenizer/, scheduler/"):
        assemble_pipeline(tmp_path / "empty")
    script = load_script(ASSEMBLE)
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--base", str(missing), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "--base" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_out_needs_overwrite(if_base, tmp_path):
    out = tmp_path / "pipe"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="--overwrite"):
        assemble_pipeline(if_base, out=out)
    assert (out / "keep.txt").read_text() == "mine"


def test_model_card_names_base_branch_training_and_command(if_base):
    pipe = assemble_pipeline(if_base, neus_render_resolution=8)
    card = model_card_text(pipe, "owner/some-if-model", "python scripts/assemble_pipeline.py --base owner/some-if-model",
                           branch="runs/tunemv3d/model", load_from="owner/tunemv3d")
    assert card.startswith("---\nlibrary_name: diffusers") and "base_model: owner/some-if-model" in card
    assert "| `unet` | UNet2DConditionModel | frozen |" in card
    assert "| `controlnet` | MultiViewControlNetModel (diffusers_mv3d) | trained | `runs/tunemv3d/model` |" in card
    assert 'TuneMV3DPipeline.from_pretrained("owner/tunemv3d")' in card
    assert "python scripts/assemble_pipeline.py --base owner/some-if-model" in card


def test_training_section_sums_resumed_sessions_and_gives_the_reproducing_commands(tmp_path):
    from diffusers_mv3d.assembly.model_card import training_section
    from diffusers_mv3d.training.config import save_config
    from diffusers_mv3d.training.train_tunemv3d import TuneMV3DTrainConfig

    data = tmp_path / "objects"
    for name in ("a", "b", "c"):
        (data / name).mkdir(parents=True)
        (data / name / "cameras.json").write_text("{}")
    (data / "render.json").write_text(json.dumps({"split": "objects3d", "resolution": 32, "seed": 0}))
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    save_config(TuneMV3DTrainConfig(data_dir=str(data), output_dir=str(run), resume="latest", max_minutes=30.0,
                                    batch_size=4), str(run / "config.yaml"))
    sessions = [[(10, 1.0, 60.0), (20, 2.0, 120.0)], [(30, 0.5, 30.0), (40, 1.5, 90.0)]]  # step, minutes, cpu s
    records = [{"step": step, "minutes": minutes, "cpu_seconds": cpu, "samples_per_s": 2.0, "peak_rss_mb": 100.0}
               for session in sessions for step, minutes, cpu in session]
    records.insert(2, {"step": 20, "val_mse": 0.1})  # a validation record between logs: not a new session
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "checkpoints" / "checkpoint-000043").mkdir(parents=True)  # the final step, after the last log
    (run / "checkpoints" / "checkpoint-000043" / "trainer_state.json").write_text("{}")

    card = "\n".join(training_section({"branch": str(run / "model"), "base": "owner/hub-model"}, "a test machine"))
    assert "a test machine" in card
    assert f"| branch | `{data}` | 43 (of 20000) | 4 min | 0.1 h | 2.00 | 2 |" in card  # 2.0 + 1.5 min, 210 s
    assert f"diffusers-mv3d render --split objects3d --num-objects 3 --resolution 32 --out {data}" in card
    command = next(line for line in card.splitlines() if line.startswith("diffusers-mv3d train "))
    assert "--stop-at-step 43" in command and "--batch-size 4" in command
    assert "--resume" not in command and "--max-minutes" not in command
    assert training_section({"base": "owner/hub-model", "branch": None}) == []


def test_training_section_follows_init_from_to_the_earlier_stage(tmp_path):
    from diffusers_mv3d.assembly.model_card import training_section
    from diffusers_mv3d.training.config import save_config
    from diffusers_mv3d.training.train_tunemv3d import TuneMV3DTrainConfig

    def run(name: str, steps: int, init_from=None) -> Path:
        folder = tmp_path / name
        (folder / "model").mkdir(parents=True)
        save_config(TuneMV3DTrainConfig(output_dir=str(folder), init_from=init_from, seed=steps), str(folder / "config.yaml"))
        records = [{"step": steps, "minutes": steps / 10, "cpu_seconds": 6.0 * steps, "samples_per_s": 1.0}]
        (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return folder

    first = run("first", 40)
    second = run("second", 10, init_from=str(first / "model"))
    card = "\n".join(training_section({"branch": str(second / "model")}))
    lines = card.splitlines()
    one = lines.index(next(line for line in lines if line.startswith("| branch, stage 1 of 2 |")))
    assert "| 40 (of 20000) | 4 min |" in lines[one] and lines[one + 1].startswith("| branch, stage 2 of 2 |")
    commands = [line for line in lines if line.startswith("diffusers-mv3d train ")]
    assert len(commands) == 2 and "--stop-at-step 40" in commands[0]
    assert f"--init-from {first / 'model'}" in commands[1] and "--stop-at-step 10" in commands[1]

    orphan = run("orphan", 10, init_from="pipelines/some-pipeline")  # no run log behind it: named, not a row
    card = "\n".join(training_section({"branch": str(orphan / "model")}))
    assert "| branch |" in card and "started from the weights in `pipelines/some-pipeline`" in card


def test_recorded_command_parses_back_to_the_same_arguments():
    import shlex

    from diffusers_mv3d.assembly import assemble_command

    command = assemble_command("owner/base", "out dir", branch="runs/b/model", reconstructor="runs/r/model",
                               consistency_ratio=0.25, consistency_scale=2.0, neus_render_resolution=0, seed=3,
                               push_to_hub="me/repo", overwrite=True, eta=1.0, guidance_scale=1.5, captioner="runs/c",
                               reconstructor_mesh_level=0.02)
    words = shlex.split(command)
    assert words[:2] == ["python", "scripts/assemble_pipeline.py"]
    args = load_script(ASSEMBLE).build_parser().parse_args(words[2:])
    assert (args.base, args.out, args.branch, args.reconstructor, args.controlnet) == \
        ("owner/base", "out dir", "runs/b/model", "runs/r/model", None)
    assert (args.consistency_ratio, args.consistency_scale, args.neus_render_resolution, args.seed) == (0.25, 2.0, 0, 3)
    assert args.push_to_hub == "me/repo" and args.overwrite and not args.private and args.eta == 1.0
    assert args.guidance_scale == 1.5 and args.captioner == "runs/c" and args.reconstructor_mesh_level == 0.02


# ---------------------------------------------------------------------------- ControlNet conversion
def random_controlnet(unet, conditioning_channels, embedding):
    """A 'trained' ControlNet: from the UNet, then every tensor (zero convs included) randomised."""
    torch.manual_seed(3)
    controlnet = ControlNetModel.from_unet(unet, conditioning_channels=conditioning_channels,
                                           conditioning_embedding_out_channels=embedding)
    with torch.no_grad():
        for parameter in controlnet.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return controlnet


@pytest.mark.parametrize("case", ["canny", "matching"])
def test_convert_controlnet_copies_every_matching_tensor(case, tmp_path):
    unet = tiny_unet(4, 8)
    unet.save_pretrained(tmp_path / "unet")
    source = random_controlnet(unet, 3, (8, 16)) if case == "canny" else random_controlnet(unet, 4, (8,))
    source.save_pretrained(tmp_path / "controlnet")

    model, report = convert_controlnet(tmp_path / "controlnet", unet=tmp_path / "unet", out=tmp_path / "out",
                                       geometry_attention_levels=(1,))
    target = model.state_dict()
    source_state = source.state_dict()
    reinitialised = case == "canny"
    for name, tensor in source_state.items():
        if reinitialised and name.startswith("controlnet_cond_embedding."):
            assert name in report.skipped and "conditioning embedding re-initialised" in report.skipped[name]
            continue
        assert torch.equal(target["encoder." + name], tensor), name  # copied exactly
        assert "encoder." + name in report.copied
    assert set(report.copied) | set(report.initialised) == set(target)
    assert all(name.startswith("geometry_attention.1.") for name in report.initialised
               if not name.startswith("encoder.controlnet_cond_embedding."))
    assert torch.count_nonzero(target["geometry_attention.1.to_out.weight"]) == 0
    embedding = [name for name in report.initialised if name.startswith("encoder.controlnet_cond_embedding.")]
    if reinitialised:  # re-made for a 4-channel render at full resolution, with a zero output conv
        assert model.encoder.config.conditioning_channels == 4
        assert tuple(model.encoder.config.conditioning_embedding_out_channels) == (16,)
        assert "encoder.controlnet_cond_embedding.conv_out.weight" in embedding
        assert torch.count_nonzero(target["encoder.controlnet_cond_embedding.conv_out.weight"]) == 0
    else:
        assert not embedding and not report.skipped
    assert "copied" in report.summary() and "geometry_attention.1.to_out.weight" in report.summary()

    # the saved folder loads and runs with a NeuS render of the UNet's channels
    loaded = MultiViewControlNetModel.from_pretrained(tmp_path / "out")
    assert_state_equal(loaded, model)
    assert json.loads((tmp_path / "out" / "conversion_report.json").read_text())["copied"] == report.copied
    x = torch.randn(1, 2, 4, 8, 8)
    down, mid = loaded(x, 10, torch.randn(1, 77, TEXT_DIM), neus_render=torch.randn(1, 2, 4, 8, 8), return_dict=False)
    assert down[0].shape == (2, 16, 8, 8) and mid.shape[0] == 2


def test_convert_script_reports_and_checks_the_unet(tmp_path, capsys):
    unet = tiny_unet(4, 8)
    unet.save_pretrained(tmp_path / "unet")
    random_controlnet(unet, 3, (8, 16)).save_pretrained(tmp_path / "controlnet")
    script = load_script(CONVERT)
    assert script.main(["--controlnet", str(tmp_path / "controlnet"), "--unet", str(tmp_path / "unet"), "--out",
                        str(tmp_path / "out"), "--geometry-attention-levels", "0", "1", "--zero-residuals"]) == 0
    printed = capsys.readouterr().out
    assert "initialised" in printed and "geometry_attention.0.to_out.weight" in printed and "zeroed" in printed
    model = MultiViewControlNetModel.from_pretrained(tmp_path / "out")
    residual_convs = [p for n, p in model.named_parameters() if n.startswith("encoder.controlnet_down_blocks")]
    assert residual_convs and all(torch.count_nonzero(p) == 0 for p in residual_convs)

    torch.manual_seed(0)
    other = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=TEXT_DIM,
                                 attention_head_dim=2, norm_num_groups=8)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(SystemExit):
        script.main(["--controlnet", str(tmp_path / "controlnet"), "--unet", str(tmp_path / "other"), "--out",
                     str(tmp_path / "out2")])
    err = capsys.readouterr().err
    assert "--controlnet" in err and "--unet" in err and "block_out_channels" in err
