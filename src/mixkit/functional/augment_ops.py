"""AugMix's image operations and augmentation chains, batched in torch.

Paper and reference code:
    * Hendrycks et al., "AugMix: A Simple Data Processing Method to Improve Robustness and
      Uncertainty", ICLR 2020 (github.com/google-research/augmix: ``augmentations.py`` for the
      operations and their severity-to-magnitude mapping, ``augment_and_mix.py`` and
      ``cifar.py`` ``aug`` for the mixture).

Inputs are ``(B, C, H, W)`` float pixels in [0, 1] (clamped first). Each sample gets its own
operation and magnitude; a call loops over the operations (about nine), never over samples:
the rows are sorted by operation once, so each operation reads its samples with one row
gather and writes its results into one contiguous slice of the output
(:mod:`mixkit.functional.augment_dispatch`). Rotations and shears of the whole batch are one
``grid_sample``, whole-pixel translations one slice copy per distinct shift
(:mod:`mixkit.functional.augment_geometry`); the pixel-value operations are in
:mod:`mixkit.functional.augment_values`. AugMix's chains of these operations are
:mod:`mixkit.functional.augment_chains` (its names are still served from here).

Fidelity to the reference's PIL calls (checked against Pillow in the tests, within its uint8
rounding): geometric operations use PIL's affine convention (output pixel centre
``(x + .5, y + .5)`` maps to an input point; shears and translations about the top-left
corner, rotation about the centre) and its bilinear edges (clamped inside the image, zero
outside); posterize, solarize and equalize work on the uint8 levels ``floor(255 x + .5)``;
autocontrast stretches each channel from its min to its max. Outputs stay float, where the
reference rounds every operation's result to uint8.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from mixkit import rng
from mixkit._moved import moved_names
from mixkit.errors import DTypeError, HyperParameterError, ShapeError
from mixkit.functional.augment_dispatch import run_kernels
from mixkit.functional.augment_geometry import GEOMETRIC_OPS
from mixkit.functional.blend import take_rows

__all__ = [
    "AUGMIX_OPS", "ALL_OPS", "GEOMETRIC_OPS", "apply_op", "apply_ops", "apply_ops_grouped",
    "op_magnitudes", "sample_ops", "random_ops",
]

#: The reference's ``augmentations``: the operations that do not overlap ImageNet-C/CIFAR-C.
AUGMIX_OPS: tuple[str, ...] = (
    "autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y", "translate_x", "translate_y",
)
#: The reference's ``augmentations_all`` (``--all-ops``): adds the four colour enhancements.
ALL_OPS: tuple[str, ...] = AUGMIX_OPS + ("color", "contrast", "brightness", "sharpness")
_SIGNED = frozenset(GEOMETRIC_OPS)  # the reference negates these with probability 1/2
_HALF = (torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------ dispatching
def _check_ops(ops: Sequence[str]) -> tuple[str, ...]:
    if isinstance(ops, str) or not ops:
        raise HyperParameterError(f"ops must be a non-empty sequence of operation names, got {ops!r}")
    unknown = [o for o in ops if o not in ALL_OPS]
    if unknown:
        raise HyperParameterError(f"unknown operations {unknown}; choose from {list(ALL_OPS)}")
    return tuple(ops)


def _check_images(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or 0 in x.shape:
        raise ShapeError(f"x must be a non-empty (B, C, H, W) batch of images, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise DTypeError(f"x must hold float pixels in [0, 1], got {x.dtype}; convert it first (x.float() / 255)")


def apply_ops_grouped(x: Tensor, source: Tensor, op_index: Tensor, magnitude: Tensor, out: Tensor,
                      ops: Sequence[str] = AUGMIX_OPS) -> Tensor:
    """Apply ``ops[op_index[r]]`` to ``x[source[r]]`` for each row ``r``, writing the results
    into ``out`` grouped by operation (no pass to put them back in row order).

    For callers that keep their own bookkeeping of where each result is (AugMix's chains,
    PixMix's augmented copies); :func:`apply_ops` is this plus the reordering.

    Args:
        x: ``(M, C, H, W)`` contiguous float pixels, already in [0, 1] (not clamped here).
        source: ``(N,)`` int64 rows of ``x``.
        op_index: ``(N,)`` int64 indices into ``ops``; ``-1`` copies the row unchanged.
        magnitude: ``(N,)`` magnitudes (see :func:`apply_op`).
        out: ``(N, C, H, W)`` contiguous tensor of ``x``'s dtype and device, not overlapping ``x``.
        ops: the operation names.

    Returns:
        ``order``: ``(N,)`` int64 (CPU), ``out[j]`` holds the result of row ``order[j]``.
    """
    _check_images(x)
    ops = _check_ops(ops)
    n = source.shape[0]
    if op_index.shape != (n,) or magnitude.shape != (n,) or out.shape != (n,) + tuple(x.shape[1:]):
        raise ShapeError(f"source, op_index and magnitude must have shape (N,) and out (N, *{tuple(x.shape[1:])}), "
                         f"got {tuple(source.shape)}, {tuple(op_index.shape)}, {tuple(magnitude.shape)}, "
                         f"{tuple(out.shape)}")
    if not (x.is_contiguous() and out.is_contiguous()) or out.dtype != x.dtype:
        raise ShapeError("x and out must be contiguous tensors of one dtype")
    return run_kernels(x, source.cpu(), op_index.cpu(), magnitude.cpu(), ops, out)


def _inverse(order: Tensor) -> Tensor:
    """The inverse permutation of ``order``."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.shape[0], device=order.device)
    return inverse


def apply_ops(x: Tensor, op_index: Tensor, magnitude: Tensor, ops: Sequence[str] = AUGMIX_OPS, *,
              source: Tensor | None = None) -> Tensor:
    """Apply operation ``ops[op_index[b]]`` with ``magnitude[b]`` to each sample ``b``.

    Samples are grouped per operation (a loop over the operations, not the samples); every
    resampled geometric operation of the batch goes through one ``grid_sample``.

    Args:
        x: ``(B, C, H, W)`` float pixels in [0, 1] (clamped first); never modified.
        op_index: ``(B,)`` int64 indices into ``ops``; ``-1`` leaves the sample unchanged.
        magnitude: ``(B,)`` magnitudes in each operation's own unit (see :func:`apply_op`).
        ops: the operation names ``op_index`` refers to.
        source: optional ``(N,)`` int64 rows of ``x``: row ``r`` of the result is then
            ``ops[op_index[r]]`` applied to ``x[source[r]]`` (``op_index`` and ``magnitude``
            of shape ``(N,)``), e.g. several augmented copies of each sample in one call.

    Returns:
        ``(B, C, H, W)`` (``(N, C, H, W)`` with ``source``) tensor of ``x``'s dtype and memory
        format, in [0, 1].
    """
    _check_images(x)
    ops = _check_ops(ops)
    n = x.shape[0] if source is None else source.shape[0]
    if op_index.shape != (n,) or magnitude.shape != (n,):
        raise ShapeError(f"op_index and magnitude must have shape ({n},), "
                         f"got {tuple(op_index.shape)} and {tuple(magnitude.shape)}")
    if source is not None and n and (int(source.min()) < 0 or int(source.max()) >= x.shape[0]):
        raise ShapeError(f"source rows must lie in [0, {x.shape[0]}), got {source.tolist()}")
    work = x.float() if x.dtype in _HALF else x
    pixels = torch.clamp(work, 0.0, 1.0, out=torch.empty(work.shape, dtype=work.dtype, device=work.device))
    out = pixels.new_empty((n,) + tuple(pixels.shape[1:]))
    if n:
        rows = torch.arange(n) if source is None else source.cpu()
        order = run_kernels(pixels, rows, op_index.cpu(), magnitude.cpu(), ops, out)
        out = take_rows(out, _inverse(order))  # back in row order
    if work.is_contiguous(memory_format=torch.channels_last) and not work.is_contiguous():
        out = torch.empty_like(out, memory_format=torch.channels_last).copy_(out)
    return out.to(x.dtype)


def apply_op(x: Tensor, op: str, magnitude: Tensor) -> Tensor:
    """Apply one operation to every sample, each with its own magnitude.

    Args:
        x: ``(B, C, H, W)`` float pixels in [0, 1].
        op: a name from :data:`ALL_OPS`.
        magnitude: ``(B,)`` magnitudes: posterize bits kept, solarize threshold (uint8 level),
            rotation degrees, shear factor, translation pixels, enhancement factor (ignored by
            autocontrast and equalize).

    Example:
        >>> x = torch.rand(2, 3, 8, 8)
        >>> out = apply_op(x, "translate_x", torch.tensor([1.0, -2.0]))
        >>> torch.allclose(out[0, :, :, :-1], x[0, :, :, 1:], atol=1e-6)
        True
    """
    b = x.shape[0] if isinstance(x, Tensor) and x.ndim else 0
    return apply_ops(x, torch.zeros(b, dtype=torch.long), magnitude.reshape(-1).cpu(), (op,))


# ---------------------------------------------------------------------- sampling
#: The reference's severity-to-magnitude mapping: ``offset + scale * t`` with
#: ``t = level * factor / 10``, floored for the integer ones (``int(level * maxval / 10)``);
#: ``(factor, floored, scale, offset)``. Translations (a third of the side) are added per size.
_MAGNITUDES: dict[str, tuple[float, bool, float, float]] = {
    "posterize": (4.0, True, -1.0, 4.0), "rotate": (30.0, True, 1.0, 0.0), "solarize": (256.0, True, -1.0, 256.0),
    "shear_x": (0.3, False, 1.0, 0.0), "shear_y": (0.3, False, 1.0, 0.0),
    **dict.fromkeys(("color", "contrast", "brightness", "sharpness"), (1.8, False, 1.0, 0.1)),
}


@functools.lru_cache(maxsize=64)
def _magnitude_table(ops: tuple[str, ...], h: int, w: int) -> Tensor:
    """``(len(ops) + 1, 5)`` float64 rows ``(factor, floored, scale, offset, signed)``, row 0 for
    no operation (never written)."""
    table = {**_MAGNITUDES, "translate_x": (w / 3.0, True, 1.0, 0.0), "translate_y": (h / 3.0, True, 1.0, 0.0)}
    none = (0.0, False, 0.0, 0.0)  # no operation, autocontrast and equalize: 0
    return torch.tensor([(*none, False)] + [(*table.get(name, none), name in _SIGNED) for name in ops],
                        dtype=torch.float64)


def op_magnitudes(op_index: Tensor, level: Tensor, negate: Tensor, ops: Sequence[str], size: tuple[int, int]) -> Tensor:
    """The reference's severity-to-magnitude mapping, for levels drawn from U(0.1, severity).

    Args:
        op_index: int64 indices into ``ops`` (any shape; ``-1`` for no operation).
        level: float64 levels, same shape.
        negate: bool, same shape: flip the sign (rotate, shears and translations only).
        ops: operation names.
        size: ``(H, W)``: translations reach a third of the side at level 10.

    Returns:
        float64 magnitudes, same shape (0 where ``op_index`` is -1 or the op takes none).
    """
    factor, floored, scale, offset, signed = _magnitude_table(_check_ops(ops), *size)[op_index + 1].unbind(-1)
    t = level * factor / 10.0
    value = torch.where(floored > 0, t.floor(), t) * scale + offset
    return torch.where(negate & (signed > 0), -value, value)


def _check_severity(severity: int) -> int:
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 10:
        raise HyperParameterError(f"severity must be an integer in [1, 10], got {severity!r}")
    return severity


def sample_ops(size: tuple[int, ...], image_size: tuple[int, int], *, severity: int = 3,
               ops: Sequence[str] = AUGMIX_OPS, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Draw one uniform operation and its magnitude per entry of ``size`` (CPU tensors).

    Returns:
        ``(op_index, magnitude)``: int64 and float64 tensors of shape ``size``.
    """
    ops = _check_ops(ops)
    level = rng.uniform(size, 0.1, float(_check_severity(severity)), generator=generator)
    op_index = rng.randint(0, len(ops), size, generator=generator)
    negate = rng.bernoulli(size, 0.5, generator=generator)
    return op_index, op_magnitudes(op_index, level, negate, ops, image_size)


def random_ops(x: Tensor, *, severity: int = 3, ops: Sequence[str] = AUGMIX_OPS,
               generator: torch.Generator | None = None) -> Tensor:
    """Apply one random operation (uniform over ``ops``) at a random level to each sample.

    Args:
        x: ``(B, C, H, W)`` float pixels in [0, 1].
        severity: the reference's ``aug_severity`` (levels drawn from U(0.1, severity)).
        ops: operation names (default :data:`AUGMIX_OPS`).
        generator: CPU generator for the draws.
    """
    _check_images(x)
    op_index, magnitude = sample_ops((x.shape[0],), (x.shape[2], x.shape[3]), severity=severity,
                                     ops=ops, generator=generator)
    return apply_ops(x, op_index, magnitude, ops)


# ---------------------------------------------------------------------- AugMix chains


# AugMix's chains (draws, mixture) live in their own module; the old import path keeps working
__getattr__ = moved_names(__name__, {name: "mixkit.functional.augment_chains" for name in (
    "ChainDraws", "sample_chains", "apply_chains", "augment_chains", "release_chain_buffer")})
