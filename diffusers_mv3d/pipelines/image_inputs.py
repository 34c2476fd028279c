"""Reference images of every common type -> float arrays in [0, 1] (:meth:`TuneMV3DPipeline.preprocess_image`)."""

import numpy as np
import PIL.Image

__all__ = ["array_to_unit_float", "pil_to_unit_float"]


def pil_to_unit_float(image: PIL.Image.Image) -> np.ndarray:
    """Any PIL image -> ``[H, W, 3]`` float32 in [0, 1] (RGBA composited on white; 16/32-bit greyscale
    scaled from its full range, where ``convert("RGB")`` would clip it to white)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(image, dtype=np.float64) / 65535.0  # PNG's 16-bit greyscale opens as I;16 or I
        return np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=-1).astype(np.float32)
    if image.mode == "F":
        return np.repeat(np.asarray(image, dtype=np.float32)[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        white = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(white, image.convert("RGBA"))
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def array_to_unit_float(array: np.ndarray, name: str) -> np.ndarray:
    """An image array ``[H, W, 3]`` -> float32 in [0, 1]: uint8 / uint16 scaled, floats checked."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must hold uint8, uint16 or float values, got {array.dtype}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    if array.min() < 0.0 or array.max() > 1.0:
        raise ValueError(f"{name} float values must lie in [0, 1], got [{array.min():.3g}, {array.max():.3g}] "
                         "(uint8 arrays may hold 0..255)")
    return array
