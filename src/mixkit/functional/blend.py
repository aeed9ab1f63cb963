"""Linear blends of a batch with a partner row per sample.

Follows Zhang et al., "mixup: Beyond Empirical Risk Minimization" (ICLR 2018) and, for
:func:`bc_plus_blend`, Tokozume et al., "Between-class Learning for Image Classification"
(CVPR 2018; reference code github.com/mil-tokyo/bc_learning_image).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["blend", "bc_plus_blend", "mask_blend", "select_by_mask", "match_format"]


def match_format(out: Tensor, like: Tensor) -> Tensor:
    """Return ``out`` in ``like``'s memory format (channels_last kept)."""
    for fmt, ndim in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
        if like.ndim == ndim and like.is_contiguous(memory_format=fmt) and not like.is_contiguous():
            return out.contiguous(memory_format=fmt)
    return out


def _per_row(lam: Tensor, like: Tensor) -> Tensor | float:
    """``lam (B,)`` as a broadcastable weight in ``like``'s dtype (a float if all equal)."""
    if lam.numel() == 1 or bool((lam == lam[0]).all()):
        return float(lam[0])
    shape = (lam.shape[0],) + (1,) * (like.ndim - 1)
    return lam.to(device=like.device, dtype=like.dtype).view(shape)


_HALF = (torch.float16, torch.bfloat16)


def blend(x: Tensor, index: Tensor, lam: Tensor) -> Tensor:
    """``lam * x + (1 - lam) * x[index]``, out of place.

    Half-precision inputs are blended in float32 (so a per-sample lambda is not rounded to
    the input's precision) and cast back.

    Args:
        x: ``(B, ...)`` float tensor.
        index: ``(B,)`` partner rows.
        lam: ``(B,)`` weight of each row's own sample (exact at 0 and 1).
    """
    work = x.float() if x.dtype in _HALF else x
    partner = work.index_select(0, index.to(x.device))
    out = torch.lerp(partner, work, _per_row(lam, work))
    return match_format(out.to(x.dtype), x)


def bc_plus_blend(x: Tensor, index: Tensor, ratio: Tensor) -> Tensor:
    """BC+ mixing: images treated as waveforms, their standard deviation as sound pressure.

    With ``g1 = std(x_i)``, ``g2 = std(x_j)`` and label ratio ``r``:
    ``p = 1 / (1 + g1 / g2 * (1 - r) / r)`` and
    ``x~ = (p * x_i + (1 - p) * x_j) / sqrt(p^2 + (1 - p)^2)``. The paper feeds BC+ per-image
    zero-mean images (train and test alike); this function does not subtract the mean.

    Args:
        x: ``(B, ...)`` float tensor.
        index: ``(B,)`` partner rows.
        ratio: ``(B,)`` label weight ``r`` of each row's own sample.
    """
    work = torch.promote_types(x.dtype, torch.float32)
    g = x.flatten(1).to(work).std(dim=1, correction=0)
    g1, g2 = g, g.index_select(0, index.to(x.device))
    r = ratio.to(device=x.device, dtype=work)
    num, den = r * g2, r * g2 + (1 - r) * g1
    # p = r g2 / (r g2 + (1 - r) g1), the paper's formula times r g2 / r g2: finite at r = 0;
    # two constant images (g1 = g2 = 0) fall back to p = r.
    p = torch.where(den > 0, num / den.clamp_min(torch.finfo(work).tiny), r)
    scale = 1.0 / torch.sqrt(p * p + (1 - p) * (1 - p))
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    partner = x.index_select(0, index.to(x.device))
    out = torch.lerp(partner, x, p.to(x.dtype).view(shape)) * scale.to(x.dtype).view(shape)
    return match_format(out, x)


def mask_blend(x: Tensor, index: Tensor, mask: Tensor) -> Tensor:
    """``mask * x + (1 - mask) * x[index]`` for a mask ``(N, 1, *spatial)``, N in {1, B}.

    A boolean mask copies values (works on uint8); a float mask blends them.
    """
    return select_by_mask(x, x.index_select(0, index.to(x.device)), mask)


def select_by_mask(x: Tensor, partner: Tensor, mask: Tensor) -> Tensor:
    """``mask * x + (1 - mask) * partner``: a bool mask copies values, a float mask blends."""
    mask = mask.to(x.device)
    if mask.dtype == torch.bool:
        out = torch.where(mask, x, partner)
    else:
        out = torch.lerp(partner, x, mask.to(x.dtype))
    return match_format(out, x)
