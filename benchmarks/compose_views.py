"""One picture of the views ``bench_quality.py --views-dir DIR`` saved: for each chosen prompt, a row of
views per variant (the variant's name on the left), upscaled without smoothing.

    python benchmarks/compose_views.py --views-dir outputs/views --prompts 0 4 8 \\
        --variants foundation tunemv3d mvdream finetune ground-truth --out docs/quality_views.png
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
    width = max(image.width for _, image in rows) * scale
    height = rows[0][1].height * scale
    sheet = Image.new("RGB", (label_width + width, height * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (variant, image) in enumerate(rows):
        sheet.paste(image.resize((image.width * scale, image.height * scale), Image.NEAREST), (label_width, i * height))
        draw.text((4, i * height + height // 2 - 5), variant, fill="black")
    return sheet


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views-dir", type=Path, required=True, help="bench_quality.py's --views-dir")
    parser.add_argument("--prompts", type=int, nargs="+", required=True, help="prompt indices (benchmarks/prompts.py order)")
    parser.add_argument("--variants", nargs="+", required=True, help="variants, one row each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=2, help="pixel upscaling")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    sheet = compose(args.views_dir, args.prompts, args.variants, args.seed, args.scale)
    atomic_write(args.out, lambda tmp: sheet.save(tmp, format="PNG"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
