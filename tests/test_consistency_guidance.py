"""ConsistencyGuidanceScheduler: step selection, eq. 4, save/load, inner scheduler swaps."""
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from diffusers_mv3d.schedulers.consistency_guidance import (
    ConsistencyGuidanceScheduler,
    consistency_step_indices,
)


def test_consistency_steps_are_a_fraction_spread_evenly():
    assert consistency_step_indices(50, 0.0) == set()
    assert consistency_step_indices(50, 1.0) == set(range(50))
    half = sorted(consistency_step_indices(50, 0.5))
    assert len(half) == 25 and half[:3] == [0, 2, 4]
    quarter = sorted(consistency_step_indices(20, 0.25))
    assert quarter == [0, 4, 8, 12, 16]
    with pytest.raises(ValueError, match="consistency_ratio"):
        consistency_step_indices(10, 1.5)


def test_guided_step_equals_eq4_on_two_ddim_steps():
    # exact while the update is affine in the model output: no x0 clipping / thresholding
    scheduler = ConsistencyGuidanceScheduler.wrap(DDIMScheduler(clip_sample=False), consistency_scale=2.0)
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[3]
    torch.manual_seed(0)
    x, eps, eps_bar = torch.randn(3, 2, 3, 4, 4).unbind(0)
    guided = scheduler.step(eps, t, x, model_output_without_neus=eps_bar).prev_sample
    plain = DDIMScheduler(clip_sample=False)
    plain.set_timesteps(10)
    x_prev = plain.step(eps, t, x).prev_sample
    x_prev_bar = plain.step(eps_bar, t, x).prev_sample
    assert torch.allclose(guided, x_prev + 2.0 * (x_prev - x_prev_bar), atol=1e-5)


def test_without_guidance_the_step_is_the_inner_schedulers():
    scheduler = ConsistencyGuidanceScheduler.wrap(DDIMScheduler())
    plain = DDIMScheduler()
    for s in (scheduler, plain):
        s.set_timesteps(5)
    x, eps = torch.randn(2, 1, 3, 4, 4).unbind(0)
    t = plain.timesteps[1]
    assert torch.equal(scheduler.step(eps, t, x).prev_sample, plain.step(eps, t, x).prev_sample)


def test_eta_from_the_config_or_the_call_reaches_ddim_and_other_schedulers_ignore_it():
    scheduler = ConsistencyGuidanceScheduler.wrap(DDIMScheduler(), eta=1.0)
    plain = DDIMScheduler()
    for s in (scheduler, plain):
        s.set_timesteps(5)
    x, eps = torch.randn(2, 1, 3, 4, 4).unbind(0)
    t = plain.timesteps[1]

    def step(s, **kwargs):
        return s.step(eps, t, x, generator=torch.Generator().manual_seed(0), **kwargs).prev_sample

    assert torch.equal(step(scheduler), step(plain, eta=1.0))  # the config's eta
    assert torch.equal(step(scheduler, eta=0.0), step(plain))  # the call's overrides it
    assert not torch.allclose(step(scheduler), step(plain))
    euler = ConsistencyGuidanceScheduler.wrap(EulerDiscreteScheduler(), eta=1.0)
    euler.set_timesteps(5)
    euler.step(eps, euler.timesteps[0], x)  # Euler's step takes no eta: not passed
    with pytest.raises(ValueError, match="eta"):
        ConsistencyGuidanceScheduler.wrap(DDIMScheduler(), eta=-0.5)
    with pytest.raises(ValueError, match="guidance_scale must be >= 1"):
        ConsistencyGuidanceScheduler.wrap(DDIMScheduler(), guidance_scale=0.5)


def test_save_load_keeps_inner_config_and_guidance(tmp_path):
    scheduler = ConsistencyGuidanceScheduler.wrap(
        DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
        consistency_ratio=0.25, consistency_scale=3.0, eta=1.0, guidance_scale=1.5,
    )
    scheduler.save_pretrained(tmp_path)
    loaded = ConsistencyGuidanceScheduler.from_pretrained(tmp_path)
    assert loaded.config.guidance_scale == 1.5
    assert loaded.config.consistency_ratio == 0.25 and loaded.config.consistency_scale == 3.0
    assert loaded.config.eta == 1.0
    assert isinstance(loaded.inner, DDIMScheduler)
    assert loaded.inner.config.prediction_type == "v_prediction"
    assert loaded.inner.config.beta_schedule == "squaredcos_cap_v2"


@pytest.mark.parametrize("inner", [DPMSolverMultistepScheduler, EulerDiscreteScheduler])
def test_other_inner_schedulers_run_a_loop(inner):
    scheduler = ConsistencyGuidanceScheduler.wrap(inner(), consistency_ratio=0.5)
    scheduler.set_timesteps(6)
    x = torch.randn(2, 3, 4, 4) * scheduler.init_noise_sigma
    steps = scheduler.consistency_steps(6)
    for i, t in enumerate(scheduler.timesteps):
        model_in = scheduler.scale_model_input(x, t)
        eps = 0.1 * model_in
        eps_bar = eps * 0.9 if i in steps else None
        x = scheduler.step(eps, t, x, model_output_without_neus=eps_bar).prev_sample
    assert torch.isfinite(x).all()


def test_unknown_inner_scheduler_raises():
    with pytest.raises(ValueError, match="inner_scheduler_type"):
        ConsistencyGuidanceScheduler(inner_scheduler_type="NotAScheduler")
