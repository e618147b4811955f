"""Model registry: a name maps to a builder `f(in_channels=1, **options) -> nn.Module`."""

import inspect
import math
from collections.abc import Callable

import torch
from torch import nn

from rdiunet.errors import UserError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator adding a builder under `name`."""

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model '{name}' is already registered")
        _BUILDERS[name] = builder
        return builder

    return add


def names() -> list[str]:
    return sorted(_BUILDERS)


def check_type(model: str, option: str, value, default) -> None:
    """An option's value has the type of its default: an integer for an integer, a finite number
    for a float, a true/false for a flag, a sequence of positive integers for a tuple."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    elif isinstance(default, tuple):
        ok = (
            isinstance(value, tuple | list)
            and len(value) > 0
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        )
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UserError(
            f"invalid option for model '{model}': {option}={value!r} must be like its default {default!r}"
        )


def build(name: str, in_channels: int = 1, **overrides) -> nn.Module:
    """Build a registered model; `overrides` replace the builder's default options."""
    if name not in _BUILDERS:
        raise UserError(f"unknown model '{name}'; known models: {', '.join(names())}")
    builder = _BUILDERS[name]
    signature = inspect.signature(builder)
    try:
        signature.bind(in_channels=in_channels, **overrides)
    except TypeError as error:
        raise UserError(f"invalid option for model '{name}': {error}") from None
    for option, value in overrides.items():
        default = signature.parameters[option].default
        if default is not inspect.Parameter.empty and default is not None:
            check_type(name, option, value, default)
    try:
        return builder(in_channels=in_channels, **overrides)
    except (ValueError, RuntimeError) as error:  # the model's own checks, or torch's on its layers
        raise UserError(f"invalid options for model '{name}' {overrides}: {error}") from None


def check_fits(name: str, size: int, options: dict | None = None, in_channels: int = 1) -> None:
    """Refuse, before any file is written, a model that cannot take `size` x `size` images (one
    pooled more often than the side allows): a forward pass on the meta device, shapes only."""
    with torch.device("meta"):
        model = build(name, in_channels=in_channels, **(options or {})).eval()
        image = torch.empty(1, in_channels, size, size)
    try:
        with torch.no_grad():
            model(image)
    except (ValueError, RuntimeError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise UserError(
            f"model '{name}' {options or {}} cannot take {size}x{size} images ({reason}); prepare the data "
            "at another --size, or give the model fewer levels (a shorter widths list)"
        ) from None
