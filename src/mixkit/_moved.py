"""Names that moved to modules of their own stay importable from where they were.

A module whose classes moved sets ``__getattr__ = moved_names(__name__, {...})``: the new
module is imported on first use of a name, so the two modules may import each other's helpers
without an import cycle.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

__all__ = ["moved_names"]


def moved_names(module: str, names: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` serving ``names`` (name -> the module now defining it).

    Example:
        >>> getattr_ = moved_names("old", {"sqrt": "math"})
        >>> getattr_("sqrt")(4.0)
        2.0
    """

    def __getattr__(name: str) -> object:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
