"""Faster elementwise transcendental kernels for tensors the caller owns.

On the CPU, torch's float32 ``log2`` measured about 1 ns an element here (196,608 values:
193 us), NumPy's SIMD ``log2`` 54 us on the same memory (``python bench/fastmath.py``;
``bench/results/fastmath.json``), its values within 2 units in the last place (torch's:
within 0.7). Special values give torch's results: ``-inf`` at 0, ``inf`` at ``inf``, NaN for
negative numbers and NaN. The powers that PixMix's multiplicative mixing and the superpixel
colour conversion take as ``2^(e log2 t)`` spend most of their time in that ``log2``."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["SMALLEST", "log2_", "many_zeros", "numpy_path", "power_", "raise_zeros_"]

#: the smallest positive float32 (a denormal), whose ``log2`` is exactly -149: zeros are
#: raised to it before a ``log2``, which takes a slow path at 0 in the CPU kernels (torch's
#: and NumPy's: 2x slower with 2% zeros, 18x with half zeros, e.g. black backgrounds;
#: ``python bench/fastmath.py``)
SMALLEST = 2.0**-149


def numpy_path(t: Tensor) -> bool:
    """Whether :func:`log2_` takes NumPy's kernel for ``t``: a float32 strided CPU tensor that
    autograd does not follow, no element of which shares memory with another through a zero
    stride (an ``expand``: torch's in-place ops refuse those with an error, which stays)."""
    return (t.device.type == "cpu" and t.dtype == torch.float32 and not t.requires_grad
            and t.layout == torch.strided and all(s or n < 2 for s, n in zip(t.stride(), t.shape)))


def log2_(t: Tensor) -> Tensor:
    """``t.log2_()``: through NumPy's ``log2`` in place where :func:`numpy_path` (any strides,
    no copy; see the module doc), through torch's otherwise.

    Only for work tensors the caller owns: NumPy's write does not advance the tensor's version
    counter, so autograd could not tell that a tensor it saved was overwritten (the torch path
    runs for every tensor that requires a gradient). Values may differ from torch's
    ``log2`` by a unit or two in the last place; they do not depend on the layout or size.
    """
    if not numpy_path(t):
        return t.log2_()
    a = t.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):  # log2(0) = -inf and log2(-1) = NaN, as torch's
        np.log2(a, out=a)
    return t


def raise_zeros_(t: Tensor) -> Tensor | None:
    """Before a ``log2`` of ``t >= 0`` on :func:`numpy_path` with :func:`many_zeros`: zeros
    raised to :data:`SMALLEST` in place, and ``sign(t)`` (0 at the zeros, 1 elsewhere)
    returned, for the caller to multiply the final result by. Elsewhere ``None``, ``t``
    untouched. Three more passes over ``t``, which pay from about 2% zeros
    (``python bench/fastmath.py``); the results are the same either way."""
    if not (numpy_path(t) and many_zeros(t)):
        return None
    keep = torch.sign(t)
    t.clamp_min_(SMALLEST)
    return keep


def power_(t: Tensor, exponent: float) -> Tensor:
    """``t ** exponent`` in place for ``t >= 0`` and ``exponent > 0``, as
    ``2^(exponent log2 t)`` (the vectorised ``log2`` and ``exp2`` kernels take about a third of
    the time of ``pow`` with a fractional exponent on the CPU), within a few units in the
    last place; ``0`` stays ``0`` (around ``log2``'s slow path at 0: :func:`raise_zeros_`).
    Only for work tensors the caller owns.
    """
    keep = raise_zeros_(t)
    out = log2_(t).mul_(exponent).exp2_()
    return out if keep is None else out.mul_(keep)


def many_zeros(t: Tensor) -> bool:
    """Whether about a 25th or more of ``t``'s elements are 0, judged on about 1,024 of them
    evenly spaced (a non-contiguous ``t``: ``True``). It only picks the faster of two ways to
    the same values, so an estimate is enough."""
    if not t.is_contiguous():
        return True
    flat = t.view(-1)
    sample = flat[:: (flat.numel() // 1024) | 1]  # (an odd step: less aliasing with image rows)
    return int(torch.count_nonzero(sample)) * 25 < sample.numel() * 24
