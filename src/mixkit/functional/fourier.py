"""FMix masks: low-frequency Fourier noise binarised to hold an exact share of pixels.

Follows Harris et al., "FMix: Enhancing Mixed Sample Data Augmentation" (arXiv 2002.12047;
reference code github.com/ecs-vlc/FMix, ``fmix.py``): spectrum ``(a + ib) / max(|f|,
1 / max(size))^decay`` with ``a, b ~ N(0, 1)``, inverse real FFT, min-max normalisation, then
the top ``lam * N`` pixels (rounded up or down with probability 1/2) set to 1.

The top pixels are found without sorting every image (:func:`top_count_mask`): a histogram
of each image locates the bucket holding the cut, and only that bucket's values are sorted.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from mixkit import rng

__all__ = ["fourier_noise", "binarise_mask", "fmix_counts", "top_count_mask"]


def _frequency_magnitude(spatial: Sequence[int]) -> Tensor:
    d = len(spatial)
    total = None
    for k, size in enumerate(spatial):
        f = torch.fft.rfftfreq(size, dtype=torch.float64) if k == d - 1 else torch.fft.fftfreq(size, dtype=torch.float64)
        shape = [1] * d
        shape[k] = f.numel()
        sq = f.view(shape) ** 2
        total = sq if total is None else total + sq
    assert total is not None
    return total.sqrt()


@functools.lru_cache(maxsize=32)
def _spectrum_scale(spatial: tuple[int, ...], decay_power: float, dtype: torch.dtype) -> Tensor:
    """``1 / max(|f|, 1 / max(size))^decay`` on the rfft grid (cached; never modified)."""
    freq = _frequency_magnitude(spatial)
    return (1.0 / freq.clamp_min(1.0 / max(spatial)) ** decay_power).to(dtype)


def fourier_noise(
    n: int,
    spatial: Sequence[int],
    decay_power: float,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    normalise: bool = True,
) -> Tensor:
    """``(n, *spatial)`` low-frequency grey images in [0, 1].

    Args:
        n: how many images.
        spatial: their size, 1 to 3 dims.
        decay_power: the spectrum's decay exponent (the paper's delta, 3 by default in FMix).
        generator: CPU generator.
        dtype: float64 (the reference's precision) or float32 (draws, FFT and result; about
            three times faster, the same construction up to rounding).
        normalise: min-max normalise each image to [0, 1] (``False`` skips it for callers
            that only rank the pixels).
    """
    spatial = tuple(int(s) for s in spatial)
    scale = _spectrum_scale(spatial, float(decay_power), dtype)
    # scaled in place, and the two draws freed as soon as the spectrum holds them: fewer
    # batch-sized temporaries, fewer pages faulted in afresh at every call
    real = rng.normal((n,) + tuple(scale.shape), generator=generator, dtype=dtype).mul_(scale)
    imag = rng.normal((n,) + tuple(scale.shape), generator=generator, dtype=dtype).mul_(scale)
    spectrum = torch.complex(real, imag)
    del real, imag
    dims = tuple(range(1, len(spatial) + 1))
    grey = torch.fft.irfftn(spectrum, s=spatial, dim=dims)
    del spectrum
    if not normalise:
        return grey
    flat = grey.reshape(n, -1)
    low = flat.amin(dim=1, keepdim=True)
    span = (flat.amax(dim=1, keepdim=True) - low).clamp_min(torch.finfo(dtype).tiny)
    return ((flat - low) / span).view((n,) + spatial)


def fmix_counts(lam: Tensor, total: int, *, generator: torch.Generator | None = None) -> Tensor:
    """``(n,)`` int64 pixels to keep: ``ceil`` or ``floor(lam * total)``, a fair coin per image."""
    lam = lam.to(torch.float64)
    up = rng.uniform((lam.shape[0],), generator=generator) > 0.5
    return torch.where(up, torch.ceil(lam * total), torch.floor(lam * total)).long()


def binarise_mask(
    noise: Tensor, lam: Tensor, *, max_soft: float = 0.0, generator: torch.Generator | None = None
) -> Tensor:
    """Keep the top share of each grey image: ``(n, *spatial)`` mask in [0, 1], noise's dtype.

    The ``k`` brightest pixels get 1, with ``k = ceil(lam * N)`` or ``floor(lam * N)`` (a fair
    coin per image), the rest 0. With ``max_soft > 0`` a linear ramp from 1 to 0 spans the
    ``2 * max_soft * N`` pixels around the cut (capped so it fits), as in the reference code;
    the mask's mean stays ``k / N``.

    Args:
        noise: ``(n, *spatial)`` grey images (e.g. from :func:`fourier_noise`).
        lam: ``(n,)`` target shares in [0, 1].
        max_soft: half-width of the soft edge, as a share of the pixels.
        generator: CPU generator (for the rounding coin).
    """
    n = noise.shape[0]
    flat = noise.reshape(n, -1)
    total = flat.shape[1]
    num = fmix_counts(lam, total, generator=generator)
    if max_soft <= 0:
        return top_count_mask(flat, num).to(flat.dtype).view(noise.shape)
    lam = lam.to(torch.float64)
    order = torch.argsort(flat, dim=1, descending=True)
    pos = torch.arange(total).unsqueeze(0)  # position in brightness order
    eff = torch.where((lam < max_soft) | (1 - lam < max_soft), torch.minimum(lam, 1 - lam), torch.full_like(lam, max_soft))
    soft = (eff * total).long().unsqueeze(1)
    low, high = num.unsqueeze(1) - soft, num.unsqueeze(1) + soft
    ramp = 1.0 - (pos - low).to(torch.float64) / (high - low - 1).clamp_min(1).to(torch.float64)
    by_rank = torch.where(pos < low, 1.0, torch.where(pos >= high, 0.0, ramp)).to(flat.dtype)
    return torch.empty_like(flat).scatter_(1, order, by_rank).view(noise.shape)


def top_count_mask(flat: Tensor, num: Tensor) -> Tensor:
    """``(n, N)`` bool: True at the ``num[r]`` largest values of each row ``r`` of ``flat``.

    Exactly ``num[r]`` entries per row (ties at the cut go to the earliest positions; small
    inputs are sorted, ties then in sort order), in ``O(N)`` passes: each row's values are bucketed (a histogram of ~N / 16 buckets), the
    bucket holding the cut is found from the cumulative counts, and only the values in that
    bucket are sorted to get the threshold.

    Args:
        flat: ``(n, N)`` finite floating-point values.
        num: ``(n,)`` int64 counts in ``[0, N]``.
    """
    n, total = flat.shape
    num = num.to(device=flat.device, dtype=torch.long).clamp(0, total)
    if n * total <= 1 << 13 and total <= 1 << 11:
        # small: one sort costs less than the bucketing's dozen ops (about 250 us here); longer
        # rows sort slower per value (one row of 8192: 524 against 382 us; 16 rows of 1024:
        # 743 against 317 us; 8 rows of 1024: 103 against 268 us)
        order = torch.argsort(flat, dim=1, descending=True)
        by_rank = torch.arange(total, device=flat.device) < num.unsqueeze(1)
        return torch.zeros(flat.shape, dtype=torch.bool, device=flat.device).scatter_(1, order, by_rank)
    flat = flat.contiguous()  # the bucketed path views its rows flat
    thr, at_least = _cut_values(flat, num)
    mask = flat >= thr.unsqueeze(1)
    extra = at_least - num
    if bool(extra.any()):  # ties at the cut: keep the earliest of the equal values
        tied = flat == thr.unsqueeze(1)
        drop = tied & (tied.flip(1).cumsum(dim=1).flip(1) <= extra.unsqueeze(1))
        mask &= ~drop
    return mask


#: float32 ``2^23``: adding it to a value in ``[0, 2^22]`` rounds the value to an integer and
#: leaves that integer in the low bits of the sum's IEEE pattern (above ``_MAGIC_BITS``)
_MAGIC = 8388608.0
_MAGIC_BITS = 0x4B000000


def _cut_values(flat: Tensor, num: Tensor) -> tuple[Tensor, Tensor]:
    """``(n,)`` the ``num[r]``-th largest value of each row (``+inf`` where ``num[r] == 0``),
    and how many values of the row are at least that value (``num[r]`` unless ties)."""
    n, total = flat.shape
    buckets = max(1, min(total // 16, 4096))
    low, high = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)  # faster than one aminmax
    # bucket = round((v - low) * scale) in 0..buckets-1, a monotone map of v: the rounding is
    # done by adding 2^23 in float32 and reading the integer from the sum's bits (a float to
    # integer conversion costs several times more); each row's buckets are r * buckets + ...
    span = high.double() - low.double()
    scale = torch.where(span > 0, (buckets - 1) / span, 0.0)
    if flat.dtype == torch.float32 and bool(torch.isfinite(high - low).all()):
        # v - low >= 0 and its product with the scale at most buckets - 1 (+ rounding)
        u = torch.sub(flat, low, out=torch.empty(flat.shape, dtype=torch.float32, device=flat.device))
        u.mul_(scale.clamp_max(torch.finfo(torch.float32).max).float())
    else:  # float64, half, or a float32 span beyond float32's range: in float64, on halved values
        # (v / 2 - low / 2) / (high / 2 - low / 2) lies in [0, 1] for any finite values: neither
        # the difference nor the scale can overflow (spans above float64's largest value, or
        # below ~1e-305, whose (buckets - 1) / span is infinite); halving and the division keep
        # the map monotone, which is all the buckets need
        half_low = torch.mul(low.double(), 0.5)
        half_span = torch.mul(high.double(), 0.5).sub_(half_low)
        u = flat.double().mul_(0.5) if flat.dtype != torch.float64 else torch.mul(flat, 0.5)  # flat is only read
        u = u.sub_(half_low).div_(torch.where(half_span > 0, half_span, 1.0)).mul_(buckets - 1).float()
    rows = torch.arange(n, device=flat.device).unsqueeze(1)
    bucket = u.add_(_MAGIC).view(torch.int32).sub_((_MAGIC_BITS - rows * buckets).to(torch.int32))
    hist = torch.bincount(bucket.view(-1), minlength=n * buckets).view(n, buckets)
    above = hist.cumsum(dim=1).neg_().add_(hist).add_(total)  # above[r, j]: values in buckets >= j
    need = num.clamp_min(1)
    cut = (above >= need.unsqueeze(1)).sum(dim=1) - 1  # the highest bucket reaching the count
    in_cut = hist.gather(1, cut.unsqueeze(1)).squeeze(1)
    higher = above.gather(1, cut.unsqueeze(1)).squeeze(1) - in_cut  # values above the cut's bucket
    rank = need - higher
    r, c = (bucket == (cut.unsqueeze(1) + rows * buckets).to(torch.int32)).nonzero(as_tuple=True)  # row-major
    vals = flat[r, c]
    vals, by_val = vals.sort(descending=True, stable=True)
    by_row = r[by_val].argsort(stable=True)  # rows ascending, values descending within a row
    vals, r = vals[by_row], r[by_val][by_row]
    start = torch.cumsum(in_cut, 0) - in_cut
    thr = vals[start + rank - 1]
    # values of the cut's bucket at least thr (the bucket map is monotone: values in higher
    # buckets exceed thr, values in lower ones fall short of it)
    at_least = higher + torch.bincount(r[vals >= thr[r]], minlength=n)
    live = num > 0
    return torch.where(live, thr, torch.full_like(thr, float("inf"))), torch.where(live, at_least, 0)
