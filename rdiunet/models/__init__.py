"""Segmentation models, looked up by name: `build("unet")`, `build("rdiunet", growth=64)`."""

# Importing the model modules registers them.
from . import rdiunet, unet  # noqa: F401
from .registry import build, check_fits, names

__all__ = ["build", "check_fits", "names"]
