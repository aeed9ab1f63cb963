"""Input checks shared by every method. Each raises an error naming the argument at fault."""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence

import torch
from torch import Tensor

from mixkit.errors import DTypeError, HyperParameterError, LabelError, ShapeError
from mixkit.types import BoxParams, MaskParams, Params

__all__ = [
    "check_x",
    "check_labels",
    "check_alpha",
    "check_probability",
    "check_choice",
    "check_positive_int",
    "check_range",
    "check_params",
    "check_label_range",
]


def check_x(x: Tensor, *, spatial_dims: Sequence[int] | None, needs_float: bool, name: str = "x") -> None:
    """Check a batch ``(B, C, *spatial)``.

    Args:
        x: the batch.
        spatial_dims: allowed numbers of spatial dims (``None``: any rank >= 2).
        needs_float: whether the method blends values (integer images are then refused).
        name: the argument's name in messages.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if spatial_dims is None:
        if x.ndim < 2:
            raise ShapeError(f"{name} must have shape (B, ...) with at least 2 dims, got shape {tuple(x.shape)}")
    elif x.ndim - 2 not in spatial_dims:
        layouts = " or ".join(_layout(d) for d in spatial_dims)
        raise ShapeError(f"{name} must have shape {layouts}, got shape {tuple(x.shape)} ({x.ndim} dims)")
    if x.shape[0] == 0:
        raise ShapeError(f"{name} must hold at least one sample, got batch size 0")
    if 0 in x.shape[1:]:
        raise ShapeError(f"{name} has an empty dimension: shape {tuple(x.shape)}")
    if needs_float and not x.is_floating_point():
        raise DTypeError(
            f"{name} must be floating point for a blending method, got {x.dtype}; convert it first "
            "(e.g. x.float() / 255)"
        )


_LAYOUTS = {0: "(B, C)", 1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, D, H, W)"}


def _layout(d: int) -> str:
    return _LAYOUTS.get(d, f"(B, C, <{d} spatial dims>)")


def check_labels(y: Tensor, batch_size: int, num_classes: int | None, *, name: str = "y") -> None:
    """Check integer ``(B,)`` or soft ``(B, K)`` labels against the batch and ``num_classes``."""
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of labels, got {type(y).__name__}")
    if y.ndim == 1:
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise LabelError(f"{name} of shape (B,) must hold integer class indices, got dtype {y.dtype}")
    elif y.ndim == 2:
        if not y.is_floating_point():
            raise LabelError(f"{name} of shape (B, K) must be floating point soft labels, got dtype {y.dtype}")
        if num_classes is not None and y.shape[1] != num_classes:
            raise LabelError(f"{name} has {y.shape[1]} columns but num_classes={num_classes}")
    else:
        raise ShapeError(f"{name} must have shape (B,) or (B, K), got shape {tuple(y.shape)}")
    if y.shape[0] != batch_size:
        raise ShapeError(f"{name} has batch size {y.shape[0]} but x has batch size {batch_size}")
    if y.ndim == 1:
        check_label_range(y, num_classes, name=name)


def check_label_range(y: Tensor, num_classes: int | None, *, name: str = "y") -> None:
    """Integer labels must lie in ``[0, num_classes)`` (``[0, inf)`` if it is unknown)."""
    if not y.numel():
        return
    low, high = _label_bounds(y)
    if low < 0 or (num_classes is not None and high >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else "[0, num_classes)"
        raise LabelError(f"{name} holds class indices in [{low}, {high}], outside {bound}")


_last_bounds: tuple[weakref.ref, int, int, int] | None = None


def _label_bounds(y: Tensor) -> tuple[int, int]:
    """``(min, max)`` of integer labels, remembered for the last tensor seen while it is
    unmodified (a method's call checks ``y`` and its target's ``soft()`` checks it again)."""
    global _last_bounds
    last = _last_bounds
    if last is not None and last[0]() is y and last[1] == y._version:
        return last[2], last[3]
    bounds = torch.aminmax(y)
    # on a device: one transfer of both bounds (each int() would wait for the device)
    low, high = (int(v) for v in bounds) if y.device.type == "cpu" else torch.stack(bounds).tolist()
    _last_bounds = (weakref.ref(y), y._version, low, high)
    return low, high


def check_params(x: Tensor, params: Params, *, name: str = "x") -> None:
    """Params must fit the tensor they are applied to: batch size, box and mask sizes."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    b = x.shape[0] if x.ndim else 0
    if params.index.shape != (b,) or params.lam.shape != (b,):
        raise ShapeError(
            f"params are for a batch of {params.index.shape[0]} samples but {name} has batch size {b} "
            f"(shape {tuple(x.shape)})"
        )
    spatial = tuple(x.shape[2:])
    if isinstance(params, BoxParams):
        d = params.boxes.shape[1] // 2
        if d != len(spatial) or params.boxes.shape[0] not in (1, b):
            raise ShapeError(f"boxes of shape {tuple(params.boxes.shape)} do not fit {name} of shape {tuple(x.shape)}")
        ends = params.boxes[:, d:].amax(dim=0).tolist()
        if any(e > s for e, s in zip(ends, spatial)):
            raise ShapeError(f"boxes reach {ends} but {name} has spatial size {spatial}; sample params for this size")
    if isinstance(params, MaskParams):
        m = params.mask
        if m.ndim != x.ndim or m.shape[0] not in (1, b) or m.shape[1] != 1 or tuple(m.shape[2:]) != spatial:
            raise ShapeError(f"mask of shape {tuple(m.shape)} does not fit {name} of shape {tuple(x.shape)}")


def _number(value: float, name: str) -> float:
    if isinstance(value, bool):
        raise HyperParameterError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise HyperParameterError(f"{name} must be a number, got {value!r}") from None


def check_alpha(value: float, name: str = "alpha") -> float:
    """A Beta concentration: finite and > 0."""
    value = _number(value, name)
    if not (value > 0 and math.isfinite(value)):
        raise HyperParameterError(f"{name} must be a finite number > 0, got {value}")
    return value


def check_probability(value: float, name: str = "p") -> float:
    """A probability in [0, 1]."""
    value = _number(value, name)
    if not 0.0 <= value <= 1.0:
        raise HyperParameterError(f"{name} must be in [0, 1], got {value}")
    return value


def check_range(value: float, low: float, high: float, name: str) -> float:
    """A number in the closed interval [low, high]."""
    value = _number(value, name)
    if not low <= value <= high:
        raise HyperParameterError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def check_positive_int(value: int | None, name: str, *, allow_none: bool = True) -> int | None:
    """A positive integer (or ``None`` where allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HyperParameterError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_choice(value: str, choices: Sequence[str], name: str) -> str:
    """One of a fixed set of strings."""
    if value not in choices:
        raise HyperParameterError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_flag(value: bool, name: str) -> bool:
    """A boolean option (not a truthy value: ``inplace="no"`` would mean yes)."""
    if not isinstance(value, bool):
        raise HyperParameterError(f"{name} must be True or False, got {value!r}")
    return value
