"""Model registry: a name maps to a builder `f(in_channels=1, **options) -> nn.Module`.

A model is one file: a module in rdiunet/models/ whose builder carries `@register("name")` is
found by itself (rdiunet/models/__init__.py imports every module of the folder). A model outside
the repository is named by its import path, `"mypackage.nets:build"`, wherever a registered name
is accepted (config.yaml: `mynet: {factory: "mypackage.nets:build", ...}`), with its package on
the Python path. Options are checked against the builder's signature: an option it does not take,
or a value of another type than its default, is one error line. A model that needs an optional
package declares it (`@register("monai_unet", requires=("monai",))`) and imports it inside its
builder, so that everything else works without it; building it without the package is one line
naming what to install.
"""

import importlib
import importlib.util
import inspect
import math
from collections.abc import Callable

import torch
from torch import nn

from rdiunet.errors import UserError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_REQUIRES: dict[str, tuple[str, ...]] = {}
EXTRAS = {"monai": "pip install 'rdiunet-bench[monai]' (or pip install monai)"}


def register(name: str, requires: tuple[str, ...] = ()):
    """Decorator adding a builder under `name`; `requires`: optional packages it imports."""

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model '{name}' is already registered")
        _BUILDERS[name] = builder
        _REQUIRES[name] = tuple(requires)
        return builder

    return add


def names() -> list[str]:
    return sorted(_BUILDERS)


def is_factory(name: str) -> bool:
    """An import path `module:function` rather than a registered name."""
    return ":" in name


def missing_packages(name: str) -> list[str]:
    """The optional packages a registered model needs and this environment lacks."""
    return [package for package in _REQUIRES.get(name, ()) if not installed(package)]


def installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # ValueError: marked absent in sys.modules
        return False


def install_hint(packages: list[str]) -> str:
    return "; ".join(EXTRAS.get(package, f"pip install {package}") for package in packages)


def builder_of(name: str) -> Callable[..., nn.Module]:
    """The builder of a registered name or of an import path `module:function`."""
    if is_factory(name):
        module_name, _, attribute = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise UserError(
                f"cannot import the model factory '{name}' ({error}); put its package on the Python "
                "path (PYTHONPATH) or install it"
            ) from None
        builder = getattr(module, attribute, None)
        if not callable(builder):
            raise UserError(f"the model factory '{name}': {module_name} has no function '{attribute}'")
        return builder
    if name not in _BUILDERS:
        raise UserError(f"unknown model '{name}'; known models: {', '.join(names())}")
    return _BUILDERS[name]


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


def check_options(name: str, options: dict, in_channels: int = 1) -> Callable[..., nn.Module]:
    """The builder, after checking `options` against its signature (names and, where the option
    has a default, the default's type); one error line otherwise."""
    builder = builder_of(name)
    signature = inspect.signature(builder)
    try:
        signature.bind(in_channels=in_channels, **options)
    except TypeError as error:
        raise UserError(f"invalid option for model '{name}': {error}") from None
    for option, value in options.items():
        parameter = signature.parameters.get(option)
        default = parameter.default if parameter is not None else inspect.Parameter.empty
        if default is not inspect.Parameter.empty and default is not None:
            check_type(name, option, value, default)
    return builder


def build(name: str, in_channels: int = 1, **overrides) -> nn.Module:
    """Build a registered model (or an import path's); `overrides` replace the builder's defaults."""
    builder = check_options(name, overrides, in_channels)
    missing = missing_packages(name)
    if missing:
        raise UserError(f"model '{name}' needs {', '.join(missing)}: {install_hint(missing)}")
    try:
        return builder(in_channels=in_channels, **overrides)
    except (ValueError, RuntimeError, TypeError) as error:  # the model's own checks, or torch's
        raise UserError(f"invalid options for model '{name}' {overrides}: {error}") from None


def check_model(name: str, options: dict, size: int | None = None) -> None:
    """Everything that can be checked before a job runs: the name, the options and, where the
    model's packages are installed, that it builds (and takes `size` x `size` images)."""
    check_options(name, options)
    if missing_packages(name):
        return  # the jobs that build it say what to install
    if size is None:
        with torch.device("meta"):
            build(name, **options)
    else:
        check_fits(name, size, options)


def check_models(models: dict[str, dict], sizes: dict[str, set[int]] | None = None) -> None:
    """Every label of a study's `models` ({label: {"model": name, **options}}, as
    rdiunet.readings.resolve_models gives them), at each image side in `sizes[label]` (the sides
    of the datasets it is trained on): one error line naming the first bad label."""
    for label, entry in models.items():
        options = {key: value for key, value in entry.items() if key != "model"}
        trained_at = sorted((sizes or {}).get(label, ())) or [None]  # None: built, not run
        try:
            for size in trained_at:
                check_model(entry["model"], options, size)
        except UserError as error:
            raise UserError(f"models.{label}: {error}") from None


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
