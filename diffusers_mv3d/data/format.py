"""The on-disk multi-view format (docs/data_format.md): writing and checked reading of object folders.

One folder an object::

    <object_id>/
      rgba/000.png ...     RGBA uint8, straight alpha (coverage); views 0..N-1
      cameras.json         Cameras.to_dict() + "num_input_views": the first views are the fixed inputs
      caption.txt          one UTF-8 line
      mesh.glb             the normalised mesh, +y up as glTF specifies (optional)
      object.json          split, seed, category, colour, attributes (optional, procedural objects)

and zero123-style Objaverse renders: ``000.png`` + ``000.npy`` (3x4 world-to-Blender-camera RT)
per view, ``caption.txt`` optional.

Every reader raises :class:`ObjectFolderError` naming the offending file; nothing is guessed.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import trimesh
from PIL import Image

from ..cameras import Cameras, intrinsics_from_fov
from ..io_utils import atomic_write_folder
from .render import to_gltf_axes

CAMERAS_FILE = "cameras.json"
CAPTION_FILE = "caption.txt"
MESH_FILE = "mesh.glb"
OBJECT_FILE = "object.json"
RGBA_DIR = "rgba"
TMP_PREFIX = ".tmp-"  # objects being written; never read, removed by the next render
ZERO123_FOV = 49.1  # degrees: zero123's Blender camera, 35 mm lens on a 32 mm sensor


class ObjectFolderError(ValueError):
    """An object folder (or one of its files) is missing, incomplete or corrupt; ``path`` names the file."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path


# ---------------------------------------------------------------------------------- writing
def view_name(index: int) -> str:
    """The file stem of view ``index``: ``000``, ``001``, ..."""
    return f"{index:03d}"


def write_object(
    root: str,
    object_id: str,
    rgba: np.ndarray,
    cameras: Cameras,
    caption: str,
    num_input_views: int,
    mesh: Optional[trimesh.Trimesh] = None,
    metadata: Optional[Dict] = None,
) -> str:
    """Write one object folder ``root/object_id`` atomically and return its path.

    Everything goes to ``root/.tmp-<object_id>-<pid>`` first (:func:`~diffusers_mv3d.io_utils.atomic_write_folder`),
    which is renamed when complete, so a
    folder named ``object_id`` is always whole.

    Args:
        rgba: ``[V, H, W, 4]`` float in 0..1, straight alpha (``render_views(..., background="transparent")``).
        cameras: the ``[V]`` cameras of the views.
        num_input_views: how many of the first views are the fixed input views.
        mesh: written as ``mesh.glb`` when given.
        metadata: written as ``object.json`` when given.
    """
    if rgba.ndim != 4 or rgba.shape[-1] != 4 or rgba.shape[0] != len(cameras):
        raise ValueError(f"rgba must be [V, H, W, 4] with V = len(cameras) = {len(cameras)}, got {rgba.shape}")
    if rgba.shape[1:3] != (cameras.height, cameras.width):
        raise ValueError(f"rgba images are {rgba.shape[1:3]} but cameras are {cameras.height} x {cameras.width}")
    if not 0 <= num_input_views <= len(cameras):
        raise ValueError(f"num_input_views must be in [0, {len(cameras)}], got {num_input_views}")
    pixels = np.round(np.clip(rgba, 0, 1) * 255).astype(np.uint8)
    camera_dict = dict(cameras.to_dict(), num_input_views=num_input_views)

    def write(tmp: Path) -> None:
        os.makedirs(tmp / RGBA_DIR)
        for i, image in enumerate(pixels):
            Image.fromarray(image, "RGBA").save(tmp / RGBA_DIR / (view_name(i) + ".png"))
        (tmp / CAMERAS_FILE).write_text(json.dumps(camera_dict))
        (tmp / CAPTION_FILE).write_text(caption.strip() + "\n", encoding="utf-8")
        if mesh is not None:
            to_gltf_axes(mesh).export(str(tmp / MESH_FILE))  # +y up, as glTF says
        if metadata is not None:
            (tmp / OBJECT_FILE).write_text(json.dumps(metadata, indent=1))

    final = os.path.join(root, object_id)
    atomic_write_folder(final, write)
    return final


# ---------------------------------------------------------------------------------- reading
@dataclass
class ObjectFolder:
    """A checked object folder.

    Args:
        path: the folder.
        kind: ``"multiview"`` (this package's format) or ``"zero123"``.
        images: one PNG path a view.
        poses: ``zero123``: one ``.npy`` path a view; ``multiview``: empty.
        cameras: ``multiview``: the ``[V]`` cameras of ``cameras.json``; ``zero123``: None (the
            image size is known once the images are read).
        num_input_views: views at the front that are fixed input views (``zero123``: all of them).
        caption: the caption, ``""`` for a zero123 folder without ``caption.txt``.
    """

    path: str
    kind: str
    images: List[str]
    poses: List[str]
    cameras: Optional[Cameras]
    num_input_views: int
    caption: str

    @property
    def num_views(self) -> int:
        return len(self.images)


def _read_caption(path: str, required: bool) -> str:
    """The stripped text of ``caption.txt``; ``""`` if it is missing and not ``required``."""
    if not os.path.isfile(path):
        if required:
            raise ObjectFolderError(path, "missing")
        return ""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ObjectFolderError(path, f"cannot read caption ({error})") from error


def _read_cameras_json(path: str) -> tuple:
    """``(Cameras, num_input_views)`` from ``cameras.json``, checked."""
    if not os.path.isfile(path):
        raise ObjectFolderError(path, "missing")
    try:
        with open(path) as f:
            data = json.load(f)
        cameras = Cameras.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ObjectFolderError(path, f"not a valid cameras file ({type(error).__name__}: {error})") from error
    if data.get("convention", "opencv") != "opencv":
        raise ObjectFolderError(path, f"convention must be 'opencv', got {data['convention']!r}")
    if cameras.world_to_camera.dim() != 3 or len(cameras) == 0:
        raise ObjectFolderError(path, "holds no views")
    if not (torch.isfinite(cameras.world_to_camera).all() and torch.isfinite(cameras.intrinsics).all()):
        raise ObjectFolderError(path, "holds non-finite camera values")
    num_input = data.get("num_input_views", len(cameras))
    if not isinstance(num_input, int) or not 0 <= num_input <= len(cameras):
        raise ObjectFolderError(path, f"num_input_views must be an integer in [0, {len(cameras)}], got {num_input!r}")
    return cameras, num_input


def _open_multiview(path: str) -> ObjectFolder:
    """Check a folder of this package's format: cameras.json, one PNG a view, caption.txt."""
    cameras, num_input = _read_cameras_json(os.path.join(path, CAMERAS_FILE))
    images = [os.path.join(path, RGBA_DIR, view_name(i) + ".png") for i in range(len(cameras))]
    present = set(os.listdir(os.path.join(path, RGBA_DIR))) if os.path.isdir(os.path.join(path, RGBA_DIR)) else set()
    for image in images:
        if os.path.basename(image) not in present:
            raise ObjectFolderError(image, f"missing ({len(cameras)} views in {CAMERAS_FILE})")
    caption = _read_caption(os.path.join(path, CAPTION_FILE), required=True)
    return ObjectFolder(path, "multiview", images, [], cameras, num_input, caption)


def _open_zero123(path: str, names: List[str]) -> ObjectFolder:
    """Check a zero123-style folder: ``NNN.png`` + ``NNN.npy`` pairs numbered from 000."""
    stems = sorted(n[:-4] for n in names if n.endswith(".npy"))
    for i, stem in enumerate(stems):
        if stem != view_name(i):
            raise ObjectFolderError(os.path.join(path, view_name(i) + ".npy"), "missing (views must be numbered from 000)")
        if stem + ".png" not in names:
            raise ObjectFolderError(os.path.join(path, stem + ".png"), "missing")
    images = [os.path.join(path, s + ".png") for s in stems]
    poses = [os.path.join(path, s + ".npy") for s in stems]
    caption = _read_caption(os.path.join(path, CAPTION_FILE), required=False)
    return ObjectFolder(path, "zero123", images, poses, None, len(stems), caption)


def open_object(path: str) -> ObjectFolder:
    """Check the object folder ``path`` (either format) without decoding its images.

    A folder with ``cameras.json`` or ``rgba/`` is read as this package's format, one with
    ``000.npy`` as zero123's; anything else is reported as missing its ``cameras.json``.
    """
    if not os.path.isdir(path):
        raise ObjectFolderError(path, "not a folder")
    names = set(os.listdir(path))
    if CAMERAS_FILE in names or RGBA_DIR in names or view_name(0) + ".npy" not in names:
        return _open_multiview(path)
    return _open_zero123(path, sorted(names))


def read_rgba(path: str, size: Optional[tuple] = None) -> np.ndarray:
    """``[H, W, 4]`` float32 in 0..1 (straight alpha) from an RGBA PNG, checked.

    Args:
        size: the expected ``(height, width)``; a different size raises.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("RGBA", "LA", "P") or (image.mode == "P" and "transparency" not in image.info):
                raise ObjectFolderError(path, f"has no alpha channel (mode {image.mode}); views must be RGBA")
            pixels = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    except ObjectFolderError:
        raise
    except (OSError, ValueError, SyntaxError) as error:  # PIL reports truncated / corrupt files so
        raise ObjectFolderError(path, f"cannot decode image ({error})") from error
    if size is not None and pixels.shape[:2] != tuple(size):
        raise ObjectFolderError(path, f"is {pixels.shape[0]} x {pixels.shape[1]}, expected {size[0]} x {size[1]}")
    return pixels


def read_zero123_cameras(folder: ObjectFolder, views: List[int], height: int, width: int, fov: float) -> Cameras:
    """Cameras of ``views`` of a zero123 folder: each ``.npy`` a 3x4 RT, intrinsics from ``fov`` (vertical, degrees)."""
    poses = []
    for i in views:
        try:
            rt = np.load(folder.poses[i])
        except (OSError, ValueError) as error:
            raise ObjectFolderError(folder.poses[i], f"cannot read pose ({error})") from error
        if rt.shape != (3, 4) or not np.isfinite(rt).all():
            raise ObjectFolderError(folder.poses[i], f"must hold a finite 3x4 RT matrix, got shape {rt.shape}")
        poses.append(rt)
    intrinsics = intrinsics_from_fov(fov, height, width)
    return Cameras.from_zero123(torch.as_tensor(np.stack(poses), dtype=torch.float32), intrinsics, height, width)
