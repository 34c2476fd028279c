"""The named colours of the procedural world.

Every object has one *main* colour from :data:`PALETTE`, the one its caption names; secondary parts
(legs, trunks, wheels, caps) take colours from :data:`ACCENTS` or stay fixed (a snowman's carrot
nose is always orange). The colours are far apart under the renderer's Lambert shading, so an
attribute classifier can tell them apart from a 32-pixel render.
"""

from typing import Dict, Tuple

import numpy as np

# name -> linear RGB in 0..1
PALETTE: Dict[str, Tuple[float, float, float]] = {
    "red": (0.86, 0.08, 0.08),
    "orange": (1.00, 0.50, 0.05),
    "yellow": (0.98, 0.86, 0.10),
    "green": (0.15, 0.62, 0.18),
    "teal": (0.00, 0.50, 0.50),
    "cyan": (0.25, 0.85, 0.95),
    "blue": (0.10, 0.28, 0.90),
    "purple": (0.50, 0.18, 0.70),
    "pink": (1.00, 0.52, 0.72),
    "brown": (0.48, 0.28, 0.10),
    "black": (0.08, 0.08, 0.08),
    "white": (0.95, 0.95, 0.95),
    "grey": (0.52, 0.52, 0.52),
}

# colours for secondary parts (legs, frames, wheels); a generator picks one different from the main colour
ACCENTS: Tuple[str, ...] = ("black", "white", "grey", "brown")


def rgba(name: str) -> np.ndarray:
    """The ``uint8`` RGBA of a palette colour (what ``trimesh`` face colours hold)."""
    if name not in PALETTE:
        raise ValueError(f"colour must be one of {sorted(PALETTE)}, got {name!r}")
    return np.array([round(255 * c) for c in PALETTE[name]] + [255], dtype=np.uint8)
