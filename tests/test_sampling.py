"""The one sampler (diffusers_mv3d.sampling): every sampler built on it gives, bit for bit, what the
loop it replaced gave (the reference loops below are those loops, written out naively)."""
import pytest
import torch
from diffusers import DDIMScheduler

from diffusers_mv3d.foundation import load_foundation
from diffusers_mv3d.models.views import fold_views, unfold_views
from diffusers_mv3d.sampling import (
    classifier_free_guidance, ddim_scheduler, sample, sample_ddim, sample_views, share_low_frequencies,
)
from diffusers_mv3d.training.text import encode_prompts
from dummies import tiny_pipeline
from test_train_tunemv3d import make_pixel_foundation


@torch.no_grad()
def reference_text_to_image(unet, text_encoder, tokenizer, prompts, scheduler_config, steps, scale, generator, eta):
    """train_foundation.sample_ddim as it was: its own DDIM loop."""
    scheduler = DDIMScheduler.from_config({k: v for k, v in dict(scheduler_config).items() if k != "variance_type"})
    channels, size = unet.config.in_channels, unet.config.sample_size
    cond = encode_prompts(tokenizer, text_encoder, prompts)
    cond = torch.cat([encode_prompts(tokenizer, text_encoder, [""] * len(prompts)), cond])
    x = torch.randn((len(prompts), channels, size, size), generator=generator) * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        prediction = unet(torch.cat([x, x]), t, encoder_hidden_states=cond).sample[:, :channels]
        uncond, text = prediction.chunk(2)
        x = scheduler.step(uncond + scale * (text - uncond), t, x, eta=eta, generator=generator).prev_sample
    return x.clamp(-1, 1)


@torch.no_grad()
def reference_views(parts, prompt, num_views, steps, scale, generator, eta):
    """train_baseline.sample_views as it was, for a UNet without cameras: views [1, V] stepped folded."""
    from diffusers.utils.torch_utils import randn_tensor

    unet = parts.unet
    size, channels = unet.config.sample_size, unet.config.in_channels
    text = parts.encode_text(["", prompt])
    scheduler = DDIMScheduler.from_config({k: v for k, v in dict(parts.noise_scheduler.config).items()
                                           if k != "variance_type"})
    scheduler.set_timesteps(steps)
    x = randn_tensor((1, num_views, channels, size, size), generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        doubled = torch.cat([scheduler.scale_model_input(x, t)] * 2)
        noise = unet(fold_views(doubled), torch.full((2 * num_views,), int(t)),
                     encoder_hidden_states=text.repeat_interleave(num_views, dim=0)).sample[:, :channels]
        uncond, cond = unfold_views(noise, num_views).chunk(2)
        x = scheduler.step(fold_views(uncond + scale * (cond - uncond)), t, fold_views(x), eta=eta,
                           generator=generator).prev_sample
        x = unfold_views(x, num_views)
    return ((parts.to_images(x[0]).float() + 1) / 2).cpu()


@pytest.fixture(scope="module")
def foundation(tmp_path_factory):
    return load_foundation(str(make_pixel_foundation(tmp_path_factory.mktemp("sampling") / "foundation")))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_text_to_image_equals_the_old_loop(foundation, eta):
    f = foundation
    args = (f.unet, f.text_encoder, f.tokenizer, ["a red chair", "a blue table"], f.noise_scheduler.config, 3, 3.0)
    got = sample_ddim(*args, generator=torch.Generator().manual_seed(0), eta=eta)
    expected = reference_text_to_image(*args, torch.Generator().manual_seed(0), eta)
    assert got.shape == (2, 3, 16, 16) and torch.equal(got, expected)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_views_equal_the_old_loop(foundation, eta):
    got = sample_views(foundation, "a red chair", 3, None, 3, 3.0, torch.Generator().manual_seed(0), eta=eta)
    expected = reference_views(foundation, "a red chair", 3, 3, 3.0, torch.Generator().manual_seed(0), eta)
    assert got.shape == (3, 3, 16, 16) and torch.equal(got, expected)


def test_the_frozen_foundation_variant_equals_the_old_loop():
    from diffusers.utils.torch_utils import randn_tensor

    from diffusers_mv3d.evaluation.variants import sample_foundation

    pipe = tiny_pipeline()
    got = sample_foundation(pipe, "a red chair", 2, 3, 3.0, torch.Generator().manual_seed(0))
    # the loop sample_foundation held before it ran through sampling.sample
    generator = torch.Generator().manual_seed(0)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.inner.config)
    scheduler.set_timesteps(3)
    x = randn_tensor((1, 2, 3, 16, 16), generator=generator)[0] * scheduler.init_noise_sigma
    text, negative = pipe.encode_prompt("a red chair", torch.device("cpu"), do_classifier_free_guidance=True)
    text = torch.cat([negative, text]).repeat_interleave(2, 0)
    with torch.no_grad():
        for t in scheduler.timesteps:
            noise = pipe.unet(torch.cat([x] * 2), t, text).sample[:, :3]
            uncond, cond = noise.chunk(2)
            x = scheduler.step(uncond + 3.0 * (cond - uncond), t, x, eta=pipe.scheduler.config.eta,
                               generator=generator).prev_sample
        expected = ((pipe.decode_views(x).float().clamp(-1, 1) + 1) / 2).cpu()
    assert torch.equal(got, expected)


def test_sample_passes_extra_step_arguments_and_runs_the_step_end_hook():
    """A predict returning (output, step arguments) reaches scheduler.step; on_step_end sees and replaces x."""
    seen = []

    class Recorder(DDIMScheduler):
        def step(self, model_output, timestep, sample, **kwargs):
            seen.append(sorted(kwargs))
            return super().step(model_output, timestep, sample, eta=kwargs["eta"], generator=kwargs["generator"])

    scheduler = Recorder(num_train_timesteps=10)
    scheduler.set_timesteps(2)
    ends = []

    def predict(x, t, i):
        return torch.zeros_like(x), {"use_clipped_model_output": False}

    def on_step_end(i, t, x):
        ends.append(i)
        return x * 0 + i

    out = sample(scheduler, torch.ones(1, 3, 2, 2), predict, on_step_end=on_step_end)
    assert ends == [0, 1] and torch.equal(out, torch.ones(1, 3, 2, 2))
    assert seen == [["eta", "generator", "use_clipped_model_output"]] * 2


def test_guidance_and_scheduler_helpers():
    prediction = torch.tensor([[1.0], [3.0]])  # unconditional first
    assert torch.equal(classifier_free_guidance(prediction, 2.0), torch.tensor([[5.0]]))
    scheduler = ddim_scheduler({"num_train_timesteps": 10, "variance_type": "learned_range", "clip_sample": False})
    assert isinstance(scheduler, DDIMScheduler) and scheduler.config.clip_sample is False


def test_shared_low_frequencies_keep_each_views_detail_and_share_the_tile_means():
    generator = torch.Generator().manual_seed(0)
    noise, shared = torch.randn(2, 4, 3, 8, 8, generator=generator), torch.randn(2, 1, 3, 8, 8, generator=generator)
    out = share_low_frequencies(noise, shared, 2)

    def tile_means(x):  # [..., 8, 8] -> [..., 2, 2], written out by hand
        return x.unflatten(-1, (2, 4)).unflatten(-3, (2, 4)).mean(dim=(-3, -1))

    torch.testing.assert_close(tile_means(out), tile_means(shared).expand(2, 4, 3, 2, 2))
    detail = lambda x: x - tile_means(x).repeat_interleave(4, -1).repeat_interleave(4, -2)
    torch.testing.assert_close(detail(out), detail(noise))
    # one tile per pixel: every view is the shared noise; each view stays standard normal in general
    torch.testing.assert_close(share_low_frequencies(noise, shared, 8), shared.expand_as(noise))
    large = share_low_frequencies(torch.randn(64, 8, 3, 8, 8, generator=generator),
                                  torch.randn(64, 1, 3, 8, 8, generator=generator), 1)
    assert abs(large.std().item() - 1.0) < 0.02 and abs(large.mean().item()) < 0.02
    with pytest.raises(ValueError, match="shared_noise_tiles"):
        share_low_frequencies(noise, shared, 3)
