"""mesh.py (§3.5): SDF -> mesh, vertex colours from views with occlusion, export, turntable."""
import os

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
import trimesh

from diffusers_mv3d.cameras import Cameras, default_cameras
from diffusers_mv3d.mesh import (
    CARVE_CONTOUR,
    carve_to_silhouettes,
    color_vertices,
    export_mesh,
    images_to_array,
    mesh_from_neus,
    save_turntable_gif,
    turntable_frames,
    vertex_visibility,
    visual_hull_mesh,
)
from diffusers_mv3d.models.latent_sparse_neus import LatentSparseNeuS

RED, GREEN, BLUE = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)


class SphereField(torch.nn.Module):
    """An analytic SDF sphere with a constant colour, plugged in place of the MLPs."""

    def __init__(self, radius, channels=3):
        super().__init__()
        self.radius, self.channels = radius, channels

    def forward(self, points, features, directions, temb):
        return points.norm(dim=-1) - self.radius, torch.zeros(*points.shape[:-1], self.channels)


def sphere_neus(radius=0.5):
    torch.manual_seed(0)
    neus = LatentSparseNeuS(in_channels=3, feature_channels=8, encoder_channels=8, hidden_dim=16, num_sdf_layers=2,
                            num_color_layers=1, num_frequencies=2, timestep_embedding_dim=8).eval()
    neus.field = SphereField(radius)
    cameras = default_cameras(2, resolution=8)
    with torch.no_grad():
        context = neus.encode(torch.zeros(1, 2, 3, 8, 8), 0, cameras)
    return neus, context


@pytest.fixture(scope="module")
def sphere():
    neus, context = sphere_neus()
    return mesh_from_neus(neus, context, resolution=48)


def constant_views(colours, size=16):
    """``[V, 3, H, W]`` views, view v filled with ``colours[v]``."""
    return torch.tensor(colours, dtype=torch.float32)[:, :, None, None].expand(-1, -1, size, size).clone()


def rgb(mesh):
    return mesh.visual.vertex_colors[:, :3].astype(np.int64)


def test_mesh_from_neus_is_the_sphere(sphere):
    radii = np.linalg.norm(sphere.vertices, axis=-1)
    assert len(sphere.faces) > 500
    np.testing.assert_allclose(radii, 0.5, atol=0.02)
    assert sphere.is_watertight and sphere.volume > 0


def test_mesh_from_neus_meshes_the_level_it_is_given():
    neus, context = sphere_neus()
    smaller = mesh_from_neus(neus, context, resolution=48, level=-0.2)  # |x| - 0.5 = -0.2
    np.testing.assert_allclose(np.linalg.norm(smaller.vertices, axis=-1), 0.3, atol=0.02)
    with pytest.raises(ValueError, match="does not cross 2.0"):  # beyond the SDF's range in the bounds
        mesh_from_neus(neus, context, resolution=16, level=2.0)
    neus.register_to_config(mesh_level=-0.2)  # a saved level is the default one
    np.testing.assert_allclose(np.linalg.norm(mesh_from_neus(neus, context, resolution=48).vertices, axis=-1), 0.3,
                               atol=0.02)
    assert np.allclose(np.linalg.norm(mesh_from_neus(neus, context, resolution=48, level=0.0).vertices, axis=-1), 0.5,
                       atol=0.02)


def test_mesh_from_neus_rejects_a_bad_object_index():
    neus, context = sphere_neus()
    with pytest.raises(ValueError, match="object_index"):
        mesh_from_neus(neus, context, resolution=16, object_index=1)


def test_images_to_array_accepts_pil_pt_and_np():
    pt = torch.rand(2, 3, 5, 7)
    np_form = pt.permute(0, 2, 3, 1).numpy()
    pil = [PIL.Image.fromarray((image * 255).round().astype(np.uint8)) for image in np_form]
    assert images_to_array(pt).shape == (2, 5, 7, 3)
    np.testing.assert_allclose(images_to_array(pt), np_form, atol=1e-6)
    np.testing.assert_allclose(images_to_array(np_form), np_form, atol=1e-6)
    np.testing.assert_allclose(images_to_array(pil), np_form, atol=1 / 255)


def test_vertices_take_the_colour_of_the_camera_they_face(sphere):
    # cameras on +x (red) and -x (blue), elevation 0: camera at c sees the sphere where p . c > r^2,
    # i.e. x > 0.1 for the first and x < -0.1 for the second; the band between sees neither
    cameras = Cameras.orbit(0.0, [0.0, 180.0], height=16)
    coloured = color_vertices(sphere, constant_views([RED, BLUE]), cameras)
    colours, x = rgb(coloured), sphere.vertices[:, 0]
    assert coloured.visual.vertex_colors.dtype == np.uint8 and coloured.visual.vertex_colors.shape == (len(x), 4)
    assert (coloured.visual.vertex_colors[:, 3] == 255).all()
    assert (colours[x > 0.13] == [255, 0, 0]).all()
    # the back of the sphere for camera 0 never takes camera 0's colour
    assert (colours[x < -0.13] == [0, 0, 255]).all()
    # seen by neither: the mean colour of the others, a red-blue mix without green
    band = colours[np.abs(x) < 0.07]
    assert len(band) > 0 and (band[:, 0] > 50).all() and (band[:, 2] > 50).all() and (band[:, 1] == 0).all()
    assert sphere.visual.kind is None  # the input mesh is left alone


def test_occluded_vertices_do_not_take_the_view_colour():
    # a small sphere between camera 0 (on +x, red) and the big one hides the big one's +x cap from it;
    # camera 1 (azimuth 60, green) sees that cap past the small sphere
    big = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    small = trimesh.creation.icosphere(subdivisions=2, radius=0.2)
    small.apply_translation([1.2, 0.0, 0.0])
    mesh = trimesh.util.concatenate([big, small])
    cameras = Cameras.orbit(0.0, [0.0, 60.0], height=16)
    coloured = color_vertices(mesh, constant_views([RED, GREEN]), cameras)
    cap = np.zeros(len(mesh.vertices), dtype=bool)
    cap[: len(big.vertices)] = (big.vertices[:, 0] > 0.3) & (np.linalg.norm(big.vertices[:, 1:], axis=-1) < 0.2)
    assert cap.sum() > 10
    assert (rgb(coloured)[cap] == [0, 255, 0]).all()
    visible = vertex_visibility(mesh, cameras)
    assert not visible[0, cap].any() and visible[1, cap].all()
    # without the occluder camera 0 does colour the cap
    alone = color_vertices(big, constant_views([RED, GREEN]), cameras)
    assert (rgb(alone)[cap[: len(big.vertices)], 0] > 100).all()


def test_colours_come_from_the_right_pixels(sphere):
    # every view painted by which half (x > 0: red, x < 0: blue) of the sphere its pixel's ray hits;
    # a mirrored or shifted projection would swap colours on the side views
    cameras = default_cameras(8, resolution=32)
    origins, directions = cameras.rays()  # [V, P, 3]
    b = (origins * directions).sum(-1)
    t = -b - (b**2 - (origins.square().sum(-1) - 0.25)).clamp(min=0).sqrt()
    x = (origins + t[..., None] * directions)[..., 0]
    colours = torch.where((x > 0)[..., None], torch.tensor(RED), torch.tensor(BLUE))  # [V, P, 3]
    views = colours.reshape(8, 32, 32, 3).numpy()
    coloured = color_vertices(sphere, views, cameras)  # the "np" form [V, H, W, 3]
    vx, vz = sphere.vertices[:, 0], sphere.vertices[:, 2]
    red_side, blue_side = (vx > 0.08) & (vz > -0.2), (vx < -0.08) & (vz > -0.2)

    def assert_halves(colours):
        assert (colours[red_side, 0] > 200).all() and (colours[red_side, 2] < 55).all()
        assert (colours[blue_side, 2] > 200).all() and (colours[blue_side, 0] < 55).all()

    assert_halves(rgb(coloured))
    # the same from PIL images, and from a "pt" tensor at another resolution than the cameras
    pil = [PIL.Image.fromarray((v * 255).astype(np.uint8)) for v in views]
    np.testing.assert_array_equal(rgb(color_vertices(sphere, pil, cameras)), rgb(coloured))
    upsampled = torch.nn.functional.interpolate(torch.from_numpy(views).permute(0, 3, 1, 2), size=64, mode="nearest")
    assert_halves(rgb(color_vertices(sphere, upsampled, cameras)))


def test_color_vertices_checks_the_view_count(sphere):
    with pytest.raises(ValueError, match="cameras"):
        color_vertices(sphere, constant_views([RED, BLUE]), default_cameras(3, 16))
    # the [1, V] cameras of a NeuSContext are accepted as [V]
    cameras = Cameras.orbit(0.0, [0.0, 180.0], height=16)
    np.testing.assert_array_equal(
        rgb(color_vertices(sphere, constant_views([RED, BLUE]), cameras.expand(1))),
        rgb(color_vertices(sphere, constant_views([RED, BLUE]), cameras)),
    )


@pytest.mark.parametrize("suffix", [".glb", ".ply", ".obj"])
def test_export_round_trip(tmp_path, sphere, suffix):
    cameras = Cameras.orbit(0.0, [0.0, 180.0], height=16)
    coloured = color_vertices(sphere, constant_views([RED, BLUE]), cameras)
    path = export_mesh(coloured, tmp_path / f"sphere{suffix}")
    assert os.listdir(tmp_path) == [f"sphere{suffix}"]  # no temporary left behind
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.vertices) == len(coloured.vertices) and len(loaded.faces) == len(coloured.faces)
    np.testing.assert_array_equal(loaded.visual.vertex_colors, coloured.visual.vertex_colors)


def test_export_bad_suffix_names_the_path(tmp_path, sphere):
    path = str(tmp_path / "sphere.stl")
    with pytest.raises(ValueError, match="sphere.stl"):
        export_mesh(sphere, path)
    assert not os.listdir(tmp_path)


def test_turntable_frames_and_gif(tmp_path, sphere):
    coloured = sphere.copy()
    coloured.visual = trimesh.visual.ColorVisuals(coloured, vertex_colors=np.tile([255, 0, 0, 255], (len(sphere.vertices), 1)))
    frames = turntable_frames(coloured, num_frames=5, resolution=32)
    assert len(frames) == 5 and all(frame.size == (32, 32) and frame.mode == "RGB" for frame in frames)
    for frame in frames:
        pixels = np.asarray(frame)
        centre = pixels[16, 16].astype(int)
        assert centre[0] > 100 and centre[1] < 10 and centre[2] < 10  # shaded red, not background
        for corner in (pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]):
            assert (corner == 255).all()
    path = save_turntable_gif(frames, tmp_path / "turntable.gif", fps=10)
    assert os.listdir(tmp_path) == ["turntable.gif"]
    with PIL.Image.open(path) as gif:
        assert gif.n_frames == 5 and gif.size == (32, 32)


def test_turntable_of_an_uncoloured_mesh_is_grey(sphere):
    (frame,) = turntable_frames(sphere, num_frames=1, resolution=16)
    centre = np.asarray(frame)[8, 8].astype(int)
    assert 60 < centre[0] < 255 and centre[0] == centre[1] == centre[2]


def sphere_masks(cameras, radius):
    """``[V, H, W]`` bool: the pixels whose ray through the centre passes within ``radius`` of the origin."""
    origins, directions = cameras.rays()  # [V, H*W, 3]
    along = -(origins * directions).sum(-1, keepdim=True)
    miss = (origins + along * directions).norm(dim=-1)
    return (miss < radius).reshape(len(cameras), cameras.height, cameras.width)


def sphere_coverage_masks(num_views, resolution, radius, supersampling=8):
    """``[V, H, W]`` bool coverage masks of a sphere, as ``foreground_masks`` makes them of anti-aliased
    views: a pixel is foreground when the sphere covers any part of it (any of its sub-pixels)."""
    fine = sphere_masks(default_cameras(num_views, resolution=resolution * supersampling), radius)
    return F.max_pool2d(fine[:, None].float(), supersampling)[:, 0].bool()


def test_carving_to_full_masks_keeps_the_sdf():
    cameras = default_cameras(8, resolution=16)
    sdf = torch.linspace(-1, 1, 8 ** 3).reshape(8, 8, 8)
    carved = carve_to_silhouettes(sdf, 0.5, torch.ones(8, 16, 16), cameras)  # the cube [-0.5, 0.5]^3 is in view
    outside = sdf >= 0  # wherever the SDF is non-negative nothing changes; inside it stays negative
    torch.testing.assert_close(carved[outside], sdf[outside])
    assert (carved[~outside] < 0).all()


def test_carving_keeps_the_mesh_inside_every_silhouette():
    neus, context = sphere_neus(radius=0.5)
    cameras = default_cameras(8, resolution=32)
    masks = sphere_coverage_masks(8, 32, 0.3)
    carved = mesh_from_neus(neus, context, resolution=48, masks=masks, cameras=cameras)
    # the vertices project inside every view's disc of radius 0.3 (plus half a pixel) ...
    uv, _ = cameras.project(torch.from_numpy(carved.vertices).float().expand(8, -1, -1))
    centre, _ = cameras.project(torch.zeros(8, 1, 3))
    focal, distance = cameras.intrinsics[0, 0, 0], cameras.centers[0].norm()
    disc = focal * 0.3 / (distance ** 2 - 0.3 ** 2) ** 0.5
    assert ((uv - centre).norm(dim=-1) <= disc + 0.5).all()
    # ... so the sphere of radius 0.5 is cut down to the hull of the discs, which reaches them at the equator
    radii = np.linalg.norm(carved.vertices, axis=-1)
    equator = np.abs(carved.vertices[:, 2]) < 0.05
    assert radii.max() < 0.36 and radii[equator].min() > 0.26


def carved_volume(neus, context, masks, cameras, contour, resolution=48):
    """Volume of the mesh of ``neus``'s SDF carved to ``masks`` at ``contour``."""
    return mesh_from_neus(neus, context, resolution, masks=masks, cameras=cameras, carve_contour=contour).volume


def test_carving_follows_the_edge_inside_coverage_masks():
    """Coverage masks grow a silhouette by the pixels the object only partly covers: carved at the midway
    contour (1/2) a sphere's hull comes out a third too large; the default contour keeps its volume."""
    neus, context = sphere_neus(radius=0.8)
    fine_cameras = default_cameras(8, resolution=128)  # pixel-centre masks: the midway contour is the edge
    hull = carved_volume(neus, context, sphere_masks(fine_cameras, 0.4), fine_cameras, contour=0.5)
    cameras, masks = default_cameras(8, resolution=32), sphere_coverage_masks(8, 32, 0.4)
    assert carved_volume(neus, context, masks, cameras, contour=CARVE_CONTOUR) == pytest.approx(hull, rel=0.05)
    assert carved_volume(neus, context, masks, cameras, contour=0.5) > 1.2 * hull
    with pytest.raises(ValueError, match="contour must be in"):
        carve_to_silhouettes(torch.zeros(8, 8, 8), 1.0, masks, cameras, contour=1.0)


def test_visual_hull_is_the_carving_of_an_sdf_that_holds_it():
    """The hull of a sphere's masks equals what carving leaves of a larger sphere's SDF (the surface is the
    masks' contour either way), and masks that show nothing leave no surface."""
    neus, context = sphere_neus(radius=0.8)
    cameras, masks = default_cameras(8, resolution=32), sphere_coverage_masks(8, 32, 0.4)
    hull = visual_hull_mesh(masks, cameras, resolution=48)
    assert hull.is_watertight
    assert hull.volume == pytest.approx(carved_volume(neus, context, masks, cameras, CARVE_CONTOUR), rel=0.02)
    assert hull.volume == pytest.approx(4 / 3 * np.pi * 0.4 ** 3, rel=0.15)  # a sphere's hull from 8 views
    with pytest.raises(ValueError, match="no surface"):
        visual_hull_mesh(torch.zeros(8, 32, 32), cameras, resolution=16)


def test_carving_everything_away_leaves_no_surface():
    neus, context = sphere_neus()
    cameras = default_cameras(4, resolution=16)
    with pytest.raises(ValueError, match="no surface"):
        mesh_from_neus(neus, context, resolution=16, masks=torch.zeros(4, 16, 16), cameras=cameras)


def test_carving_checks_the_masks_against_the_cameras():
    cameras = default_cameras(4, resolution=16)
    with pytest.raises(ValueError, match="masks must be"):
        carve_to_silhouettes(torch.zeros(8, 8, 8), 1.0, torch.ones(3, 16, 16), cameras)
