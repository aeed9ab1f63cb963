"""How AugMix's per-sample operations run on a batch (for :mod:`mixkit.functional.augment_ops`).

The rows are sorted by kernel once (one stable ``argsort``): rows without an operation, then
each pixel-value operation (:mod:`mixkit.functional.augment_values`) and whole-pixel
translation, then every resampled geometric operation as one ``grid_sample``
(:mod:`mixkit.functional.augment_geometry`). Each kernel then reads its rows with one row
gather and writes its results into one contiguous slice of the output, so nothing is
scattered back: callers get the order and keep their own bookkeeping.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mixkit._device import upload
from mixkit.functional.alloc import fresh
from mixkit.functional.augment_geometry import (
    GEOMETRIC_OPS,
    affine_matrices,
    translate,
    warp,
)
from mixkit.functional.augment_values import VALUE_OPS

__all__ = ["run_kernels", "sort_by_kernel"]

_SIGNED = frozenset(GEOMETRIC_OPS)  # resampled, unless a translation by whole pixels
_SHIFTS = ("translate_x", "translate_y")


@dataclass(frozen=True)
class _Group:
    """One kernel call on the rows ``bounds[0]:bounds[-1]`` of the sorted order: operation
    ``ops[i]`` (an index into the names) on rows ``bounds[i]:bounds[i + 1]``. No operation:
    rows left alone; several only in the ``warp`` doing every resampled operation at once."""

    ops: tuple[int, ...]
    bounds: tuple[int, ...]
    warped: bool


@functools.lru_cache(maxsize=64)
def _ranking(ops: tuple[str, ...], warped: frozenset[int]) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """The kernel order of ``ops`` (value operations and whole-pixel translations, then the
    resampled ones), the rank of ``ops[k]`` in it at index ``k + 1`` (0: no operation), and
    which of them are whole-pixel translations (same indexing). Read-only numpy arrays."""
    ranked = tuple(k for k in range(len(ops)) if k not in warped) + tuple(sorted(warped))
    rank = np.zeros(len(ops) + 1, dtype=np.int64)
    rank[np.array(ranked) + 1] = np.arange(1, len(ops) + 1)
    shifted = np.array([False] + [name in _SHIFTS and k not in warped for k, name in enumerate(ops)])
    rank.flags.writeable = shifted.flags.writeable = False
    return ranked, rank, shifted


def _numpy(t: Tensor) -> np.ndarray:
    """A CPU tensor's values as a numpy array (bfloat16, which numpy lacks, exactly as float64)."""
    return (t.double() if t.dtype == torch.bfloat16 else t).detach().numpy()


def sort_by_kernel(op_index: Tensor, magnitude: Tensor, ops: tuple[str, ...]) -> tuple[Tensor, list[_Group]]:
    """Sort the rows by kernel: ``order`` and the groups along it. Rows without an operation
    come first, then each value operation and whole-pixel translation, then every resampled
    operation as one warp, in ``ops`` order. Each group keeps the rows' order (each kernel
    gets the batches it always got, so results stay the same to the bit), except that
    translations are sorted by shift (:func:`translate` copies once per distinct shift).

    The bookkeeping is a few hundred numbers: it runs in numpy (stable sorts, so the order is
    the one torch's stable ``argsort`` gives), several times faster than small torch calls."""
    order, groups = _sort(_numpy(op_index), _numpy(magnitude), ops)
    return torch.from_numpy(order), groups


def _sort(index: np.ndarray, mag: np.ndarray, ops: tuple[str, ...]) -> tuple[np.ndarray, list[_Group]]:
    """:func:`sort_by_kernel` on numpy arrays."""
    fractional = set(index[mag != np.round(mag)].tolist())
    warped = frozenset(k for k, name in enumerate(ops) if name in _SIGNED and (name not in _SHIFTS or k in fractional))
    ranked, rank, shifted = _ranking(ops, warped)
    slot = index + 1
    key = rank[slot]
    by_shift = np.argsort(np.where(shifted[slot], mag, 0.0), kind="stable")
    order = by_shift[np.argsort(key[by_shift], kind="stable")]
    counts = np.bincount(key, minlength=len(ops) + 1).tolist()
    groups = [_Group((), (0, counts[0]), False)] if counts[0] else []
    start, warp_ops, bounds = counts[0], [], []
    for k, count in zip(ranked, counts[1:], strict=True):
        if count and k in warped:
            bounds = bounds or [start]  # the resampled operations come last: one group
            warp_ops.append(k)
            bounds.append(start + count)
        elif count:
            groups.append(_Group((k,), (start, start + count), False))
        start += count
    if warp_ops:
        groups.append(_Group(tuple(warp_ops), tuple(bounds), True))
    return order, groups


def run_kernels(x: Tensor, source: Tensor, op_index: Tensor, magnitude: Tensor, ops: tuple[str, ...],
                out: Tensor) -> Tensor:
    """Row ``r``'s operation applied to ``x[source[r]]``, written to ``out`` in kernel order.

    Args:
        x: ``(M, C, H, W)`` contiguous float32/64 pixels already in [0, 1]; only read.
        source: ``(N,)`` int64 CPU row of ``x`` each result starts from.
        op_index, magnitude: ``(N,)`` CPU operation indices (-1: none) and magnitudes.
        ops: the operation names.
        out: ``(N, C, H, W)`` contiguous tensor written: rows of ``x``'s own storage that are
            not read may be given, unless some rows have no operation (they are copied).

    Returns:
        ``order``: ``(N,)`` int64, ``out[j]`` holds the result of row ``order[j]``.
    """
    mags = _numpy(magnitude)
    order, groups = _sort(_numpy(op_index), mags, ops)
    rows = upload(torch.from_numpy(_numpy(source)[order]), x.device)
    mag = magnitude[order] if magnitude.dtype == torch.bfloat16 else torch.from_numpy(mags[order])
    per_row, h, w = math.prod(x.shape[1:]), x.shape[2], x.shape[3]
    flat = x.view(x.shape[0], per_row)
    # each kernel's rows are gathered into one buffer shared by the groups (a pooled block for
    # large images): a fresh temporary per group would fault its pages in at every call
    most = max((g.bounds[-1] - g.bounds[0] for g in groups if g.ops), default=0)
    scratch = fresh((most, per_row), x.dtype, x.device) if most else None
    for group in groups:
        start, stop = group.bounds[0], group.bounds[-1]
        dest = out[start:stop]
        if not group.ops:
            torch.index_select(flat, 0, rows[start:stop], out=dest.view(stop - start, per_row))
            continue
        assert scratch is not None
        # a scratch copy the kernel may overwrite
        part = torch.index_select(flat, 0, rows[start:stop], out=scratch[: stop - start]).view(dest.shape)
        name = ops[group.ops[0]]
        if group.warped:
            counts = [b - a for a, b in itertools.pairwise(group.bounds)]
            mats = affine_matrices([ops[k] for k in group.ops], counts, mag[start:stop], h, w)
            dest.copy_(warp(part, mats))
        elif name in _SHIFTS:
            translate(part, mag[start:stop], 3 if name == "translate_x" else 2, out=dest)
        else:
            VALUE_OPS[name](part, mag[start:stop], dest)
    return torch.from_numpy(order)
