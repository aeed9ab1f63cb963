"""FMix masks: low-frequency Fourier noise binarised to hold an exact share of pixels.

Follows Harris et al., "FMix: Enhancing Mixed Sample Data Augmentation" (arXiv 2002.12047;
reference code github.com/ecs-vlc/FMix, ``fmix.py``): spectrum ``(a + ib) / max(|f|,
1 / max(size))^decay`` with ``a, b ~ N(0, 1)``, inverse real FFT, min-max normalisation, then
the top ``lam * N`` pixels (rounded up or down with probability 1/2) set to 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mixkit import rng

__all__ = ["fourier_noise", "binarise_mask"]


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


def fourier_noise(
    n: int, spatial: Sequence[int], decay_power: float, *, generator: torch.Generator | None = None
) -> Tensor:
    """``(n, *spatial)`` float64 low-frequency grey images in [0, 1].

    Args:
        n: how many images.
        spatial: their size, 1 to 3 dims.
        decay_power: the spectrum's decay exponent (the paper's delta, 3 by default in FMix).
        generator: CPU generator.
    """
    spatial = tuple(int(s) for s in spatial)
    freq = _frequency_magnitude(spatial)
    scale = 1.0 / freq.clamp_min(1.0 / max(spatial)) ** decay_power
    real = rng.normal((n,) + tuple(freq.shape), generator=generator) * scale
    imag = rng.normal((n,) + tuple(freq.shape), generator=generator) * scale
    dims = tuple(range(1, len(spatial) + 1))
    grey = torch.fft.irfftn(torch.complex(real, imag), s=spatial, dim=dims)
    flat = grey.reshape(n, -1)
    low = flat.min(dim=1, keepdim=True).values
    span = (flat.max(dim=1, keepdim=True).values - low).clamp_min(torch.finfo(torch.float64).tiny)
    return ((flat - low) / span).view((n,) + spatial)


def binarise_mask(
    noise: Tensor, lam: Tensor, *, max_soft: float = 0.0, generator: torch.Generator | None = None
) -> Tensor:
    """Keep the top share of each grey image: ``(n, *spatial)`` float64 mask in [0, 1].

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
    order = torch.argsort(flat, dim=1, descending=True)
    lam = lam.to(torch.float64)
    up = rng.uniform((n,), generator=generator) > 0.5
    num = torch.where(up, torch.ceil(lam * total), torch.floor(lam * total)).long().unsqueeze(1)
    pos = torch.arange(total).unsqueeze(0)  # position in brightness order
    if max_soft > 0:
        eff = torch.where((lam < max_soft) | (1 - lam < max_soft), torch.minimum(lam, 1 - lam), torch.full_like(lam, max_soft))
        soft = (eff * total).long().unsqueeze(1)
        low, high = num - soft, num + soft
        ramp = 1.0 - (pos - low).to(torch.float64) / (high - low - 1).clamp_min(1).to(torch.float64)
        by_rank = torch.where(pos < low, 1.0, torch.where(pos >= high, 0.0, ramp))
    else:
        by_rank = (pos < num).to(torch.float64)
    return torch.empty_like(flat).scatter_(1, order, by_rank).view(noise.shape)
