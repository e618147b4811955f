"""The dataset registry. Every module in this package is one source, named by its file name, and
declares itself with `SOURCE = Source(...)` (rdiunet.data.source): its image size, whether empty
masks are kept, how it is downloaded, read and synthesised. Names are found without importing
anything, so the workflow can list them cheaply; a source is imported when it is first used.
"""

import importlib
import pkgutil
from functools import cache

from rdiunet.data.source import Source
from rdiunet.errors import UserError


def names() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))


@cache
def get(name: str) -> Source:
    """The source of a dataset key."""
    if name not in names():
        raise UserError(f"unknown dataset '{name}'; known datasets: {', '.join(names())}")
    source = importlib.import_module(f"{__name__}.{name}").SOURCE
    if source.name != name:
        raise ValueError(f"{__name__}.{name} declares the source name '{source.name}'")
    return source
