"""Foundation v2's learning curve: fidelity figures against CPU-hours, as a PNG (PIL only).

Reads a CSV with one row per scored checkpoint and guidance scale (``step, cpu_hours, cfg, category,
colour, white_bg``: the figures of ``benchmarks/score_foundations.py``; ``docs/foundation_v2_progress.csv``
holds them) and draws each figure against CPU-hours, one line per guidance scale (the smallest thick,
the others thin), with the ground-truth renders' values as dashed lines.

    python benchmarks/plot_learning_curve.py docs/foundation_v2_progress.csv --out docs/foundation_v2_learning_curve.png
"""

import argparse
import csv
from typing import Dict, List, Tuple

from PIL import Image, ImageDraw

SERIES = {"category": (200, 60, 40), "colour": (40, 110, 200), "white_bg": (60, 150, 60)}
GROUND_TRUTH = {"category": 0.88, "colour": 0.97, "white_bg": 1.00}
"""The same scoring on renders of the same objects (docs/training.md)."""
SIZE, MARGIN = (640, 400), (60, 30, 150, 50)  # left, top, right, bottom


def read_rows(path: str) -> List[Dict[str, float]]:
    with open(path, newline="") as handle:
        rows = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return sorted(rows, key=lambda row: row["cpu_hours"])


def plot(rows: List[Dict[str, float]]) -> Image.Image:
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = MARGIN
    width, height = SIZE[0] - left - right, SIZE[1] - top - bottom
    x_max = max(1.0, max(row["cpu_hours"] for row in rows) * 1.1)

    def at(hours: float, value: float) -> Tuple[float, float]:
        return left + width * hours / x_max, top + height * (1.0 - value)

    draw.rectangle([left, top, left + width, top + height], outline="black")
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = at(0, tick)[1]
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((left - 34, y - 6), f"{tick:.2f}", fill="black")
    for hour in range(int(x_max) + 1):
        x = at(hour, 0)[0]
        draw.line([x, top + height, x, top + height + 4], fill="black")
        draw.text((x - 3, top + height + 8), str(hour), fill="black")
    draw.text((left + width / 2 - 90, top + height + 26), "CPU-hours (after the v1 foundation)", fill="black")
    scales = sorted({row["cfg"] for row in rows})
    for row_index, (name, colour) in enumerate(SERIES.items()):
        truth_y = at(0, GROUND_TRUTH[name])[1]
        for x in range(left, left + width, 8):  # dashed: the ground truth's value
            draw.line([x, truth_y, min(x + 4, left + width), truth_y], fill=colour)
        for scale in scales:
            points = [at(row["cpu_hours"], row[name]) for row in rows if row["cfg"] == scale]
            thick = scale == scales[0]
            draw.line(points, fill=colour, width=3 if thick else 1)
            for x, y in points:
                radius = 3 if thick else 2
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
        draw.text((left + width + 12, top + 10 + 18 * row_index), f"{name} (dashed: renders)", fill=colour)
    legend = ", ".join(f"CFG {scale:g}" for scale in scales[1:])
    draw.text((left + width + 12, top + 10 + 18 * len(SERIES)), f"thick: CFG {scales[0]:g}", fill="black")
    if legend:
        draw.text((left + width + 12, top + 28 + 18 * len(SERIES)), f"thin: {legend}", fill="black")
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", help="CSV: step, cpu_hours, cfg, category, colour, white_bg")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()
    plot(read_rows(args.table)).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
