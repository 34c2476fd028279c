"""``diffusers-mv3d render``: render a split of the procedural world, or a folder of user meshes, to disk.

Multi-view splits (``chairs3d``, ``objects3d``, ``eval3d``) and user meshes become object folders
(docs/data_format.md): ``num_input_views`` fixed views (elevation 20, azimuths evenly spaced) then
random supervision views. ``foundation2d`` becomes an imagefolder for the 2D model: one random-pose
render an object, over white, listed in ``metadata.jsonl``.

Runs are resumable: an object folder appears (by rename) only when complete, and foundation images
are written in chunks whose ``chunks/*.jsonl`` appears only when the chunk is complete; a rerun
skips what is complete and redoes the rest. ``render.json`` records the settings of a folder; a
rerun with different settings is refused.

    diffusers-mv3d render --split chairs3d --num-objects 200 --resolution 64 --out data/chairs3d
    diffusers-mv3d render --split foundation2d --num-objects 20000 --resolution 32 --out data/foundation2d
    diffusers-mv3d render --mesh-dir my_meshes/ --out data/my_objects
"""

import argparse
import dataclasses
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..cameras import Cameras, default_cameras
from ..io_utils import atomic_write_text
from .format import TMP_PREFIX, write_object
from .render import MESH_EXTENSIONS, UP_AXIS_CHOICES, load_mesh, random_cameras, render_views
from .splits import SPLITS, split_entry
from .world import generate_object

CHUNK_SIZE = 256  # foundation2d images a resumable chunk
SETTINGS_FILE = "render.json"


@dataclass
class RenderConfig:
    """Settings of one ``render`` run."""

    out: str  # output folder
    split: Optional[str] = None  # a split of SPLITS, or None with mesh_dir
    mesh_dir: Optional[str] = None  # a folder of user meshes (searched recursively), or None with split
    num_objects: Optional[int] = None  # objects of the split to render (the first N)
    resolution: int = 64  # image side in pixels
    num_views: int = 16  # views an object (multi-view outputs)
    num_input_views: int = 8  # the first views: elevation 20, azimuths evenly spaced; the rest random
    seed: int = 0  # split seed (which objects) and camera seed
    workers: int = 2  # processes; 1 renders in this process
    antialias: int = 2  # a x a colour rays a pixel
    save_mesh: bool = True  # write mesh.glb into each object folder
    up_axis: str = "auto"  # --mesh-dir files' up axis, turned to +z; auto: +y for glTF, +z otherwise

    def check(self) -> None:
        """Raise ValueError naming the flag of an invalid setting."""
        if (self.split is None) == (self.mesh_dir is None):
            raise ValueError("give exactly one of --split and --mesh-dir")
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"--split must be one of {sorted(SPLITS)}, got {self.split!r}")
        if self.split is not None and (self.num_objects is None or self.num_objects < 1):
            raise ValueError(f"--num-objects must be a positive integer with --split, got {self.num_objects}")
        if self.mesh_dir is not None and not os.path.isdir(self.mesh_dir):
            raise ValueError(f"--mesh-dir is not a folder: {self.mesh_dir}")
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise ValueError(f"--out {self.out} is a file, not a folder")
        if self.resolution < 1:
            raise ValueError(f"--resolution must be positive, got {self.resolution}")
        if not 1 <= self.num_input_views <= self.num_views:
            raise ValueError(f"--num-input-views must be in [1, --num-views={self.num_views}], got {self.num_input_views}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.antialias < 1:
            raise ValueError(f"--antialias must be >= 1, got {self.antialias}")
        if self.seed < 0:
            raise ValueError(f"--seed must be non-negative, got {self.seed}")
        if self.up_axis not in UP_AXIS_CHOICES:
            raise ValueError(f"--up-axis must be one of {UP_AXIS_CHOICES}, got {self.up_axis!r}")


@dataclass
class RenderStats:
    """What a run did: objects rendered now, skipped as already complete, failed; seconds; bytes under ``out``."""

    rendered: int
    skipped: int
    failed: int
    seconds: float
    bytes_on_disk: int


# ---------------------------------------------------------------------------------- one object
def object_cameras(config: RenderConfig, camera_seed: int) -> Cameras:
    """The fixed input cameras followed by seeded random supervision cameras."""
    fixed = default_cameras(config.num_input_views, config.resolution)
    extra = config.num_views - config.num_input_views
    if extra == 0:
        return fixed
    return Cameras.cat([fixed, random_cameras(extra, config.resolution, np.random.default_rng(camera_seed))])


def _write_multiview(config: RenderConfig, object_id: str, mesh, caption: str, camera_seed: int, metadata: Dict) -> None:
    """Render ``mesh`` from :func:`object_cameras` and write its object folder."""
    cameras = object_cameras(config, camera_seed)
    out = render_views(mesh, cameras, background="transparent", antialias=config.antialias)
    write_object(
        config.out, object_id, out.rgba, cameras, caption, config.num_input_views,
        mesh=mesh if config.save_mesh else None, metadata=metadata,
    )


def _split_task(config: RenderConfig, index: int) -> Optional[str]:
    """Render object ``index`` of a multi-view split; returns None (no failure)."""
    object_id, category, colour, object_seed = split_entry(config.split, index, config.seed)
    obj = generate_object(category, object_seed, colour)
    metadata = dict(object_id=object_id, split=config.split, split_seed=config.seed, index=index, seed=object_seed,
                    category=category, colour=colour, caption=obj.caption, attributes=obj.attributes)
    _write_multiview(config, object_id, obj.mesh, obj.caption, object_seed, metadata)
    return None


def _mesh_task(config: RenderConfig, item: Tuple[str, str]) -> Optional[str]:
    """Render one user mesh ``(object_id, path)``; returns an error message instead of raising."""
    object_id, path = item
    try:
        mesh = load_mesh(path, up_axis=config.up_axis)
    except (ValueError, FileNotFoundError) as error:
        return str(error)
    caption = mesh_caption(path)
    camera_seed = zlib.crc32(object_id.encode()) + config.seed
    _write_multiview(config, object_id, mesh, caption, camera_seed, dict(object_id=object_id, source=os.path.abspath(path)))
    return None


def _foundation_task(config: RenderConfig, chunk: Tuple[int, int]) -> Optional[str]:
    """Render foundation2d objects ``[start, stop)``: one random-pose image each, then the chunk's jsonl."""
    start, stop = chunk
    records = []
    for index in range(start, stop):
        object_id, category, colour, object_seed = split_entry("foundation2d", index, config.seed)
        obj = generate_object(category, object_seed, colour)
        cameras = random_cameras(1, config.resolution, np.random.default_rng(object_seed))
        rgb = render_views(obj.mesh, cameras, background="white", antialias=config.antialias).rgba[0, :, :, :3]
        file_name = f"images/{index:06d}.png"
        Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB").save(os.path.join(config.out, file_name))
        records.append(dict(file_name=file_name, text=obj.caption, category=category, colour=colour, object_id=object_id))
    atomic_write_text(_chunk_path(config.out, start, stop), "".join(json.dumps(r) + "\n" for r in records))
    return None


# ---------------------------------------------------------------------------------- helpers
def mesh_caption(path: str) -> str:
    """A user mesh's caption: ``<name>.txt`` beside it if present, else its file name in words."""
    sidecar = os.path.splitext(path)[0] + ".txt"
    if os.path.isfile(sidecar):
        with open(sidecar, encoding="utf-8") as f:
            return f.read().strip()
    return re.sub(r"[_\-.]+", " ", os.path.splitext(os.path.basename(path))[0]).strip()


def find_meshes(mesh_dir: str) -> List[Tuple[str, str]]:
    """``(object_id, path)`` of every mesh file under ``mesh_dir``, sorted; ids are relative paths
    without extension, with separators and unusual characters turned into ``_``."""
    found = []
    for folder, _, names in os.walk(mesh_dir):
        for name in names:
            if name.lower().endswith(MESH_EXTENSIONS):
                path = os.path.join(folder, name)
                stem = os.path.splitext(os.path.relpath(path, mesh_dir))[0]
                found.append((re.sub(r"[^A-Za-z0-9_.-]+", "_", stem.replace(os.sep, "_")), path))
    if not found:
        raise ValueError(f"--mesh-dir {mesh_dir} holds no mesh files ({', '.join(MESH_EXTENSIONS)}), searched recursively")
    ids = [object_id for object_id, _ in found]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"--mesh-dir holds meshes that map to the same object id: {duplicates}")
    return sorted(found)


def _chunk_path(out: str, start: int, stop: int) -> str:
    return os.path.join(out, "chunks", f"{start:07d}-{stop:07d}.jsonl")


def _disk_bytes(root: str) -> int:
    """Total size of the files under ``root``."""
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(root) for n in names)


def _check_settings(config: RenderConfig) -> None:
    """Write ``render.json``, or refuse to mix a rerun with different settings into ``config.out``."""
    keys = ("split", "mesh_dir", "resolution", "num_views", "num_input_views", "seed", "antialias", "save_mesh", "up_axis")
    settings = {k: getattr(config, k) for k in keys}
    if settings["mesh_dir"] is not None:
        settings["mesh_dir"] = os.path.abspath(settings["mesh_dir"])
    else:
        del settings["up_axis"]  # procedural objects are +z up
    if settings["split"] == "foundation2d":
        for key in ("num_views", "num_input_views", "save_mesh"):
            del settings[key]
    path = os.path.join(config.out, SETTINGS_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            previous = json.load(f)
        changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        if changed:
            raise ValueError(
                f"{path}: --out holds a render with other settings ({', '.join(f'{k}: {previous.get(k)!r} -> {settings.get(k)!r}' for k in changed)}); "
                "use another --out"
            )
    else:
        atomic_write_text(path, json.dumps(settings, indent=1) + "\n")


def _worker_init() -> None:
    """One thread a worker process: the workers already fill the cores."""
    import torch

    torch.set_num_threads(1)


def _context():
    """Fork where the platform has it: workers start at once, without importing the package again
    (seconds with torch and diffusers); they use torch only for small single-threaded camera maths."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _run(task: Callable, config: RenderConfig, items: Sequence, description: str) -> List[str]:
    """Run ``task(config, item)`` over ``items`` with a progress bar; returns the failure messages."""
    failures = []
    bar = tqdm(total=len(items), desc=description, unit="task", smoothing=0.05)
    if config.workers == 1 or len(items) <= 1:
        results = (task(config, item) for item in items)
        pool = None
    else:
        pool = _context().Pool(min(config.workers, len(items)), initializer=_worker_init)
        results = pool.imap_unordered(_Bound(task, config), items, chunksize=1)
    try:
        for message in results:
            if message is not None:
                failures.append(message)
                warnings.warn(message)
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return failures


@dataclass
class _Bound:
    """``task`` with ``config`` bound, picklable for the worker processes."""

    task: Callable
    config: RenderConfig

    def __call__(self, item):
        return self.task(self.config, item)


# ---------------------------------------------------------------------------------- runs
def render(config: RenderConfig) -> RenderStats:
    """Render what ``config`` asks for into ``config.out`` (resuming a previous run there)."""
    config.check()
    os.makedirs(config.out, exist_ok=True)
    _check_settings(config)
    for name in os.listdir(config.out):  # half-written objects of an interrupted run
        if name.startswith(TMP_PREFIX):
            shutil.rmtree(os.path.join(config.out, name), ignore_errors=True)
    start = time.time()
    if config.split == "foundation2d":
        done, total, failures = _render_foundation(config)
    else:
        if config.split is not None:
            entries = [(i, split_entry(config.split, i, config.seed)[0]) for i in range(config.num_objects)]
            todo = [i for i, object_id in entries if not os.path.isdir(os.path.join(config.out, object_id))]
            task, description = _split_task, config.split
        else:
            entries = find_meshes(config.mesh_dir)
            todo = [e for e in entries if not os.path.isdir(os.path.join(config.out, e[0]))]
            task, description = _mesh_task, "meshes"
        failures = _run(task, config, todo, description)
        done, total = len(todo), len(entries)
    return RenderStats(done - len(failures), total - done, len(failures), time.time() - start, _disk_bytes(config.out))


def _render_foundation(config: RenderConfig) -> Tuple[int, int, List[str]]:
    """Render missing foundation2d chunks, then write ``metadata.jsonl``; returns (rendered, total, failures)."""
    os.makedirs(os.path.join(config.out, "images"), exist_ok=True)
    os.makedirs(os.path.join(config.out, "chunks"), exist_ok=True)
    chunks = [(s, min(s + CHUNK_SIZE, config.num_objects)) for s in range(0, config.num_objects, CHUNK_SIZE)]
    todo = [c for c in chunks if not os.path.isfile(_chunk_path(config.out, *c))]
    failures = _run(_foundation_task, config, todo, "foundation2d chunks")
    lines = []
    for chunk in chunks:
        with open(_chunk_path(config.out, *chunk), encoding="utf-8") as f:
            lines.append(f.read())
    atomic_write_text(os.path.join(config.out, "metadata.jsonl"), "".join(lines))
    return sum(stop - start for start, stop in todo), config.num_objects, failures


# ---------------------------------------------------------------------------------- command line
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``diffusers-mv3d render``."""
    defaults = RenderConfig(out="")
    parser = subparsers.add_parser(
        "render",
        help="render a split of the procedural world or a folder of meshes to disk",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--split", choices=sorted(SPLITS), help="a split of the procedural world")
    source.add_argument("--mesh-dir", help="a folder of .obj/.glb/.gltf/.ply/.stl/.off meshes (recursive)")
    parser.add_argument("--out", required=True, help="output folder (a rerun resumes it)")
    parser.add_argument("--num-objects", type=int, help="objects of the split to render (required with --split)")
    parser.add_argument("--resolution", type=int, default=defaults.resolution, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--num-views", type=int, default=defaults.num_views, help="views an object (default: %(default)s)")
    parser.add_argument("--num-input-views", type=int, default=defaults.num_input_views,
                        help="fixed input views among them: elevation 20, azimuths evenly spaced (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="which objects, and the random cameras (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="processes (default: %(default)s)")
    parser.add_argument("--antialias", type=int, default=defaults.antialias, help="a x a colour rays a pixel (default: %(default)s)")
    parser.add_argument("--no-mesh", dest="save_mesh", action="store_false", help="do not write mesh.glb")
    parser.add_argument("--up-axis", choices=UP_AXIS_CHOICES, default=defaults.up_axis,
                        help="--mesh-dir files' up axis, turned to the world's +z; auto: +y for .glb/.gltf "
                             "(their spec), +z for formats without a convention (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved settings and exit")
    parser.set_defaults(func=_main)
    return parser


def _main(args: argparse.Namespace) -> int:
    """Run the ``render`` command; returns the exit status."""
    fields = {f.name for f in dataclasses.fields(RenderConfig)}
    config = RenderConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        config.check()
        if args.dry_run:
            print(json.dumps(dataclasses.asdict(config), indent=1))
            return 0
        stats = render(config)
    except ValueError as error:  # a user error: bad flags, or --out holding another render
        print(f"diffusers-mv3d render: error: {error}", file=sys.stderr)
        return 2
    rate = stats.rendered / max(stats.seconds, 1e-9)
    print(
        f"rendered {stats.rendered}, skipped {stats.skipped} (complete), failed {stats.failed} in {stats.seconds:.1f} s "
        f"({rate:.2f} objects/s); {stats.bytes_on_disk / 1e6:.1f} MB in {config.out}"
    )
    return 1 if stats.failed else 0
