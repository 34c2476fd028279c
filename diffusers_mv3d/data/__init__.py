"""The procedural 3D world, its renderer and the multi-view dataset format (DESIGN.md §5)."""

from .dataset import ImageTextDataset, MultiViewDataset, collate_multiview
from .palette import PALETTE
from .render import RenderOutput, load_mesh, render_views
from .splits import SPLITS, is_in_3d_split, split_objects
from .world import CATEGORIES, ProceduralObject, generate_object

__all__ = [
    "PALETTE",
    "CATEGORIES",
    "ProceduralObject",
    "generate_object",
    "SPLITS",
    "split_objects",
    "is_in_3d_split",
    "render_views",
    "RenderOutput",
    "load_mesh",
    "MultiViewDataset",
    "ImageTextDataset",
    "collate_multiview",
]
