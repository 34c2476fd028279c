"""Captions for image-to-multiview references: the caption of the most similar training object.

Image-to-multiview follows the reference's object far better with a caption that names its parts and
size than with none or with a bare ``"a <colour> <category>"`` (docs/results.md, "Captions for
image-to-multiview"). :class:`RetrievalCaptioner` keeps, for each object of a training set, its view
0 (the camera a reference image stands for) as a small key and its caption. A reference is captioned
with the caption of the key nearest to it:

    d(q, k) = ||m_q - m_k||^2 + pixel_weight * ||x_q - x_k||^2,

``m`` the foreground mask (against the image's border colour, area-resized to ``key_size``) and ``x``
the image in ``[0, 1]`` resized the same way: the silhouette picks the shape, the pixels break ties by
colour and shading. The main colour word of the caption is then replaced by the colour the caller
names (the attribute classifier's), which is more reliable than the nearest key's colour.

A captioner only knows the objects it was built from: categories its training set lacks come out as
the nearest category it has. :func:`build_captioner` (``diffusers-mv3d build-captioner``) makes one
from rendered object folders; a :class:`~diffusers_mv3d.TuneMV3DPipeline` carries it as its optional
``captioner`` component.
"""

import argparse
import json
import os
import re
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from tqdm.auto import tqdm

from .data.dataset import rgba_to_tensors
from .data.format import ObjectFolderError, open_object, read_rgba
from .io_utils import atomic_write_folder, atomic_write_text

PathLike = Union[str, os.PathLike]

__all__ = ["RetrievalCaptioner", "add_to_pipeline", "build_captioner", "caption_references", "recolour_caption"]


def recolour_caption(caption: str, colour: str, new_colour: str) -> str:
    """``caption`` with the word ``colour`` replaced by ``new_colour`` and its articles fixed
    ("an orange mug", orange -> red: "a red mug"); unchanged when ``colour`` is empty or absent."""
    if not colour or colour == new_colour:
        return caption
    caption = re.sub(rf"\b{re.escape(colour)}\b", new_colour, caption)
    caption = re.sub(r"\b([Aa])n (?=[^aeiou\W])", r"\1 ", caption)
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", caption)


class RetrievalCaptioner(ModelMixin, ConfigMixin):
    """Nearest-neighbour captions from a set of captioned training views (module docstring).

    Args:
        captions: one caption an entry.
        colours: each entry's main colour word as its caption writes it, ``""`` when unknown (its
            caption is then never recoloured).
        key_size: side of the stored keys in pixels.
        pixel_weight: weight of the pixel distance beside the silhouette distance.
        mask_threshold: ``foreground_masks``' threshold for the silhouettes.
        data_dir: the object folders it was built from (recorded by :func:`build_captioner`).
    """

    @register_to_config
    def __init__(
        self,
        captions: Sequence[str] = ("",),
        colours: Optional[Sequence[str]] = None,
        key_size: int = 16,
        pixel_weight: float = 0.3,
        mask_threshold: float = 0.05,
        data_dir: Optional[str] = None,
    ):
        super().__init__()
        if len(captions) < 1:
            raise ValueError("captions must hold at least one caption")
        if colours is not None and len(colours) != len(captions):
            raise ValueError(f"colours must give one colour a caption, got {len(colours)} for {len(captions)} captions")
        if key_size < 1 or pixel_weight < 0:
            raise ValueError(f"key_size must be >= 1 and pixel_weight >= 0, got {key_size} and {pixel_weight}")
        self.register_to_config(captions=list(captions), colours=list(colours or [""] * len(captions)))
        # [N, 4, s, s]: the silhouette and the RGB image in [0, 1] of each entry (float32: a pipeline's
        # dtype is that of any one of its modules)
        self.register_buffer("view_keys", torch.zeros(len(captions), 4, key_size, key_size))

    def image_keys(self, images: torch.Tensor) -> torch.Tensor:
        """Keys ``[B, 4, s, s]`` (silhouette, RGB in [0, 1]) of ``images [B, 3, H, W]`` in ``[-1, 1]``."""
        from .evaluation.consistency import foreground_masks  # the evaluation package is not loaded with the pipeline

        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] in [-1, 1], got {tuple(images.shape)}")
        images = images.float()
        masks = foreground_masks(images, self.config.mask_threshold, background="border").float()[:, None]
        size = (self.config.key_size,) * 2
        return torch.cat([F.interpolate(masks, size=size, mode="area"),
                          F.interpolate((images + 1) / 2, size=size, mode="area")], dim=1)

    def nearest(self, images: torch.Tensor) -> torch.Tensor:
        """Index ``[B]`` of the entry nearest to each of ``images [B, 3, H, W]`` in ``[-1, 1]``."""
        query = self.image_keys(images)  # [B, 4, s, s]
        weights = torch.tensor([1.0] + [self.config.pixel_weight] * 3)[:, None, None]
        distances = (((query[:, None] - self.view_keys[None]) ** 2) * weights).flatten(2).sum(-1)  # [B, N]
        return distances.argmin(dim=1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, colours: Optional[Sequence[str]] = None) -> List[str]:
        """Captions of ``images [B, 3, H, W]`` in ``[-1, 1]``, each recoloured to ``colours[b]`` when given."""
        if colours is not None and len(colours) != images.shape[0]:
            raise ValueError(f"colours must give one colour an image, got {len(colours)} for {images.shape[0]} images")
        captions = []
        for b, index in enumerate(self.nearest(images).tolist()):
            caption = self.config.captions[index]
            if colours is not None:
                caption = recolour_caption(caption, self.config.colours[index], colours[b])
            captions.append(caption)
        return captions


def caption_references(images: torch.Tensor, classifier, captioner: Optional[RetrievalCaptioner] = None) -> List[str]:
    """Captions of reference images ``[B, 3, H, W]`` in ``[-1, 1]`` (white background): the ``captioner``'s,
    recoloured to the attribute ``classifier``'s colours, or without a captioner the classifier's
    ``"a <colour> <category>"`` (:func:`~diffusers_mv3d.evaluation.classifier.caption_images`)."""
    from .evaluation.classifier import caption_images, classify

    if captioner is None:
        return caption_images(classifier, images)
    _, colour_logits = classify(classifier, images)
    return captioner(images, [classifier.config.colours[i] for i in colour_logits.argmax(-1).tolist()])


def _object_colour(folder: str) -> str:
    """The main colour of a rendered object (``object.json``'s ``colour``), ``""`` without one."""
    path = os.path.join(folder, "object.json")
    if not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8") as f:
        return str(json.load(f).get("colour", ""))


def build_captioner(data_dir: str, key_size: int = 16, pixel_weight: float = 0.3,
                    progress: bool = True) -> RetrievalCaptioner:
    """A :class:`RetrievalCaptioner` over every object folder in ``data_dir`` (view 0 and ``caption.txt``;
    the main colour from ``object.json`` where the renderer wrote one)."""
    if not os.path.isdir(data_dir):
        raise ValueError(f"data_dir {data_dir!r} is not a folder")
    folders = sorted(os.path.join(data_dir, name) for name in os.listdir(data_dir)
                     if os.path.isdir(os.path.join(data_dir, name)))
    captions, colours, images = [], [], []
    for folder in tqdm(folders, desc="captioner", disable=not progress):
        try:
            obj = open_object(folder)
        except ObjectFolderError:
            continue  # not an object folder (e.g. a stray subfolder)
        if not obj.caption:
            raise ValueError(f"object folder {folder!r} has no caption; a captioner needs every object's caption")
        images.append(rgba_to_tensors(read_rgba(obj.images[0])[None])[0][0])  # over white, as references are taken
        captions.append(obj.caption)
        colours.append(_object_colour(folder))
    if not captions:
        raise ValueError(f"data_dir {data_dir!r} holds no object folders (diffusers-mv3d render writes them)")
    if len({tuple(image.shape) for image in images}) != 1:
        raise ValueError(f"the views 0 of {data_dir!r} differ in size; render them at one resolution")
    captioner = RetrievalCaptioner(captions, colours, key_size=key_size, pixel_weight=pixel_weight, data_dir=str(data_dir))
    captioner.view_keys.copy_(captioner.image_keys(torch.stack(images)))
    return captioner


def add_to_pipeline(captioner: RetrievalCaptioner, pipeline_dir: PathLike) -> Path:
    """Write ``captioner`` as the ``captioner/`` component of the saved pipeline folder ``pipeline_dir``
    and name it in its ``model_index.json`` (each file written atomically); returns the component folder."""
    index_path = Path(pipeline_dir) / "model_index.json"
    if not index_path.is_file():
        raise ValueError(f"--pipeline {str(pipeline_dir)!r} is not a saved pipeline folder (no model_index.json)")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    folder = atomic_write_folder(Path(pipeline_dir) / "captioner", captioner.save_pretrained)
    index["captioner"] = [RetrievalCaptioner.__module__, RetrievalCaptioner.__name__]
    atomic_write_text(index_path, json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    return folder


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "build-captioner",
        help="build the retrieval captioner of image-to-multiview references from rendered object folders",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="folder of object folders (diffusers-mv3d render --split objects3d)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="folder to write (config.json + safetensors), e.g. for "
                                                "assemble_pipeline.py --captioner")
    where.add_argument("--pipeline", type=Path, help="a saved pipeline folder to add it to as captioner/")
    parser.add_argument("--key-size", type=int, default=16, help="side of the stored keys in pixels")
    parser.add_argument("--pixel-weight", type=float, default=0.3, help="weight of the pixel distance beside the silhouette's")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.pipeline is not None and not (args.pipeline / "model_index.json").is_file():
        raise ValueError(f"--pipeline {str(args.pipeline)!r} is not a saved pipeline folder (no model_index.json)")
    captioner = build_captioner(args.data, args.key_size, args.pixel_weight)
    if args.pipeline is not None:
        folder = add_to_pipeline(captioner, args.pipeline)
    else:
        folder = atomic_write_folder(args.out, captioner.save_pretrained)
    print(f"captioner of {len(captioner.config.captions)} objects written to {folder}")
    return 0
