"""LatentSparseNeuS: NeuS maths against known answers, eq. 2 gradients, view permutation."""
import pytest
import torch

from diffusers_mv3d.cameras import Cameras, default_cameras
from diffusers_mv3d.models.latent_sparse_neus import (
    LatentSparseNeuS,
    NeuSContext,
    alpha_to_weights,
    positional_encoding,
    sample_pdf,
    sdf_to_alpha,
)


class SphereField(torch.nn.Module):
    """An analytic SDF sphere with a constant colour, plugged in place of the MLPs."""

    def __init__(self, radius, channels=3):
        super().__init__()
        self.radius, self.channels = radius, channels

    def forward(self, points, features, directions, temb):
        sdf = points.norm(dim=-1) - self.radius
        return sdf, torch.zeros(*points.shape[:-1], self.channels)


def tiny_neus(**overrides):
    torch.manual_seed(0)
    config = dict(in_channels=3, feature_channels=8, encoder_channels=8, hidden_dim=16, num_sdf_layers=2,
                  num_color_layers=1, num_frequencies=2, num_coarse_samples=16, num_importance_samples=8,
                  timestep_embedding_dim=8)
    config.update(overrides)
    return LatentSparseNeuS(**config)


def test_weights_match_a_per_ray_loop():
    torch.manual_seed(0)
    alpha = torch.rand(3, 7)
    weights = alpha_to_weights(alpha)
    for r in range(3):
        transmittance = 1.0
        for i in range(7):
            assert weights[r, i].item() == pytest.approx(alpha[r, i].item() * transmittance, rel=1e-4, abs=1e-6)
            transmittance *= 1.0 - alpha[r, i].item()


def test_sdf_to_alpha_is_one_across_a_sharp_surface_and_zero_elsewhere():
    sdf = torch.tensor([[0.3, 0.1, -0.1, -0.3]])
    alpha = sdf_to_alpha(sdf, torch.tensor(1000.0))
    assert alpha[0, 1].item() == pytest.approx(1.0, abs=1e-3)
    assert alpha[0, 0].item() == pytest.approx(0.0, abs=1e-3)


def test_sample_pdf_concentrates_on_the_heavy_bin():
    bins = torch.linspace(0, 1, 11)[None]
    weights = torch.zeros(1, 10)
    weights[0, 6] = 1.0
    samples = sample_pdf(bins, weights, 32, jitter=False)
    assert ((samples >= 0.6 - 1e-4) & (samples <= 0.7 + 1e-4)).float().mean() > 0.95


def test_sphere_depth_and_opacity():
    neus = tiny_neus(num_coarse_samples=64, num_importance_samples=32).eval()
    neus.field = SphereField(radius=0.5)
    with torch.no_grad():
        neus.variance.fill_(0.6)  # inv_s = e^6 ~ 400: a sharp surface
    cameras = Cameras.orbit(20.0, [0.0, 90.0], radius=2.5, height=17)
    views = torch.zeros(1, 2, 3, 17, 17)
    with torch.no_grad():
        out = neus(views, 500, cameras)
    assert out.x0.shape == (1, 2, 3, 17, 17) and out.depth.shape == (1, 2, 17, 17)
    centre = out.depth[0, :, 8, 8]
    assert torch.allclose(centre, torch.full_like(centre, 2.0), atol=1e-2)
    # silhouette of the sphere: pixels whose ray passes within the radius
    origins, directions = cameras.rays()
    closest = (origins + ((-origins * directions).sum(-1, keepdim=True)) * directions).norm(dim=-1)
    inside = (closest < 0.45).reshape(2, 17, 17)
    outside = (closest > 0.55).reshape(2, 17, 17)
    assert (out.opacity[0][inside] > 0.98).all()
    assert (out.opacity[0][outside] < 0.02).all()
    # a black sphere on the learned white background
    assert torch.allclose(out.x0[0, :, :, 8, 8], torch.zeros(2, 3), atol=0.02)
    assert torch.allclose(out.x0[0, 0, :, 0, 0], torch.ones(3), atol=1e-4)


def test_gradients_reach_the_view_encoder_through_projection():
    neus = tiny_neus().train()
    cameras = default_cameras(4, resolution=16)
    views = torch.randn(2, 4, 3, 16, 16)
    out = neus(views, torch.tensor([10, 900]), cameras, query_cameras=cameras.rescale(8, 8))
    out.x0.square().mean().backward()
    grad = neus.encoder.conv_in.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_permuting_views_permutes_the_renders():
    neus = tiny_neus(encoder_downsample=1).eval()
    cameras = default_cameras(4, resolution=8)
    views = torch.randn(1, 4, 3, 8, 8)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        out = neus(views, 300, cameras)
        out_perm = neus(views[:, perm], 300, cameras[perm])
    assert torch.allclose(out_perm.x0, out.x0[:, perm], atol=1e-5)
    assert torch.allclose(out_perm.depth, out.depth[:, perm], atol=1e-5)


def test_ray_chunking_does_not_change_the_render():
    neus = tiny_neus().eval()
    cameras = default_cameras(3, resolution=8)
    views = torch.randn(1, 3, 3, 8, 8)
    with torch.no_grad():
        full = neus(views, 100, cameras).x0
        neus.register_to_config(chunk_size=7)
        chunked = neus(views, 100, cameras).x0
    assert torch.allclose(full, chunked, atol=1e-6)


def test_pixel_subset_render_matches_full_render():
    neus = tiny_neus().eval()
    cameras = default_cameras(2, resolution=8)
    with torch.no_grad():
        context = neus.encode(torch.randn(1, 2, 3, 8, 8), 50, cameras)
        full = neus.render(context, cameras)
        subset = neus.render(context, cameras, pixel_indices=torch.tensor([0, 9, 63]))
    assert torch.allclose(subset.colors, full.colors[:, :, [0, 9, 63]], atol=1e-6)


def test_latent_space_and_extra_query_cameras():
    neus = tiny_neus(in_channels=4, background=0.0).eval()
    cameras = default_cameras(4, resolution=8)
    novel = Cameras.orbit(30.0, [10.0, 100.0, 190.0], height=6)
    with torch.no_grad():
        out = neus(torch.randn(2, 4, 4, 8, 8), 10, cameras, query_cameras=novel)
    assert out.x0.shape == (2, 3, 4, 6, 6)
    assert out.sample_points.shape[:3] == (2, 3, 36)
    assert out.sample_weights.shape == out.sample_points.shape[:-1]


def test_sdf_grid_of_a_sphere_sdf_is_the_distance_to_its_surface():
    neus = tiny_neus().eval()
    neus.field = SphereField(radius=0.5)
    cameras = default_cameras(2, resolution=8)
    with torch.no_grad():
        context = neus.encode(torch.zeros(1, 2, 3, 8, 8), 0, cameras)
    grid = neus.sdf_grid(context, resolution=9)  # x y z order over [-bound, bound]^3
    axis = torch.linspace(-neus.config.bound_radius, neus.config.bound_radius, 9)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
    assert grid.shape == (9, 9, 9)
    assert torch.allclose(grid, points.norm(dim=-1) - 0.5, atol=1e-5)


def test_bad_input_raises():
    neus = tiny_neus()
    with pytest.raises(ValueError, match="views must be"):
        neus(torch.zeros(2, 3, 8, 8), 0, default_cameras(2, 8))
    with pytest.raises(ValueError, match="cameras"):
        neus(torch.zeros(1, 2, 3, 8, 8), 0, default_cameras(3, 8))


def test_field_takes_per_ray_and_per_object_inputs_without_copies_and_matches_one_concatenated_layer():
    torch.manual_seed(0)
    model = LatentSparseNeuS(feature_channels=4, hidden_dim=16, timestep_embedding_dim=8)
    field = model.field
    points, features = torch.randn(2, 5, 7, 3), torch.randn(2, 5, 7, 8)
    directions, temb = torch.randn(2, 5, 1, 3), torch.randn(2, 1, 1, 8)  # one a ray, one an object
    with torch.no_grad():
        sdf, color = field(points, features, directions, temb)
        # the same MLPs applied to the inputs concatenated per sample
        expand = lambda x: x.expand(2, 5, 7, -1)
        trunk_in = torch.cat([positional_encoding(points, field.num_frequencies), features, expand(temb)], -1)
        geometry = field.sdf_trunk(trunk_in)
        expected_sdf = points.norm(dim=-1) - field.init_radius + field.sdf_head(geometry).squeeze(-1)
        expected_color = field.color_mlp(torch.cat([geometry, features, expand(directions), expand(temb)], -1))
    torch.testing.assert_close(sdf, expected_sdf)
    torch.testing.assert_close(color, expected_color)


def test_aggregate_is_the_mean_and_variance_over_the_views_that_see_a_point():
    torch.manual_seed(0)
    model = LatentSparseNeuS(feature_channels=4)
    cameras = default_cameras(3, resolution=8).expand(1)
    features = torch.randn(1, 3, 4, 8, 8)
    context = NeuSContext(features, cameras, torch.zeros(1, 8))
    # seen by all three views, by views 1 and 2, by view 0 alone, by none
    points = torch.tensor([[[0.1, -0.2, 0.05], [1.5, 0.0, 0.0], [-1.2, 0.5, 0.2], [0.0, 0.0, 2.4]]])
    got = model.aggregate(points, context)[0]  # [P, 2F]
    uv, depth = cameras.project(points[:, None])
    for p in range(points.shape[1]):
        seen = []
        for v in range(3):
            u, w = uv[0, v, p]
            if depth[0, v, p] > 1e-4 and 0 <= u <= 8 and 0 <= w <= 8:
                grid = torch.stack([2 * u / 8 - 1, 2 * w / 8 - 1]).view(1, 1, 1, 2)
                seen.append(torch.nn.functional.grid_sample(features[:, v], grid, align_corners=False).flatten())
        assert len(seen) == [3, 2, 1, 0][p]
        if not seen:
            assert torch.equal(got[p], torch.zeros(8))
            continue
        stacked = torch.stack(seen)
        torch.testing.assert_close(got[p, :4], stacked.mean(0), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got[p, 4:], stacked.var(0, unbiased=False), atol=1e-5, rtol=1e-4)


def test_occlusion_aware_aggregate_leaves_out_the_view_that_sees_the_far_side():
    # a sharp sphere of radius 0.5 seen from opposite sides; view 0's features are 1, view 1's are 0
    neus = tiny_neus(feature_channels=2, occlusion_aware=True, num_coarse_samples=64, num_importance_samples=32).eval()
    neus.field = SphereField(radius=0.5)
    with torch.no_grad():
        neus.variance.fill_(0.6)
    cameras = Cameras.orbit(0.0, [0.0, 180.0], radius=2.5, height=16).expand(1)
    features = torch.stack([torch.ones(2, 8, 8), torch.zeros(2, 8, 8)])[None]
    context = NeuSContext(features, cameras, torch.zeros(1, 8))
    context.surface_depth = neus.surface_depth(context)
    assert context.surface_depth.shape == (1, 2, 8, 8)
    centre = context.surface_depth[0, :, 3:5, 3:5]
    torch.testing.assert_close(centre, torch.full_like(centre, 2.0), atol=0.03, rtol=0)
    assert (context.surface_depth[0, :, 0, 0] > 100).all()  # a corner pixel sees no surface
    # on the surface facing view 0; on the surface facing view 1; the centre, which no view sees
    points = torch.tensor([[[0.49, 0.0, 0.0], [-0.49, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    mean = neus.aggregate(points, context)[0, :, 0]
    torch.testing.assert_close(mean, torch.tensor([1.0, 0.0, 0.5]), atol=0.01, rtol=0)
    context.surface_depth = None  # the plain average of eq. 2: both views everywhere
    torch.testing.assert_close(neus.aggregate(points, context)[0, :, 0], torch.full((3,), 0.5))
    # encode computes the surface depth itself, at the feature resolution
    encoded = neus.encode(torch.zeros(1, 2, 3, 16, 16), 0, cameras)
    assert encoded.surface_depth.shape == (1, 2, 8, 8)
    assert tiny_neus().encode(torch.zeros(1, 2, 3, 16, 16), 0, cameras).surface_depth is None
    with pytest.raises(ValueError, match="occlusion_margin"):
        tiny_neus(occlusion_margin=0.0)


def test_view_weights_let_a_clean_view_outweigh_noisy_ones():
    cameras = Cameras.orbit(0.0, [0.0, 90.0, 180.0], radius=2.5, height=16).expand(1)
    timesteps = torch.tensor([[0, 600, 600]])
    neus = tiny_neus(view_weight_timescale=200.0)
    context = neus.encode(torch.zeros(1, 3, 3, 16, 16), timesteps, cameras)
    torch.testing.assert_close(context.view_weights, torch.exp(torch.tensor([[0.0, -3.0, -3.0]])))
    # features 1 (view 0) and 0 (views 1, 2) at a point all three see: the weighted mean and variance
    context.features = torch.stack([torch.ones(8, 8, 8), torch.zeros(8, 8, 8), torch.zeros(8, 8, 8)])[None]
    got = neus.aggregate(torch.zeros(1, 1, 3), context)[0, 0]
    share = 1.0 / (1.0 + 2.0 * torch.exp(torch.tensor(-3.0)))
    torch.testing.assert_close(got[:8], share.expand(8))
    torch.testing.assert_close(got[8:], (share - share**2).expand(8))
    # one timestep for every view, or no timescale: the plain mean of eq. 2
    assert torch.equal(neus.encode(torch.zeros(1, 3, 3, 16, 16), 600, cameras).view_weights, torch.ones(1, 3))
    assert tiny_neus().encode(torch.zeros(1, 3, 3, 16, 16), timesteps, cameras).view_weights is None
    with pytest.raises(ValueError, match="view_weight_timescale"):
        tiny_neus(view_weight_timescale=-1.0)
