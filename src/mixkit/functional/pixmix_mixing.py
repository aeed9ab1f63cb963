"""PixMix's two mixings and their coefficients (for :mod:`mixkit.methods.pixmix`, which
still serves the public names).

Paper and reference code:
    * Hendrycks, Zou, Mazeika, Tang, Li, Song, Steinhardt, "PixMix: Dreamlike Pictures
      Comprehensively Improve Safety Measures", CVPR 2022 (github.com/andyzoujm/pixmix:
      ``pixmix_utils.py`` ``get_ab``, ``add``, ``multiply``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixkit import rng
from mixkit.functional.fastmath import log2_, raise_zeros_
from mixkit.functional.layout import match_format

__all__ = ["additive_mix", "mixing_coefficients", "multiplicative_mix"]


def additive_mix(img1: Tensor, img2: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """The reference's ``add``: ``(a (2 img1 - 1) + b (2 img2 - 1) + 1) / 2`` (not clipped),
    computed as ``a img1 + b img2 + (1 - a - b) / 2``.

    Args:
        img1, img2: ``(B, C, H, W)`` pixels in [0, 1].
        a, b: weights broadcastable to the images, e.g. ``(B, 1, 1, 1)``.
    """
    return _additive(img1, img2, a, b, in_place=False)


def multiplicative_mix(img1: Tensor, img2: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """The reference's ``multiply``: ``(2 img1)^a (2 img2)^b / 2`` with ``2 img2`` clipped below
    at 1e-37 (``b`` may be negative), not clipped above; computed as
    ``2^(a + b - 1) img1^a max(img2, 5e-38)^b``.

    Args:
        img1, img2: ``(B, C, H, W)`` pixels in [0, 1] (float32 or wider: 5e-38 underflows in half).
        a, b: weight tensors broadcastable to the images (``a > 0``).

    Computed as one ``2^(a log2 img1 + b log2 max(img2, 5e-38) + a + b - 1)``: the
    vectorised ``log2`` and ``exp2`` kernels are several times faster than two elementwise
    ``pow`` with per-sample exponents (about 4x on the CPU; float32 on the CPU takes NumPy's
    ``log2``, :func:`mixkit.functional.fastmath.log2_`, 4x faster again). The result is within a few
    parts per million of the correctly rounded powers. As with ``pow``, ``0^a`` is 0 for
    ``a > 0`` and ``img1^0`` is 1 (rows whose ``a`` underflowed to 0, where ``0 * log2 0``
    would be NaN).
    """
    return _multiplicative(img1, img2, a, b, in_place=False)


def _additive(img1: Tensor, img2: Tensor, a: Tensor, b: Tensor, *, in_place: bool) -> Tensor:
    """:func:`additive_mix`; ``in_place``: written into ``img1`` (a gathered copy the caller
    owns), the same operations in the same order without a batch of temporaries (at 224x224
    fresh memory, whose pages fault in at every call)."""
    # img2 in img1's channels_last layout first: the copy and a one-layout addcmul are faster
    out = img1.mul_(a) if in_place else img1 * a
    return out.addcmul_(match_format(img2, img1), b).add_((1 - a - b) / 2)


def _multiplicative(img1: Tensor, img2: Tensor, a: Tensor, b: Tensor, *, in_place: bool) -> Tensor:
    """:func:`multiplicative_mix`; ``in_place``: written into ``img1``, with ``img2`` used as
    scratch (both gathered copies the caller owns)."""
    zero = a == 0
    zero_rows = a.device.type != "cpu" or bool(zero.any())  # (on a device: no wait for the test)
    base = img1 if in_place else img1.clone()
    # log2 of 0 takes a slow path in the CPU kernels (up to 18x; a clamped batch may have many
    # zeros: black backgrounds, clipped extrapolations): zeros may be raised to 2^-149 and their
    # outputs zeroed by ``keep`` at the end (the power stays finite, under 2^126); rows with
    # ``a == 0`` keep ``img1^0 = 1``
    keep = raise_zeros_(base)
    if keep is not None and zero_rows:
        keep.masked_fill_(zero, 1.0)
    power = log2_(base).mul_(a)
    if zero_rows:
        power.masked_fill_(zero, 0.0)
    floor = img2.clamp_min_(5e-38) if in_place else img2.clamp_min(5e-38)
    power.addcmul_(log2_(floor), b)
    out = power.add_(a + b - 1).exp2_()
    return out if keep is None else out.mul_(keep)


def _additive_mix_(img1: Tensor, img2: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """:func:`additive_mix` written into ``img1`` (see :func:`_additive`)."""
    return _additive(img1, img2, a, b, in_place=True)


def _multiplicative_mix_(img1: Tensor, img2: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """:func:`multiplicative_mix` written into ``img1`` (see :func:`_multiplicative`)."""
    return _multiplicative(img1, img2, a, b, in_place=True)


def mixing_coefficients(size: tuple[int, ...], beta: float, *, generator: torch.Generator | None = None) -> Tensor:
    """The reference's ``get_ab``, drawn for every entry of ``size``.

    With probability 1/2 ``a ~ Beta(beta, 1)`` and ``b ~ Beta(1, beta)`` (a convex-like blend),
    else ``a = 1 + Beta(1, beta)`` and ``b = -Beta(1, beta)`` (an extrapolation away from the
    partner), the two Beta(1, beta) draws independent.

    Returns:
        ``size + (2,)`` float64: ``[..., 0]`` is ``a``, ``[..., 1]`` is ``b``.
    """
    first = rng.bernoulli(size, 0.5, generator=generator)
    d1 = rng.beta(size, beta, 1.0, generator=generator)
    d2 = rng.beta(size, 1.0, beta, generator=generator)
    d3 = rng.beta(size, 1.0, beta, generator=generator)
    return torch.stack([torch.where(first, d1, 1 + d2), torch.where(first, d2, -d3)], dim=-1)
