"""The one camera convention of diffusers-mv3d (DESIGN.md §4).

Coordinate spaces, defined here once:

* **World**: right-handed, +z up. Objects are centred at the origin inside the cube [-1, 1]^3.
* **Camera**: OpenCV. +x points right in the image, +y points down, +z points forward (along the
  optical axis). A world point ``p`` maps to camera space as ``p_cam = R @ p + t`` where
  ``world_to_camera = [[R, t], [0, 1]]``.
* **Pixels**: ``u`` runs along the width, ``v`` along the height. Pixel ``(i, j)`` (row ``i``,
  column ``j``) covers ``[j, j + 1) x [i, i + 1)``; its centre is ``(j + 0.5, i + 0.5)``. A camera
  point projects to ``u = fx * x / z + cx``, ``v = fy * y / z + cy``. This matches
  ``torch.nn.functional.grid_sample(..., align_corners=False)`` with ``grid = 2 * uv / (W, H) - 1``.
* **Depth**: always the camera-space ``z`` of a point (not the distance along the ray).

Other conventions convert through :meth:`Cameras.from_cam2world` / :meth:`Cameras.to_cam2world`
(OpenGL and Blender cameras look down -z with +y up: ``c2w_opencv = c2w_opengl @ diag(1, -1, -1, 1)``)
and :meth:`Cameras.from_zero123` (zero123's 3x4 ``RT`` is world-to-Blender-camera).

Tensors may carry leading batch dimensions: ``world_to_camera`` is ``[..., 4, 4]`` and
``intrinsics`` ``[..., 3, 3]``; ``len()``, indexing and :meth:`Cameras.cat` act on the first one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

# Default generation cameras: 8 views at elevation 20 degrees, azimuth every 45 degrees.
DEFAULT_NUM_VIEWS = 8
DEFAULT_ELEVATION = 20.0
DEFAULT_RADIUS = 2.5
DEFAULT_FOV = 50.0  # vertical field of view in degrees; the unit sphere fits at radius 2.5

# OpenGL / Blender camera axes (x right, y up, z backward) to OpenCV (x right, y down, z forward).
_OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
_CONVENTIONS = ("opencv", "opengl", "blender")


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """World-to-camera matrices [..., 4, 4] (OpenCV) of cameras at ``eye`` looking at ``target``.

    Rows of ``R`` are the camera axes in world space: right = forward x up, down = forward x right.
    """
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.nn.functional.normalize(torch.cross(forward, up.expand_as(forward), dim=-1), dim=-1)
    down = torch.cross(forward, right, dim=-1)
    rotation = torch.stack([right, down, forward], dim=-2)  # [..., 3, 3]
    translation = -(rotation @ eye.unsqueeze(-1)).squeeze(-1)
    w2c = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype)
    w2c[..., :3, :3] = rotation
    w2c[..., :3, 3] = translation
    w2c[..., 3, 3] = 1.0
    return w2c


def intrinsics_from_fov(fov: float, height: int, width: int) -> torch.Tensor:
    """Pinhole intrinsics [3, 3] for a vertical field of view in degrees and square pixels."""
    focal = 0.5 * height / math.tan(math.radians(fov) / 2)
    return torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


@dataclass
class Cameras:
    """Pinhole cameras in the OpenCV convention of this module.

    Args:
        world_to_camera: ``[..., 4, 4]`` rigid transforms from world to camera space.
        intrinsics: ``[..., 3, 3]`` pinhole matrices in pixels of a ``height x width`` image.
        height: image height in pixels.
        width: image width in pixels.
    """

    world_to_camera: torch.Tensor
    intrinsics: torch.Tensor
    height: int
    width: int

    def __post_init__(self):
        if self.world_to_camera.shape[-2:] != (4, 4):
            raise ValueError(f"world_to_camera must be [..., 4, 4], got {tuple(self.world_to_camera.shape)}")
        if self.intrinsics.shape[-2:] != (3, 3):
            raise ValueError(f"intrinsics must be [..., 3, 3], got {tuple(self.intrinsics.shape)}")
        if self.world_to_camera.shape[:-2] != self.intrinsics.shape[:-2]:
            raise ValueError(
                f"world_to_camera batch shape {tuple(self.world_to_camera.shape[:-2])} does not match "
                f"intrinsics batch shape {tuple(self.intrinsics.shape[:-2])}"
            )
        if int(self.height) < 1 or int(self.width) < 1:
            raise ValueError(f"height and width must be positive, got {self.height} x {self.width}")
        self.height, self.width = int(self.height), int(self.width)

    # ------------------------------------------------------------------ construction
    @classmethod
    def orbit(
        cls,
        elevations: Union[float, Sequence[float], torch.Tensor] = DEFAULT_ELEVATION,
        azimuths: Optional[Union[Sequence[float], torch.Tensor]] = None,
        radius: float = DEFAULT_RADIUS,
        fov: float = DEFAULT_FOV,
        height: int = 64,
        width: Optional[int] = None,
    ) -> "Cameras":
        """Cameras on a sphere around the origin, looking at it, +z up.

        Elevation and azimuth are in degrees; azimuth 0 is on +x and grows towards +y. The camera
        centre is ``radius * (cos(el) cos(az), cos(el) sin(az), sin(el))``. ``azimuths`` defaults to
        :data:`DEFAULT_NUM_VIEWS` views spaced evenly from 0; a scalar elevation is broadcast.
        """
        if azimuths is None:
            azimuths = torch.arange(DEFAULT_NUM_VIEWS) * (360.0 / DEFAULT_NUM_VIEWS)
        azimuths = torch.as_tensor(azimuths, dtype=torch.float32).reshape(-1)
        elevations = torch.as_tensor(elevations, dtype=torch.float32).reshape(-1).expand_as(azimuths)
        if abs(float(elevations.abs().max())) >= 90.0:
            raise ValueError("elevations must lie strictly between -90 and 90 degrees (the up vector is +z)")
        if radius <= 0:
            raise ValueError(f"radius must be positive, got {radius}")
        width = height if width is None else width
        el, az = torch.deg2rad(elevations), torch.deg2rad(azimuths)
        eye = radius * torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], dim=-1)
        w2c = look_at(eye, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
        k = intrinsics_from_fov(fov, height, width).expand(len(azimuths), 3, 3).clone()
        return cls(w2c, k, height, width)

    @classmethod
    def from_cam2world(
        cls, cam2world: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int, convention: str = "opengl"
    ) -> "Cameras":
        """From camera-to-world matrices ``[..., 4, 4]`` (or ``[..., 3, 4]``) of ``convention``.

        ``"opengl"`` and ``"blender"`` cameras look down -z with +y up (NeRF ``transforms.json``,
        Blender's ``matrix_world``); ``"opencv"`` is this module's. The world must already be +z up.
        """
        c2w = _homogeneous(torch.as_tensor(cam2world, dtype=torch.float32))
        if convention not in _CONVENTIONS:
            raise ValueError(f"convention must be one of {_CONVENTIONS}, got {convention!r}")
        if convention in ("opengl", "blender"):
            c2w = c2w @ _OPENGL_TO_OPENCV
        intrinsics = torch.as_tensor(intrinsics, dtype=torch.float32).expand(*c2w.shape[:-2], 3, 3).clone()
        return cls(torch.linalg.inv(c2w), intrinsics, height, width)

    def to_cam2world(self, convention: str = "opengl") -> torch.Tensor:
        """Camera-to-world matrices ``[..., 4, 4]`` in ``convention`` (inverse of :meth:`from_cam2world`)."""
        if convention not in _CONVENTIONS:
            raise ValueError(f"convention must be one of {_CONVENTIONS}, got {convention!r}")
        c2w = self.cam2world
        if convention in ("opengl", "blender"):
            c2w = c2w @ _OPENGL_TO_OPENCV.to(c2w)
        return c2w

    @classmethod
    def from_zero123(cls, rt: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int) -> "Cameras":
        """From zero123 / Objaverse-render ``RT`` matrices ``[..., 3, 4]``: world to *Blender* camera.

        ``w2c_opencv = diag(1, -1, -1, 1) @ [RT; 0 0 0 1]``.
        """
        rt = torch.as_tensor(rt, dtype=torch.float32)
        if rt.shape[-2:] != (3, 4):
            raise ValueError(f"rt must be [..., 3, 4], got {tuple(rt.shape)}")
        w2c = _OPENGL_TO_OPENCV @ _homogeneous(rt)
        intrinsics = torch.as_tensor(intrinsics, dtype=torch.float32).expand(*w2c.shape[:-2], 3, 3).clone()
        return cls(w2c, intrinsics, height, width)

    def to_zero123(self) -> torch.Tensor:
        """zero123 ``RT`` matrices ``[..., 3, 4]`` (inverse of :meth:`from_zero123`)."""
        return (_OPENGL_TO_OPENCV.to(self.world_to_camera) @ self.world_to_camera)[..., :3, :]

    @classmethod
    def from_dict(cls, data: Dict) -> "Cameras":
        """From the ``cameras.json`` layout of ``docs/data_format.md``."""
        views = data["views"]
        w2c = torch.tensor([v["world_to_camera"] for v in views], dtype=torch.float32)
        k = torch.tensor([v["intrinsics"] for v in views], dtype=torch.float32)
        return cls(w2c, k, data["height"], data["width"])

    def to_dict(self) -> Dict:
        """The ``cameras.json`` layout: per view world_to_camera, intrinsics, elevation, azimuth."""
        if self.world_to_camera.dim() != 3:
            raise ValueError("to_dict needs cameras of shape [V, 4, 4] (one object)")
        elevations, azimuths = self.elevations_azimuths()
        views = [
            {
                "world_to_camera": self.world_to_camera[i].tolist(),
                "intrinsics": self.intrinsics[i].tolist(),
                "elevation": float(elevations[i]),
                "azimuth": float(azimuths[i]),
            }
            for i in range(len(self))
        ]
        return {"convention": "opencv", "height": self.height, "width": self.width, "views": views}

    @staticmethod
    def cat(cameras: Sequence["Cameras"], dim: int = 0) -> "Cameras":
        """Concatenate cameras of the same image size along a batch dimension."""
        if len({(c.height, c.width) for c in cameras}) != 1:
            raise ValueError("Cameras.cat needs cameras of one image size")
        return Cameras(
            torch.cat([c.world_to_camera for c in cameras], dim),
            torch.cat([c.intrinsics for c in cameras], dim),
            cameras[0].height,
            cameras[0].width,
        )

    # ------------------------------------------------------------------ container behaviour
    def __len__(self) -> int:
        return self.world_to_camera.shape[0]

    def __getitem__(self, index) -> "Cameras":
        w2c, k = self.world_to_camera[index], self.intrinsics[index]
        if w2c.dim() == 2:  # a single integer index keeps a batch dimension of one
            w2c, k = w2c[None], k[None]
        return Cameras(w2c, k, self.height, self.width)

    @property
    def batch_shape(self) -> torch.Size:
        return self.world_to_camera.shape[:-2]

    def to(self, *args, **kwargs) -> "Cameras":
        """Move / cast like :meth:`torch.Tensor.to` (floating dtypes only apply to the matrices)."""
        return Cameras(self.world_to_camera.to(*args, **kwargs), self.intrinsics.to(*args, **kwargs), self.height, self.width)

    def expand(self, *batch: int) -> "Cameras":
        """Add leading batch dimensions, e.g. ``[V] -> [B, V]`` with ``expand(B)``."""
        shape = tuple(batch) + tuple(self.batch_shape)
        return Cameras(
            self.world_to_camera.expand(*shape, 4, 4), self.intrinsics.expand(*shape, 3, 3), self.height, self.width
        )

    def rescale(self, height: int, width: Optional[int] = None) -> "Cameras":
        """The same cameras for an image resized to ``height x width``: scale fx, cx by the width ratio
        and fy, cy by the height ratio (exact under the pixel-centre convention above)."""
        width = height if width is None else width
        scale = torch.tensor([width / self.width, height / self.height, 1.0]).to(self.intrinsics)
        return Cameras(self.world_to_camera, self.intrinsics * scale[:, None], height, width)

    # ------------------------------------------------------------------ geometry
    @property
    def cam2world(self) -> torch.Tensor:
        """Camera-to-world matrices ``[..., 4, 4]`` (OpenCV axes)."""
        rotation = self.world_to_camera[..., :3, :3]
        translation = self.world_to_camera[..., :3, 3:]
        c2w = torch.zeros_like(self.world_to_camera)
        c2w[..., :3, :3] = rotation.transpose(-1, -2)
        c2w[..., :3, 3:] = -rotation.transpose(-1, -2) @ translation
        c2w[..., 3, 3] = 1.0
        return c2w

    @property
    def centers(self) -> torch.Tensor:
        """Camera centres in world space ``[..., 3]``."""
        return self.cam2world[..., :3, 3]

    def elevations_azimuths(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Elevation and azimuth in degrees of each camera centre, as :meth:`orbit` defines them."""
        c = self.centers
        elevation = torch.rad2deg(torch.asin(c[..., 2] / c.norm(dim=-1)))
        azimuth = torch.rad2deg(torch.atan2(c[..., 1], c[..., 0])) % 360.0
        return elevation, azimuth

    def project(self, points: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Project world points into every camera.

        Args:
            points: ``[..., N, 3]``; its leading dims broadcast against the cameras' batch shape.

        Returns:
            ``uv [..., N, 2]`` continuous pixel coordinates and ``depth [..., N]`` (camera z).
        """
        rotation = self.world_to_camera[..., :3, :3]  # [..., 3, 3]
        translation = self.world_to_camera[..., None, :3, 3]  # [..., 1, 3]
        p_cam = torch.einsum("...ij,...nj->...ni", rotation, points) + translation  # [..., N, 3]
        depth = p_cam[..., 2]
        k = self.intrinsics[..., None, :, :]  # [..., 1, 3, 3]
        z = depth.clamp(min=1e-6)
        u = k[..., 0, 0] * p_cam[..., 0] / z + k[..., 0, 2]
        v = k[..., 1, 1] * p_cam[..., 1] / z + k[..., 1, 2]
        return torch.stack([u, v], dim=-1), depth

    def unproject(self, uv: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """World points ``[..., N, 3]`` at pixel coordinates ``uv [..., N, 2]`` and camera depth ``[..., N]``."""
        k = self.intrinsics[..., None, :, :]
        x = (uv[..., 0] - k[..., 0, 2]) / k[..., 0, 0] * depth
        y = (uv[..., 1] - k[..., 1, 2]) / k[..., 1, 1] * depth
        p_cam = torch.stack(torch.broadcast_tensors(x, y, depth), dim=-1)
        c2w = self.cam2world[..., None, :, :]
        return (c2w[..., :3, :3] @ p_cam.unsqueeze(-1)).squeeze(-1) + c2w[..., :3, 3]

    def pixel_centers(self) -> torch.Tensor:
        """``[H, W, 2]`` pixel-centre coordinates ``(u, v) = (j + 0.5, i + 0.5)``."""
        v, u = torch.meshgrid(
            torch.arange(self.height, dtype=torch.float32) + 0.5,
            torch.arange(self.width, dtype=torch.float32) + 0.5,
            indexing="ij",
        )
        return torch.stack([u, v], dim=-1).to(self.intrinsics)

    def rays(self, uv: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Rays through pixel coordinates.

        Args:
            uv: ``[..., N, 2]`` pixel coordinates broadcastable to the cameras; defaults to every
                pixel centre, row-major (``N = H * W``).

        Returns:
            ``origins [..., N, 3]`` (the camera centres) and unit ``directions [..., N, 3]``.
            A point at distance ``s`` along a ray has camera depth ``s * (direction . forward)``.
        """
        if uv is None:
            uv = self.pixel_centers().reshape(-1, 2)
        points = self.unproject(uv, torch.ones_like(uv[..., 0]))
        origins = self.centers[..., None, :].expand_as(points)
        directions = torch.nn.functional.normalize(points - origins, dim=-1)
        return origins, directions

    @property
    def forward_axes(self) -> torch.Tensor:
        """Optical axes (camera +z) in world space ``[..., 3]``."""
        return self.world_to_camera[..., 2, :3]


def _homogeneous(matrix: torch.Tensor) -> torch.Tensor:
    """``[..., 3, 4]`` or ``[..., 4, 4]`` to ``[..., 4, 4]``."""
    if matrix.shape[-2:] == (4, 4):
        return matrix
    if matrix.shape[-2:] != (3, 4):
        raise ValueError(f"expected a [..., 3, 4] or [..., 4, 4] matrix, got {tuple(matrix.shape)}")
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=matrix.dtype).expand(*matrix.shape[:-2], 1, 4)
    return torch.cat([matrix, bottom], dim=-2)


def default_cameras(num_views: int = DEFAULT_NUM_VIEWS, resolution: int = 64) -> Cameras:
    """The default generation cameras: elevation 20, azimuths spaced evenly, radius 2.5."""
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    return Cameras.orbit(DEFAULT_ELEVATION, torch.arange(num_views) * (360.0 / num_views), height=resolution)


__all__: List[str] = ["Cameras", "default_cameras", "look_at", "intrinsics_from_fov"]
