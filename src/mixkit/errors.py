"""Exception types of mixkit: one per kind of misuse.

Every class derives from :class:`MixkitError` and from the built-in exception a Python
user would expect (``ValueError`` for bad values, ``TypeError`` for bad types), so existing
``except ValueError`` code keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "MixkitError",
    "ShapeError",
    "LabelError",
    "DTypeError",
    "HyperParameterError",
    "UnknownHyperParameterError",
    "UnknownMethodError",
    "ModelError",
]


class MixkitError(Exception):
    """Base class of every error mixkit raises on purpose."""


class ShapeError(MixkitError, ValueError):
    """A tensor has the wrong rank, size or batch size."""


class LabelError(MixkitError, ValueError):
    """Labels are out of range, of the wrong width, or disagree with ``num_classes``."""


class DTypeError(MixkitError, TypeError):
    """A tensor has a dtype the operation cannot use (e.g. uint8 input to a blend)."""


class HyperParameterError(MixkitError, ValueError):
    """A hyper-parameter is outside its valid range."""


class UnknownHyperParameterError(MixkitError, TypeError):
    """A hyper-parameter name that the method does not have (often a typo)."""


class UnknownMethodError(MixkitError, KeyError):
    """A method name that is not registered."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class ModelError(MixkitError, ValueError):
    """A model does not offer what a model-aware method needs (e.g. a named layer)."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for close matches of ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
