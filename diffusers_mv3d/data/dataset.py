"""Torch datasets over rendered data: multi-view object folders and 2D image-text pairs.

``MultiViewDataset`` serves the 3D tuning data of docs/data_format.md (and zero123-style Objaverse
renders); ``ImageTextDataset`` serves the 2D foundation data (an imagefolder with
``metadata.jsonl``). Images come out as RGB composited over white, in [-1, 1].
"""

import json
import os
import warnings
import zlib
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from PIL import Image
from torch.utils.data import Dataset

from ..cameras import Cameras
from .format import MESH_FILE, ZERO123_FOV, ObjectFolder, ObjectFolderError, open_object, read_rgba, read_zero123_cameras, view_name
from .render import load_mesh
from .shapes import inside_mesh


def rgba_to_tensors(rgba: np.ndarray, resolution: Optional[int] = None):
    """``[V, H, W, 4]`` straight RGBA in 0..1 -> (images ``[V, 3, h, w]`` in [-1, 1] over white, masks ``[V, 1, h, w]``).

    The mask is 1 where the (resized) alpha, the pixel's coverage, is at least 0.5.
    """
    x = torch.from_numpy(np.ascontiguousarray(rgba)).permute(0, 3, 1, 2)  # (V, 4, H, W)
    alpha = x[:, 3:]
    rgb = x[:, :3] * alpha + (1 - alpha)  # over white
    if resolution is not None and tuple(rgb.shape[-2:]) != (resolution, resolution):
        rgb = F.interpolate(rgb, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
        alpha = F.interpolate(alpha, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return (rgb.clamp(0, 1) * 2 - 1).contiguous(), (alpha >= 0.5).float()


def occupancy_samples(mesh, count: int, seed: int, surface_noise: float = 0.02):
    """``count`` points ``[P, 3]`` and whether ``mesh`` holds them (``[P]`` 1 inside, 0 outside), float32.

    Half are uniform in the object cube ``[-1, 1]^3`` (the empty space and the bulk of the parts), half
    near the surface (surface samples moved by Gaussian noise of ``surface_noise`` a coordinate: where
    inside and outside are decided). Insideness is :func:`~.shapes.inside_mesh`'s; the draws come from
    ``seed`` alone.
    """
    rng = np.random.default_rng(seed)
    uniform = rng.uniform(-1.0, 1.0, size=(count - count // 2, 3))
    surface, _ = trimesh.sample.sample_surface(mesh, count // 2, seed=rng)
    near = np.asarray(surface) + rng.normal(0.0, surface_noise, size=(count // 2, 3))
    points = np.concatenate([uniform, near]).astype(np.float32)
    return torch.from_numpy(points), torch.from_numpy(inside_mesh(mesh, points).astype(np.float32))


def _evenly_spaced(count: int, total: int) -> List[int]:
    """``count`` indices spread evenly over ``range(total)``, starting at 0 (8 of 8: all; 4 of 8: 0, 2, 4, 6)."""
    return [int(i * total // count) for i in range(count)]


class _SkippingDataset(Dataset):
    """What both datasets do with a bad folder, file or line (an :class:`ObjectFolderError`): raise it, or
    with ``skip_invalid`` warn and go on (at load time: with the next item). A subclass keeps its items
    in ``entries`` and reads one with ``_load(entry)``."""

    entry_kind = "item"
    """What an entry is, in the warnings and errors."""

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Dict:
        for attempt in range(len(self)):
            try:
                return self._load(self.entries[(index + attempt) % len(self)])
            except ObjectFolderError as error:
                self._skip_or_raise(error)
        raise ValueError(f"no {self.entry_kind} of {self.root} could be read")

    def _skip_or_raise(self, error: ObjectFolderError) -> None:
        """Raise ``error`` unless ``skip_invalid``, in which case warn with it."""
        if not self.skip_invalid:
            raise error
        warnings.warn(f"skipping invalid {self.entry_kind}: {error}")


class MultiViewDataset(_SkippingDataset):
    """Multi-view objects for 3D tuning: input views, supervision views, their cameras and a caption.

    Args:
        root: a folder of object folders (docs/data_format.md) or of zero123-style render folders.
        num_input_views: input views an item. From this package's format: chosen evenly among the
            fixed input views (8 -> all, 4 -> every other one). From zero123 folders: the first views.
        num_supervision_views: supervision views an item: the views after the fixed inputs (this
            format), or after the input views (zero123).
        resolution: square side the images and cameras are resized to; None keeps the stored size.
        skip_invalid: when False, a bad folder or file raises :class:`ObjectFolderError` naming it.
            When True, folders that fail the checks made on construction are left out with a warning,
            and an item whose image or pose fails to decode is replaced by the next good item, with a
            warning naming the file.
        zero123_fov: vertical field of view in degrees of zero123 renders (their npy holds no
            intrinsics; zero123's Objaverse renders use 49.1 degrees).
        occupancy_points: with a positive count, each item also carries that many 3D points and
            whether the object's ``mesh.glb`` holds them (:func:`occupancy_samples`, the same points for
            an object every time), for 3D supervision; every object folder must then hold a mesh.
        generated_views_dir: a folder of generated versions of the input views,
            ``generated_views_dir/<object id>/NNN.png`` (RGB, ``NNN`` the view's index in the object
            folder; ``scripts/generate_reconstructor_inputs.py`` writes them); only the objects it
            holds are served, each with ``generated_images`` beside its renders.

    Items are dicts: ``images`` ``[V_in, 3, H, W]`` in [-1, 1] (RGB over white), ``masks``
    ``[V_in, 1, H, W]`` 0/1, ``cameras`` Cameras ``[V_in]`` (for ``H x W``), ``supervision_images``
    ``[V_sup, 3, H, W]``, ``supervision_masks`` ``[V_sup, 1, H, W]``, ``supervision_cameras`` Cameras
    ``[V_sup]``, ``caption`` str, ``object_id`` str (the folder name); with ``generated_views_dir``
    also ``generated_images`` ``[V_in, 3, H, W]`` in [-1, 1]; with ``occupancy_points`` also
    ``occupancy_points`` ``[P, 3]`` (world) and ``occupancy`` ``[P]`` (1 inside the object, 0 outside).
    """

    entry_kind = "object"

    @property
    def entries(self) -> List[ObjectFolder]:
        return self.objects

    def __init__(
        self,
        root: str,
        num_input_views: int = 8,
        num_supervision_views: int = 8,
        resolution: Optional[int] = None,
        skip_invalid: bool = False,
        zero123_fov: float = ZERO123_FOV,
        generated_views_dir: Optional[str] = None,
        occupancy_points: int = 0,
    ):
        if num_input_views < 1:
            raise ValueError(f"num_input_views must be >= 1, got {num_input_views}")
        if num_supervision_views < 0:
            raise ValueError(f"num_supervision_views must be >= 0, got {num_supervision_views}")
        if resolution is not None and resolution < 1:
            raise ValueError(f"resolution must be positive or None, got {resolution}")
        if occupancy_points < 0:
            raise ValueError(f"occupancy_points must be >= 0, got {occupancy_points}")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"root is not a folder: {root}")
        self.root, self.resolution, self.skip_invalid = root, resolution, skip_invalid
        self.num_input_views, self.num_supervision_views, self.zero123_fov = num_input_views, num_supervision_views, zero123_fov
        self.occupancy_points = occupancy_points
        self.objects: List[ObjectFolder] = []
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if name.startswith(".") or not os.path.isdir(path):  # hidden, and half-written .tmp- objects
                continue
            try:
                folder = open_object(path)
                self._view_indices(folder)
                if occupancy_points and not os.path.isfile(os.path.join(path, MESH_FILE)):
                    raise ObjectFolderError(path, f"has no {MESH_FILE}, which occupancy_points needs")
            except ObjectFolderError as error:
                self._skip_or_raise(error)
                continue
            self.objects.append(folder)
        if not self.objects:
            raise ValueError(f"root holds no valid object folders: {root}")
        self.generated_views_dir = generated_views_dir
        if generated_views_dir is not None:
            self.objects = [o for o in self.objects if os.path.isdir(self._generated_folder(o))]
            if not self.objects:
                raise ValueError(f"generated_views_dir holds no folder named like an object of {root}: {generated_views_dir}")

    def _view_indices(self, folder: ObjectFolder):
        """(input view indices, supervision view indices) of ``folder``, checked against its view count."""
        fixed = folder.num_input_views if folder.kind == "multiview" else self.num_input_views
        if self.num_input_views > fixed:
            raise ObjectFolderError(folder.path, f"has {fixed} input views, {self.num_input_views} asked for")
        inputs = _evenly_spaced(self.num_input_views, fixed)
        supervision = list(range(fixed, fixed + self.num_supervision_views))
        if supervision and supervision[-1] >= folder.num_views:
            raise ObjectFolderError(
                folder.path,
                f"has {folder.num_views} views: too few for {fixed} inputs + {self.num_supervision_views} supervision views",
            )
        return inputs, supervision

    def _cameras(self, folder: ObjectFolder, views: Sequence[int], height: int, width: int) -> Cameras:
        """Cameras of ``views`` for the stored image size, rescaled to ``self.resolution``."""
        if folder.kind == "zero123":
            cameras = read_zero123_cameras(folder, list(views), height, width, self.zero123_fov)
        else:
            index = torch.as_tensor(list(views), dtype=torch.long)
            cameras = Cameras(folder.cameras.world_to_camera[index], folder.cameras.intrinsics[index], height, width)
        return cameras if self.resolution is None else cameras.rescale(self.resolution, self.resolution)

    def _generated_folder(self, folder: ObjectFolder) -> str:
        return os.path.join(self.generated_views_dir, os.path.basename(folder.path))

    def _read_generated(self, folder: ObjectFolder, views: Sequence[int], size: tuple) -> torch.Tensor:
        """The generated versions ``[V, 3, H, W]`` in [-1, 1] of ``views`` (opaque RGB: they carry no mask)."""
        rgba = []
        for view in views:
            path = os.path.join(self._generated_folder(folder), f"{view_name(view)}.png")
            try:
                with Image.open(path) as image:
                    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            except (OSError, ValueError, SyntaxError) as error:
                raise ObjectFolderError(path, f"cannot read the generated view ({error})") from error
            if rgb.shape[:2] != tuple(size):
                raise ObjectFolderError(path, f"is {rgb.shape[0]} x {rgb.shape[1]}, expected {size[0]} x {size[1]}")
            rgba.append(np.concatenate([rgb, np.ones_like(rgb[..., :1])], -1))
        return rgba_to_tensors(np.stack(rgba), self.resolution)[0]

    def _load(self, folder: ObjectFolder) -> Dict:
        """Decode and check one object's views."""
        inputs, supervision = self._view_indices(folder)
        paths = [folder.images[i] for i in inputs + supervision]
        size = None if folder.cameras is None else (folder.cameras.height, folder.cameras.width)
        first = read_rgba(paths[0], size)
        size = first.shape[:2]  # zero123: the other views must match the first one
        rgba = np.stack([first] + [read_rgba(path, size) for path in paths[1:]])
        images, masks = rgba_to_tensors(rgba, self.resolution)
        n = len(inputs)
        item = {
            "images": images[:n],
            "masks": masks[:n],
            "cameras": self._cameras(folder, inputs, *size),
            "supervision_images": images[n:],
            "supervision_masks": masks[n:],
            "supervision_cameras": self._cameras(folder, supervision, *size),
            "caption": folder.caption,
            "object_id": os.path.basename(folder.path),
        }
        if self.generated_views_dir is not None:
            item["generated_images"] = self._read_generated(folder, inputs, size)
        if self.occupancy_points:
            item["occupancy_points"], item["occupancy"] = self._occupancy(folder)
        return item

    def _occupancy(self, folder: ObjectFolder):
        """:func:`occupancy_samples` of the folder's mesh, drawn from a seed its name gives."""
        path = os.path.join(folder.path, MESH_FILE)
        try:
            mesh = load_mesh(path)
        except ValueError as error:
            raise ObjectFolderError(path, f"cannot read the mesh ({error})") from error
        return occupancy_samples(mesh, self.occupancy_points, zlib.crc32(os.path.basename(folder.path).encode()))


def collate_multiview(items: Sequence[Dict]) -> Dict:
    """Batch :class:`MultiViewDataset` items: tensors stacked to ``[B, V, ...]``, cameras to batch
    shape ``[B, V]``, captions and object ids as lists."""
    if not items:
        raise ValueError("items must not be empty")
    batch = {}
    for key in ("images", "masks", "supervision_images", "supervision_masks", "generated_images", "occupancy_points",
                "occupancy"):
        if key in items[0]:
            batch[key] = torch.stack([item[key] for item in items])
    for key in ("cameras", "supervision_cameras"):
        cameras = [item[key] for item in items]
        if len({(c.height, c.width) for c in cameras}) != 1:
            raise ValueError(f"{key} of one batch must share one image size; set MultiViewDataset(resolution=...)")
        batch[key] = Cameras(
            torch.stack([c.world_to_camera for c in cameras]),
            torch.stack([c.intrinsics for c in cameras]),
            cameras[0].height,
            cameras[0].width,
        )
    batch["caption"] = [item["caption"] for item in items]
    batch["object_id"] = [item["object_id"] for item in items]
    return batch


class ImageTextDataset(_SkippingDataset):
    """2D foundation data: an imagefolder-style ``root/metadata.jsonl`` plus its images.

    Each line of ``metadata.jsonl`` is ``{"file_name": "images/000000.png", "text": caption,
    "category": ..., "colour": ...}`` (category and colour optional). Images with alpha are
    composited over white.

    Args:
        root: the folder holding ``metadata.jsonl``.
        resolution: square side images are resized to; None keeps the stored size.
        skip_invalid: when False a bad line or image raises :class:`ObjectFolderError` naming it;
            when True bad lines and missing files are left out with a warning on construction, and an
            image that fails to decode is replaced by the next good one, with a warning.

    Items are dicts: ``pixel_values`` ``[3, H, W]`` in [-1, 1], ``caption``, ``category``, ``colour``.
    """

    entry_kind = "image"

    @property
    def entries(self) -> List[Dict]:
        return self.records

    def __init__(self, root: str, resolution: Optional[int] = None, skip_invalid: bool = False):
        if resolution is not None and resolution < 1:
            raise ValueError(f"resolution must be positive or None, got {resolution}")
        metadata = os.path.join(root, "metadata.jsonl")
        if not os.path.isfile(metadata):
            raise ObjectFolderError(metadata, "missing")
        self.root, self.resolution, self.skip_invalid = root, resolution, skip_invalid
        self.records: List[Dict] = []
        with open(metadata, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    self.records.append(self._check_record(line, f"{metadata}:{number}"))
                except ObjectFolderError as error:
                    self._skip_or_raise(error)
        if not self.records:
            raise ValueError(f"{metadata} lists no valid images")

    def _check_record(self, line: str, where: str) -> Dict:
        """One parsed, checked line of metadata.jsonl (``where`` names it in errors)."""
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ObjectFolderError(where, f"not JSON ({error})") from error
        if not isinstance(record, dict) or not isinstance(record.get("file_name"), str) or not isinstance(record.get("text"), str):
            raise ObjectFolderError(where, "needs string fields 'file_name' and 'text'")
        if not os.path.isfile(os.path.join(self.root, record["file_name"])):
            raise ObjectFolderError(os.path.join(self.root, record["file_name"]), f"missing (listed at {where})")
        return record

    def _load(self, record: Dict) -> Dict:
        """Decode one image as ``[3, H, W]`` in [-1, 1] over white."""
        path = os.path.join(self.root, record["file_name"])
        try:
            with Image.open(path) as image:
                rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        except (OSError, ValueError, SyntaxError) as error:
            raise ObjectFolderError(path, f"cannot decode image ({error})") from error
        pixels, _ = rgba_to_tensors(rgba[None], self.resolution)
        return {
            "pixel_values": pixels[0],
            "caption": record["text"],
            "category": record.get("category", ""),
            "colour": record.get("colour", ""),
        }
