"""The embree renderer: known answers, multi-view depth consistency, user meshes."""
import numpy as np
import pytest
import torch
import trimesh

from diffusers_mv3d.cameras import Cameras, default_cameras
from diffusers_mv3d.data import generate_object, load_mesh, render_views
from diffusers_mv3d.data.render import AMBIENT, DEFAULT_GREY, LIGHT_CAMERA, camera_rays, has_embree

TOLERANCE = 0.02  # 1% of the cube [-1, 1]^3


def bilinear(image: np.ndarray, mask: np.ndarray, normal: np.ndarray, uv: np.ndarray):
    """Sample ``image [H, W]`` bilinearly at pixel coordinates ``uv [N, 2]`` (centres at +0.5).

    Returns the values and whether they are exact enough to compare: all four neighbours inside
    the image, on the surface, and on one plane (equal normals), so no edge is interpolated across.
    """
    h, w = image.shape
    x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < w) & (y0 + 1 < h)
    x0, y0 = np.clip(x0, 0, w - 2), np.clip(y0, 0, h - 2)
    fx, fy = x - x0, y - y0
    corners = [(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)]
    values = np.stack([image[c] for c in corners])
    on_surface = np.stack([mask[c] for c in corners]).all(axis=0)
    one_plane = np.stack([(normal[c] * normal[corners[0]]).sum(-1) > 0.9999 for c in corners]).all(axis=0)
    weights = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    return (weights * values).sum(axis=0), inside & on_surface & one_plane


def reproject(out, cameras, i, j):
    """View i's surface points re-projected into view j: (their depth in view j, view j's depth map
    sampled there, whether that sample is comparable, the points)."""
    rows, cols = np.nonzero(out.mask[i])
    uv = np.stack([cols + 0.5, rows + 0.5], axis=1)
    points = cameras[i].unproject(torch.tensor(uv, dtype=torch.float32)[None], torch.tensor(out.depth[i][rows, cols])[None])
    uv_j, depth_j = cameras[j].project(points)
    sampled, valid = bilinear(out.depth[j], out.mask[j], out.normal[j], uv_j[0].numpy())
    return depth_j[0].numpy(), sampled, valid, points[0].numpy()


def test_embree_is_used():
    assert has_embree(trimesh.creation.box())


def test_camera_rays_match_cameras_rays():
    cameras = Cameras.orbit([10, -20, 40], [0, 100, 230], height=6, width=9)
    origins, directions, view = camera_rays(cameras, cameras.pixel_centers().reshape(-1, 2).numpy())
    reference_o, reference_d = cameras.rays()
    assert np.allclose(origins, reference_o.reshape(-1, 3).numpy(), atol=1e-5)
    assert np.allclose(directions, reference_d.reshape(-1, 3).numpy(), atol=1e-5)
    assert list(view) == [0] * 54 + [1] * 54 + [2] * 54


def test_known_answers_for_a_box():
    """Camera on +x at 2.5 facing a unit box: centre depth 2.0, normal +x, Lambert colour, white background."""
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    box.visual.face_colors = [200, 100, 50, 255]
    cameras = Cameras.orbit(0.0, [0.0], radius=2.5, height=33)
    out = render_views(box, cameras)
    assert out.depth[0, 16, 16] == pytest.approx(2.0, abs=1e-5)
    assert np.allclose(out.normal[0, 16, 16], [1, 0, 0], atol=1e-6)
    shade = AMBIENT + (1 - AMBIENT) * -LIGHT_CAMERA[2]  # the face normal is -z in camera space
    assert np.allclose(out.rgba[0, 16, 16], [200 / 255 * shade, 100 / 255 * shade, 50 / 255 * shade, 1.0], atol=1e-5)
    assert out.mask[0].sum() > 0 and not out.mask[0, 0, 0]
    assert np.allclose(out.rgba[0, 0, 0], [1, 1, 1, 0]) and out.depth[0, 0, 0] == 0
    # the box's half-width 0.5 at depth 2.0 spans 0.5 / 2 * f pixels either side of the centre
    focal = float(cameras.intrinsics[0, 0, 0])
    assert abs(out.mask[0, 16].sum() - 2 * 0.25 * focal) <= 1.0
    transparent = render_views(box, cameras, background="transparent")
    assert np.allclose(transparent.rgba[0, 0, 0], 0) and np.allclose(transparent.rgba[0, 16, 16], out.rgba[0, 16, 16])


def test_light_comes_from_the_upper_left_front():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.8)
    for cameras in (Cameras.orbit(20.0, [0.0], height=48), Cameras.orbit(-10.0, [200.0], height=48)):
        out = render_views(sphere, cameras)
        red, mask = out.rgba[0, :, :, 0], out.mask[0]
        row, col = np.unravel_index(np.argmax(np.where(mask, red, 0)), red.shape)
        assert row < 24 and col < 24  # brightest spot upper left, the same for every camera
        assert red[mask].min() >= DEFAULT_GREY[0] * AMBIENT - 1e-6


def test_antialias_gives_fractional_alpha_and_keeps_depth():
    obj = generate_object("table", 3)
    cameras = default_cameras(2, 24)
    sharp, smooth = render_views(obj.mesh, cameras), render_views(obj.mesh, cameras, antialias=3)
    assert np.array_equal(sharp.depth, smooth.depth) and np.array_equal(sharp.mask, smooth.mask)
    assert set(np.unique(sharp.rgba[..., 3])) <= {0.0, 1.0}
    edge = (smooth.rgba[..., 3] > 0) & (smooth.rgba[..., 3] < 1)
    assert edge.sum() > 10
    with pytest.raises(ValueError, match="antialias"):
        render_views(obj.mesh, cameras, antialias=0)
    with pytest.raises(ValueError, match="background"):
        render_views(obj.mesh, cameras, background="black")


def test_depth_reprojects_between_views_on_convex_meshes():
    """Back-project view i's depth, re-project into view j: equal to view j's depth wherever both see the surface."""
    box = trimesh.creation.box((1.2, 0.8, 0.6))
    box.apply_transform(trimesh.transformations.rotation_matrix(0.5, [0.3, 0.4, 1.0]))
    meshes = [box, trimesh.creation.icosphere(subdivisions=2, radius=0.7)]
    cameras = Cameras.orbit([20, 35, -10, 50], [0, 70, 150, 250], height=96)
    for mesh in meshes:
        out = render_views(mesh, cameras)
        checked = 0
        for i in range(4):
            normals = out.normal[i][out.mask[i]]
            for j in range(4):
                if i == j:
                    continue
                projected, sampled, valid, points = reproject(out, cameras, i, j)
                to_camera = cameras.centers[j].numpy() - points
                to_camera /= np.linalg.norm(to_camera, axis=1, keepdims=True)
                seen = valid & ((normals * to_camera).sum(axis=1) > 0.2)  # convex: front-facing = visible
                assert np.all(np.abs(projected[seen] - sampled[seen]) < TOLERANCE)
                checked += seen.sum()
        assert checked > 1000


def test_depth_reprojection_on_a_chair_agrees_or_is_occluded():
    """On a concave object a re-projected point is on view j's surface or hidden behind it, except on
    parts thinner than a pixel, which view j's pixel centres can miss."""
    mesh = generate_object("chair", 4).mesh
    cameras = Cameras.orbit([20, 30, 5, 25], [0, 50, 100, 200], height=96)
    out = render_views(mesh, cameras)
    for i, j in [(0, 1), (1, 2), (2, 0), (1, 3), (3, 0)]:
        projected, sampled, valid, _ = reproject(out, cameras, i, j)
        assert (projected[valid] > sampled[valid] - TOLERANCE).mean() > 0.98
        if (i, j) == (0, 1):  # nearby views see mostly the same surface
            assert (np.abs(projected[valid] - sampled[valid]) < TOLERANCE).mean() > 0.8


def test_user_meshes_are_normalised_and_rendered(tmp_path):
    box = trimesh.creation.box((10.0, 2.0, 2.0))
    box.apply_translation((5.0, 5.0, 5.0))
    box.export(tmp_path / "box.obj")
    red = trimesh.creation.icosphere(subdivisions=2, radius=3.0)
    red.visual.vertex_colors = [255, 0, 0, 255]
    red.export(tmp_path / "red.ply")
    cameras = default_cameras(4, 32)
    for name in ("box.obj", "red.ply"):
        mesh = load_mesh(str(tmp_path / name))
        assert np.allclose(mesh.bounds.mean(axis=0), 0, atol=1e-6)
        assert np.linalg.norm(mesh.vertices, axis=1).max() == pytest.approx(0.9)
        out = render_views(mesh, cameras)
        assert out.mask.sum(axis=(1, 2)).min() > 20
        assert not out.mask[:, 0, :].any() and not out.mask[:, :, 0].any()  # whole object in view
    rgb = out.rgba[out.mask][:, :3]
    assert (rgb[:, 0] > 0.35).all() and (rgb[:, 1:] < 0.01).all()  # vertex colours
    with pytest.raises(ValueError, match="path"):
        (tmp_path / "notes.txt").write_text("not a mesh")
        load_mesh(str(tmp_path / "notes.txt"))
    (tmp_path / "bad.obj").write_text("this is not a mesh\n")
    with pytest.raises(ValueError, match="bad.obj"):
        load_mesh(str(tmp_path / "bad.obj"))


def test_glb_round_trip_renders_the_same(tmp_path):
    from diffusers_mv3d.mesh import export_mesh

    obj = generate_object("car", 2)
    export_mesh(obj.mesh, tmp_path / "car.glb")
    cameras = default_cameras(4, 32)
    original, reloaded = render_views(obj.mesh, cameras), render_views(load_mesh(str(tmp_path / "car.glb")), cameras)
    assert np.abs(original.rgba - reloaded.rgba).mean() < 0.01
    assert np.abs(original.depth - reloaded.depth).max() < 1e-4


def _column_along(axis: int) -> trimesh.Trimesh:
    """A box 0.2 x 0.2 wide and 1.6 long along ``axis`` (0 x, 1 y, 2 z)."""
    extents = [0.2, 0.2, 0.2]
    extents[axis] = 1.6
    return trimesh.creation.box(extents=extents)


def test_gltf_files_are_stood_upright_and_other_formats_take_an_up_axis(tmp_path):
    _column_along(1).export(tmp_path / "column.glb")  # +y up, as glTF files are
    upright = load_mesh(str(tmp_path / "column.glb"))
    assert np.argmax(upright.extents) == 2  # long along the world's +z
    as_stored = load_mesh(str(tmp_path / "column.glb"), up_axis="+z")
    assert np.argmax(as_stored.extents) == 1
    _column_along(0).export(tmp_path / "lying.obj")
    assert np.argmax(load_mesh(str(tmp_path / "lying.obj")).extents) == 0  # .obj: no convention, kept
    assert np.argmax(load_mesh(str(tmp_path / "lying.obj"), up_axis="-x").extents) == 2
    # which end goes up: a cone whose tip is at +y in the file has its tip at +z in the world
    cone = trimesh.creation.cone(radius=0.3, height=1.0)  # tip on +z
    cone.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # tip now on +y
    assert cone.vertices[:, 1].max() > 0.9
    cone.export(tmp_path / "cone.glb")
    loaded = load_mesh(str(tmp_path / "cone.glb"))
    tip = loaded.vertices[np.argmax(np.linalg.norm(loaded.vertices - loaded.vertices.mean(0), axis=1))]
    assert tip[2] > 0.5 and abs(tip[0]) < 0.1 and abs(tip[1]) < 0.1
    with pytest.raises(ValueError, match="--up-axis"):
        load_mesh(str(tmp_path / "cone.glb"), up_axis="up")
