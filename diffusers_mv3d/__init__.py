"""diffusers-mv3d: TuneMV3D multi-view 3D generation as a diffusers plugin."""

__version__ = "0.1.0"

from .cameras import Cameras, default_cameras

__all__ = ["Cameras", "default_cameras"]
