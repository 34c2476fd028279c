"""A contact sheet of random objects of the procedural world with their captions (docs/contact_sheet.png).

    python -m diffusers_mv3d.data.contact_sheet --out docs/contact_sheet.png

Objects are the first ``--num-objects`` of a split (``foundation2d`` by default: every category and
colour), each rendered once from elevation 20 and azimuth 30. Captions of combinations kept out of
every 3D split (the creativity test) are marked "2D only".
"""

import argparse
import textwrap
from typing import List, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..cameras import Cameras
from .render import render_views
from .splits import SPLITS, is_in_3d_split, split_objects

_CAPTION_LINES = 4
_CHARS_A_LINE = 30


def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` pixels (the fixed-size bitmap font on old Pillow)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def contact_sheet(split: str = "foundation2d", num_objects: int = 24, columns: int = 6, tile: int = 192, seed: int = 0) -> Image.Image:
    """The contact sheet as a PIL image: ``num_objects`` renders of ``tile`` pixels, captions below."""
    if num_objects < 1 or columns < 1:
        raise ValueError(f"num_objects and columns must be positive, got {num_objects} and {columns}")
    font, line_height = _font(13), 16
    cameras = Cameras.orbit(20.0, [30.0], height=tile)
    rows = -(-num_objects // columns)
    cell_height = tile + line_height * _CAPTION_LINES + 8
    sheet = Image.new("RGB", (columns * tile, rows * cell_height), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (object_id, obj) in enumerate(split_objects(split, num_objects, seed)):
        x, y = (k % columns) * tile, (k // columns) * cell_height
        rgb = render_views(obj.mesh, cameras, antialias=3).rgba[0, :, :, :3]
        sheet.paste(Image.fromarray(np.round(rgb * 255).astype(np.uint8)), (x, y))
        lines = textwrap.wrap(obj.caption, _CHARS_A_LINE)[:_CAPTION_LINES]
        for n, line in enumerate(lines):
            draw.text((x + 6, y + tile + n * line_height), line, fill=(20, 20, 20), font=font)
        if not is_in_3d_split(obj.category, obj.colour):
            draw.text((x + 6, y + 4), "2D only", fill=(200, 0, 0), font=font)
    return sheet


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--split", default="foundation2d", choices=sorted(SPLITS), help="split to draw from (default: %(default)s)")
    parser.add_argument("--num-objects", type=int, default=24, help="objects on the sheet (default: %(default)s)")
    parser.add_argument("--columns", type=int, default=6, help="objects a row (default: %(default)s)")
    parser.add_argument("--tile", type=int, default=192, help="render size in pixels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="split seed: which objects (default: %(default)s)")
    args = parser.parse_args(argv)
    contact_sheet(args.split, args.num_objects, args.columns, args.tile, args.seed).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
