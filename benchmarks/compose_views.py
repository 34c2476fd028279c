"""One picture of the views ``bench_quality.py --views-dir DIR`` saved: for each chosen prompt, a row of
views per variant (the variant's name on the left), upscaled without smoothing. With
``--image-to-multiview``, the image-to-multiview views ``diffusers-mv3d evaluate --out DIR`` saved in
``DIR/views``: each object's generated views (view 0 the reference) above its renders.

    python benchmarks/compose_views.py --views-dir outputs/views --prompts 0 4 8 \\
        --variants foundation tunemv3d mvdream finetune ground-truth --out docs/quality_views.png
    python benchmarks/compose_views.py --views-dir runs/eval/views --image-to-multiview --out docs/i2mv.png
"""

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from diffusers_mv3d.io_utils import atomic_write


def compose(views_dir: Path, prompts, variants, seed: int, scale: int, label_width: int = 90) -> Image.Image:
    """Rows ``{views_dir}/{variant}/{prompt:02d}-s{seed}.png`` stacked by prompt, then variant."""
    rows = []
    for prompt in prompts:
        for variant in variants:
            path = views_dir / variant / f"{prompt:02d}-s{seed}.png"
            if not path.is_file():
                raise SystemExit(f"--views-dir: no {path} (was --variants {variant} in the bench_quality run?)")
            rows.append((variant, Image.open(path).convert("RGB")))
    return sheet_of(rows, scale, label_width)


def compose_image_to_multiview(views_dir: Path, scale: int, label_width: int = 130) -> Image.Image:
    """Rows ``{views_dir}/image-to-multiview/{object_id}.png`` (generated), each above ``{object_id}-renders.png``."""
    folder = views_dir / "image-to-multiview"
    generated = sorted(p for p in folder.glob("*.png") if not p.stem.endswith("-renders"))
    if not generated:
        raise SystemExit(f"--views-dir: no image-to-multiview views in {folder} (was --image-to-multiview N given?)")
    rows = []
    for path in generated:
        rows += [(path.stem, Image.open(path).convert("RGB")),
                 ("renders", Image.open(path.with_name(f"{path.stem}-renders.png")).convert("RGB"))]
    return sheet_of(rows, scale, label_width)


def sheet_of(rows, scale: int, label_width: int) -> Image.Image:
    """``rows`` of ``(label, image)`` stacked, each image upscaled ``scale`` times, its label on the left."""
    width = max(image.width for _, image in rows) * scale
    height = rows[0][1].height * scale
    sheet = Image.new("RGB", (label_width + width, height * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, image) in enumerate(rows):
        sheet.paste(image.resize((image.width * scale, image.height * scale), Image.NEAREST), (label_width, i * height))
        draw.text((4, i * height + height // 2 - 5), label, fill="black")
    return sheet


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views-dir", type=Path, required=True, help="bench_quality.py's --views-dir")
    parser.add_argument("--prompts", type=int, nargs="+", help="prompt indices (benchmarks/prompts.py order)")
    parser.add_argument("--variants", nargs="+", help="variants, one row each")
    parser.add_argument("--image-to-multiview", action="store_true",
                        help="the image-to-multiview views of an evaluate run instead of prompts x variants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=2, help="pixel upscaling")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    if args.image_to_multiview:
        sheet = compose_image_to_multiview(args.views_dir, args.scale)
    elif args.prompts and args.variants:
        sheet = compose(args.views_dir, args.prompts, args.variants, args.seed, args.scale)
    else:
        parser.error("give --prompts and --variants, or --image-to-multiview")
    atomic_write(args.out, lambda tmp: sheet.save(tmp, format="PNG"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
