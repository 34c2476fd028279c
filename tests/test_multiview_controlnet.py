"""MultiViewControlNetModel on tiny pixel-space (IF-like) and latent-space (SD-like) UNets."""
import pytest
import torch

from diffusers_mv3d.cameras import default_cameras
from diffusers_mv3d.models.multiview_controlnet import MultiViewControlNetModel
from dummies import TEXT_DIM, tiny_controlnet, tiny_neus, tiny_unet

VIEWS, SIZE = 4, 16


def branch_inputs(channels, batch=1):
    torch.manual_seed(1)
    cameras = default_cameras(VIEWS, resolution=SIZE)
    views = torch.randn(batch, VIEWS, channels, SIZE, SIZE)
    text = torch.randn(batch, 5, TEXT_DIM)
    timestep = torch.tensor([[500] * VIEWS] * batch)
    return views, timestep, text, cameras


def run_branch(controlnet, neus, views, timestep, text, cameras):
    render = neus(views, timestep, cameras)
    return controlnet(views, timestep, text, cameras, render.x0, render.sample_points, render.sample_weights)


def unet_output(unet, views, timestep, text, residuals=None):
    kwargs = {}
    if residuals is not None:
        kwargs = dict(down_block_additional_residuals=residuals.down_block_res_samples,
                      mid_block_additional_residual=residuals.mid_block_res_sample)
    return unet(views.flatten(0, 1), timestep.flatten(), text.repeat_interleave(VIEWS, 0), **kwargs).sample


@pytest.mark.parametrize("channels", [3, 4])
def test_fresh_branch_leaves_the_frozen_unet_output_exactly_unchanged(channels):
    unet, neus = tiny_unet(channels), tiny_neus(channels).eval()
    controlnet = tiny_controlnet(unet)
    views, timestep, text, cameras = branch_inputs(channels)
    with torch.no_grad():
        residuals = run_branch(controlnet, neus, views, timestep, text, cameras)
        assert all(r.abs().max() == 0 for r in residuals.down_block_res_samples)
        assert torch.equal(unet_output(unet, views, timestep, text, residuals), unet_output(unet, views, timestep, text))


@pytest.mark.parametrize("channels", [3, 4])
def test_one_step_makes_residuals_nonzero_and_frozen_unet_gets_no_gradient(channels):
    unet, neus = tiny_unet(channels), tiny_neus(channels).train()
    unet.requires_grad_(False)
    controlnet = tiny_controlnet(unet).train()
    optimizer = torch.optim.AdamW(list(controlnet.parameters()) + list(neus.parameters()), lr=1e-3)
    views, timestep, text, cameras = branch_inputs(channels, batch=2)
    residuals = run_branch(controlnet, neus, views, timestep, text, cameras)
    loss = (unet_output(unet, views, timestep, text, residuals) - views.flatten(0, 1)).square().mean()
    loss.backward()
    assert all(p.grad is None for p in unet.parameters())
    assert controlnet.encoder.controlnet_mid_block.weight.grad.abs().sum() > 0
    optimizer.step()
    with torch.no_grad():
        residuals = run_branch(controlnet, neus, views, timestep, text, cameras)
    assert all(r.abs().max() > 0 for r in residuals.down_block_res_samples)
    assert residuals.mid_block_res_sample.abs().max() > 0


def test_encoder_is_copied_from_the_unet():
    unet = tiny_unet(3)
    controlnet = tiny_controlnet(unet)
    assert torch.equal(controlnet.encoder.conv_in.weight, unet.conv_in.weight)
    for a, b in zip(controlnet.encoder.down_blocks.parameters(), unet.down_blocks.parameters()):
        assert torch.equal(a, b)
    assert set(controlnet.geometry_attention.keys()) == {"0", "1"}


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    unet, neus = tiny_unet(3), tiny_neus(3).eval()
    controlnet = tiny_controlnet(unet)
    for p in controlnet.parameters():  # make the zero-initialised parts non-trivial
        torch.nn.init.normal_(p, std=0.02)
    views, timestep, text, cameras = branch_inputs(3)
    controlnet.save_pretrained(tmp_path / "controlnet")
    assert (tmp_path / "controlnet" / "diffusion_pytorch_model.safetensors").exists()
    loaded = MultiViewControlNetModel.from_pretrained(tmp_path / "controlnet")
    with torch.no_grad():
        a = run_branch(controlnet, neus, views, timestep, text, cameras)
        b = run_branch(loaded, neus, views, timestep, text, cameras)
    for x, y in zip(a.down_block_res_samples + (a.mid_block_res_sample,), b.down_block_res_samples + (b.mid_block_res_sample,)):
        assert torch.equal(x, y)
    assert loaded.config.geometry_attention_levels == [0, 1] or loaded.config.geometry_attention_levels == (0, 1)


def test_without_neus_each_view_is_processed_alone():
    unet = tiny_unet(3)
    controlnet = tiny_controlnet(unet)
    for p in controlnet.parameters():
        torch.nn.init.normal_(p, std=0.02)
    views, timestep, text, cameras = branch_inputs(3)
    changed = views.clone()
    changed[:, 1:] = torch.randn_like(changed[:, 1:])
    with torch.no_grad():
        a = controlnet(views, timestep, text).mid_block_res_sample
        b = controlnet(changed, timestep, text).mid_block_res_sample
    assert torch.equal(a[0], b[0])  # view 0 does not see the other views
    assert not torch.equal(a[1], b[1])


def test_bad_arguments_raise():
    unet = tiny_unet(3)
    with pytest.raises(ValueError, match="geometry_attention_levels"):
        MultiViewControlNetModel.from_unet(unet, geometry_attention_levels=(5,))
    controlnet = tiny_controlnet(unet)
    views, timestep, text, cameras = branch_inputs(3)
    with pytest.raises(ValueError, match="sample must be"):
        controlnet(views[0], timestep, text)
    with pytest.raises(ValueError, match="sample_points needs"):
        controlnet(views, timestep, text, sample_points=torch.zeros(1, VIEWS, SIZE * SIZE, 4, 3))
