"""Pin the camera convention of diffusers_mv3d.cameras against naive reference formulas."""
import math

import pytest
import torch

from diffusers_mv3d.cameras import Cameras, default_cameras


def naive_project(w2c, k, point):
    """Reference pinhole projection of one point with one camera, written out by hand."""
    x, y, z = (w2c[:3, :3] @ point + w2c[:3, 3]).tolist()
    return float(k[0, 0] * x / z + k[0, 2]), float(k[1, 1] * y / z + k[1, 2]), z


def test_orbit_cameras_look_at_origin():
    cams = Cameras.orbit(20.0, [0, 45, 90, 200], radius=2.5, height=32)
    uv, depth = cams.project(torch.zeros(1, 3).expand(4, 1, 3))
    assert torch.allclose(uv, torch.full_like(uv, 16.0), atol=1e-4)
    assert torch.allclose(depth, torch.full_like(depth, 2.5), atol=1e-5)
    assert torch.allclose(cams.centers.norm(dim=-1), torch.full((4,), 2.5))
    # +z world is "up" in the image: a point above the origin has smaller v
    uv_up, _ = cams.project(torch.tensor([[0.0, 0.0, 0.5]]).expand(4, 1, 3))
    assert (uv_up[..., 1] < 16.0).all()


def test_orbit_azimuth_zero_sits_on_positive_x_and_right_is_plus_y():
    cams = Cameras.orbit(0.0, [0.0], radius=2.0, height=32)
    assert torch.allclose(cams.centers[0], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6)
    uv, _ = cams.project(torch.tensor([[[0.0, 0.5, 0.0]]]))
    assert uv[0, 0, 0] > 16.0  # +y world appears on the right of a camera on +x


def test_project_matches_naive_reference():
    torch.manual_seed(0)
    cams = Cameras.orbit([10, -30, 45], [0, 120, 250], height=24, width=40)
    points = torch.rand(3, 5, 3) * 2 - 1
    uv, depth = cams.project(points)
    for i in range(3):
        for n in range(5):
            u, v, z = naive_project(cams.world_to_camera[i], cams.intrinsics[i], points[i, n])
            assert uv[i, n, 0].item() == pytest.approx(u, abs=1e-4)
            assert uv[i, n, 1].item() == pytest.approx(v, abs=1e-4)
            assert depth[i, n].item() == pytest.approx(z, abs=1e-5)


def test_project_then_unproject_along_ray_gives_point_back():
    torch.manual_seed(1)
    cams = default_cameras(8, resolution=32)
    points = torch.rand(8, 100, 3) * 2 - 1
    uv, depth = cams.project(points)
    assert torch.allclose(cams.unproject(uv, depth), points, atol=1e-4)
    origins, directions = cams.rays(uv)
    distance = depth / (directions * cams.forward_axes[:, None]).sum(-1)
    assert torch.allclose(origins + distance[..., None] * directions, points, atol=1e-4)


def test_rays_are_unit_and_centre_ray_is_optical_axis():
    cams = Cameras.orbit(20.0, [30.0], height=9)
    origins, directions = cams.rays()
    assert directions.shape == (1, 81, 3)
    assert torch.allclose(directions.norm(dim=-1), torch.ones(1, 81))
    assert torch.allclose(directions[0, 40], cams.forward_axes[0], atol=1e-6)  # centre pixel (4, 4)
    assert torch.allclose(origins[0, 0], cams.centers[0])


def test_rescale_keeps_relative_pixel_positions():
    cams = default_cameras(4, resolution=64)
    point = torch.tensor([[0.3, -0.2, 0.4]]).expand(4, 1, 3)
    uv64, _ = cams.project(point)
    small = cams.rescale(16, 32)
    uv_small, _ = small.project(point)
    assert (small.height, small.width) == (16, 32)
    assert torch.allclose(uv_small, uv64 * torch.tensor([0.5, 0.25]), atol=1e-4)


@pytest.mark.parametrize("convention", ["opencv", "opengl", "blender"])
def test_cam2world_conversion_round_trips(convention):
    cams = default_cameras(8, resolution=32)
    c2w = cams.to_cam2world(convention)
    back = Cameras.from_cam2world(c2w, cams.intrinsics, 32, 32, convention=convention)
    assert torch.allclose(back.world_to_camera, cams.world_to_camera, atol=1e-5)


def test_opengl_camera_looks_down_negative_z():
    cams = default_cameras(3, resolution=32)
    c2w_gl = cams.to_cam2world("opengl")
    forward_gl = -c2w_gl[:, :3, 2]
    assert torch.allclose(forward_gl, cams.forward_axes, atol=1e-6)
    up_gl = c2w_gl[:, :3, 1]
    assert (up_gl[:, 2] > 0).all()  # OpenGL +y points up-ish in a +z-up world


def test_zero123_round_trip_and_blender_axes():
    cams = default_cameras(8, resolution=32)
    rt = cams.to_zero123()
    assert rt.shape == (8, 3, 4)
    back = Cameras.from_zero123(rt, cams.intrinsics, 32, 32)
    assert torch.allclose(back.world_to_camera, cams.world_to_camera, atol=1e-6)
    # zero123's RT is world-to-Blender-camera: the origin lies on the camera's -z axis
    origin_in_blender_cam = rt[:, :, 3]
    assert (origin_in_blender_cam[:, 2] < 0).all()


def test_dict_round_trip_and_elevation_azimuth():
    cams = Cameras.orbit(20.0, [0, 90, 180, 270], height=32)
    data = cams.to_dict()
    assert [round(v["azimuth"]) for v in data["views"]] == [0, 90, 180, 270]
    assert all(math.isclose(v["elevation"], 20.0, abs_tol=1e-4) for v in data["views"])
    back = Cameras.from_dict(data)
    assert torch.allclose(back.world_to_camera, cams.world_to_camera)
    assert (back.height, back.width) == (32, 32)


def test_indexing_cat_expand_and_to():
    cams = default_cameras(8, resolution=32)
    assert len(cams[2]) == 1 and len(cams[1:4]) == 3 and len(cams[[0, 5]]) == 2
    joined = Cameras.cat([cams[:3], cams[3:]])
    assert torch.equal(joined.world_to_camera, cams.world_to_camera)
    assert cams.expand(2).batch_shape == (2, 8)
    assert cams.to(torch.float64).intrinsics.dtype == torch.float64


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="world_to_camera"):
        Cameras(torch.eye(3)[None], torch.eye(3)[None], 8, 8)
    with pytest.raises(ValueError, match="convention"):
        Cameras.from_cam2world(torch.eye(4)[None], torch.eye(3), 8, 8, convention="unity")
    with pytest.raises(ValueError, match="num_views"):
        default_cameras(0)
    with pytest.raises(ValueError, match="same image size|one image size"):
        Cameras.cat([default_cameras(2, 16), default_cameras(2, 32)])
