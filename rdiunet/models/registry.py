"""Model registry: a name maps to a builder `f(in_channels=1, **options) -> nn.Module`."""

import inspect
from collections.abc import Callable

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


def build(name: str, in_channels: int = 1, **overrides) -> nn.Module:
    """Build a registered model; `overrides` replace the builder's default options."""
    if name not in _BUILDERS:
        raise UserError(f"unknown model '{name}'; known models: {', '.join(names())}")
    builder = _BUILDERS[name]
    try:
        inspect.signature(builder).bind(in_channels=in_channels, **overrides)
    except TypeError as error:
        raise UserError(f"invalid option for model '{name}': {error}") from None
    return builder(in_channels=in_channels, **overrides)
