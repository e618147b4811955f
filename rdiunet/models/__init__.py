"""Segmentation models, looked up by name: `build("unet")`, `build("rdiunet", growth=64)`,
`build("mypackage.nets:build")`. Every module of this folder is imported, and its `@register`
builders with it: a new model is one file here (rdiunet/models/registry.py)."""

import importlib
import pkgutil

from .registry import build, check_fits, check_model, check_models, missing_packages, names

for module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{module.name}")

__all__ = ["build", "check_fits", "check_model", "check_models", "missing_packages", "names"]
