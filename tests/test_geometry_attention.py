"""GeometryAwareAttention: keys only where the frustum's samples project, identity at init."""
import torch

from diffusers_mv3d.cameras import default_cameras
from diffusers_mv3d.models.geometry_attention import GeometryAwareAttention, frustum_samples


def sphere_samples(cameras, resolution, samples=6):
    """Points along each ray around a sphere of radius 0.5, weight peaking at the surface."""
    origins, directions = cameras.rays()  # [V, N, 3]
    t = torch.linspace(1.8, 2.4, samples)
    points = origins[..., None, :] + t[:, None] * directions[..., None, :]  # [V, N, S, 3]
    weights = torch.exp(-((points.norm(dim=-1) - 0.5) ** 2) / 0.01)
    return points[None], weights[None]


def attention_with_random_output(channels=8):
    torch.manual_seed(0)
    attention = GeometryAwareAttention(channels, num_heads=2, neighbourhood=3, samples_per_ray=2)
    torch.nn.init.normal_(attention.to_out.weight)
    return attention


def footprint(attention, cameras, points, weights, query_view, key_view, size, min_weight=-1.0):
    """Pixels of key_view that bilinear interpolation at the projected frustum samples of query_view
    (of NeuS weight above min_weight) reads."""
    pts, w, inside = frustum_samples(points, weights, (size, size), (size, size), attention.neighbourhood,
                                     attention.samples_per_ray)
    keep = inside[0, query_view] & (w[0, query_view] > min_weight)
    uv, depth = cameras[key_view].project(pts[0, query_view][keep].reshape(1, -1, 3))
    hit = torch.zeros(size, size, dtype=torch.bool)
    base = torch.floor(uv[0] - 0.5).long()
    for du in (0, 1):
        for dv in (0, 1):
            u, v = base[:, 0] + du, base[:, 1] + dv
            ok = (u >= 0) & (u < size) & (v >= 0) & (v < size) & (depth[0] > 0)
            hit[v[ok], u[ok]] = True
    return hit


def test_starts_as_identity():
    size = 8
    cameras = default_cameras(4, resolution=size)
    points, weights = sphere_samples(cameras, size)
    attention = GeometryAwareAttention(8)
    hidden = torch.randn(1, 4, 8, size, size)
    out = attention(hidden, cameras.expand(1), points, weights, (size, size))
    assert torch.equal(out, hidden)


def test_only_pixels_hit_by_the_frustum_samples_change_the_output():
    size = 8
    cameras = default_cameras(4, resolution=size)
    points, weights = sphere_samples(cameras, size)
    attention = attention_with_random_output()
    hidden = torch.randn(1, 4, 8, size, size)
    with torch.no_grad():
        base = attention(hidden, cameras.expand(1), points, weights, (size, size))
    query_view, key_view = 0, 2
    hit = footprint(attention, cameras, points, weights, query_view, key_view, size)
    strongly_hit = footprint(attention, cameras, points, weights, query_view, key_view, size, min_weight=0.5)
    assert strongly_hit.any() and (~hit).any()
    missed_v, missed_u = torch.nonzero(~hit)[0]
    hit_v, hit_u = torch.nonzero(strongly_hit)[0]

    changed_miss = hidden.clone()
    changed_miss[0, key_view, :, missed_v, missed_u] += 5.0 * torch.randn(8)
    changed_hit = hidden.clone()
    changed_hit[0, key_view, :, hit_v, hit_u] += 5.0 * torch.randn(8)
    with torch.no_grad():
        out_miss = attention(changed_miss, cameras.expand(1), points, weights, (size, size))
        out_hit = attention(changed_hit, cameras.expand(1), points, weights, (size, size))
    assert torch.equal(out_miss[0, query_view], base[0, query_view])
    assert not torch.allclose(out_hit[0, query_view], base[0, query_view])


def test_own_view_is_never_a_key_and_weights_gate_attention():
    size = 8
    cameras = default_cameras(2, resolution=size)
    points, weights = sphere_samples(cameras, size)
    attention = attention_with_random_output()
    hidden = torch.randn(1, 2, 8, size, size)
    with torch.no_grad():
        alone = attention(hidden[:, :1], cameras[:1].expand(1), points[:, :1], weights[:, :1], (size, size))
        paired = attention(hidden, cameras.expand(1), points, weights, (size, size))
        zero = attention(hidden, cameras.expand(1), points, torch.zeros_like(weights), (size, size))
    assert torch.equal(alone, hidden[:, :1])  # a single view has no other view to attend to
    assert not torch.allclose(paired, hidden)
    assert torch.equal(zero, hidden)  # NeuS weights of zero switch the pairwise condition off


def test_feature_resolution_may_differ_from_ray_resolution():
    cameras = default_cameras(3, resolution=16)
    points, weights = sphere_samples(cameras, 16)
    attention = attention_with_random_output()
    out = attention(torch.randn(2, 3, 8, 4, 4), cameras.expand(2), points.expand(2, -1, -1, -1, -1),
                    weights.expand(2, -1, -1, -1), (16, 16))
    assert out.shape == (2, 3, 8, 4, 4) and torch.isfinite(out).all()


def reference_attention(attention, hidden, cameras, points, weights, ray_resolution):
    """The layer's formula written out directly: keys and values projected first, then interpolated
    (the layer itself interpolates the normalised features and folds the projections around the sum)."""
    batch, views, channels, h, w = hidden.shape
    pts, point_weights, inside = frustum_samples(points, weights, ray_resolution, (h, w), attention.neighbourhood,
                                                 attention.samples_per_ray)
    m, heads = pts.shape[3], attention.num_heads
    d = channels // heads
    x = attention.norm(hidden.permute(0, 1, 3, 4, 2))
    query = attention.to_q(x).reshape(batch, views, h * w, heads, d)
    key_value = torch.cat([attention.to_k(x), attention.to_v(x)], -1).permute(0, 1, 4, 2, 3)
    uv, depth = cameras.rescale(h, w).project(pts.reshape(batch, 1, -1, 3))
    grid = 2.0 * uv / torch.tensor([w, h]) - 1.0
    valid = (depth > 1e-4) & (grid.abs() <= 1.0).all(-1)
    sampled = torch.nn.functional.grid_sample(key_value.flatten(0, 1), grid.flatten(0, 1)[:, :, None], align_corners=False)
    sampled = sampled.reshape(batch, views, 2, heads, d, views, h * w, m)
    out = torch.zeros(batch, views, h * w, heads, d)
    for b in range(batch):
        for q in range(views):
            for p in range(h * w):
                for head in range(heads):
                    keep = [(k, j) for k in range(views) for j in range(m)
                            if k != q and valid[b, k, (q * h * w + p) * m + j] and inside[b, q, p, j]]
                    if not keep:
                        continue
                    keys = torch.stack([sampled[b, k, 0, head, :, q, p, j] for k, j in keep])
                    values = torch.stack([sampled[b, k, 1, head, :, q, p, j] for k, j in keep])
                    a = torch.softmax(keys @ query[b, q, p, head] / d**0.5, 0)
                    a = a * torch.stack([point_weights[b, q, p, j] for _, j in keep])
                    out[b, q, p, head] = a @ values
    out = out.reshape(batch, views, h, w, channels)
    return hidden + attention.to_out(out).permute(0, 1, 4, 2, 3)


def test_matches_the_formula_with_projected_keys_and_values():
    size = 6
    cameras = default_cameras(3, resolution=size)
    points, weights = sphere_samples(cameras, size)
    attention = attention_with_random_output()
    for layer in (attention.to_k, attention.to_v, attention.to_q):  # biases matter at the image border
        torch.nn.init.normal_(layer.bias)
    hidden = torch.randn(1, 3, 8, size, size)
    with torch.no_grad():
        got = attention(hidden, cameras.expand(1), points, weights, (size, size))
        expected = reference_attention(attention, hidden, cameras.expand(1), points, weights, (size, size))
    assert not torch.allclose(got, hidden)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
