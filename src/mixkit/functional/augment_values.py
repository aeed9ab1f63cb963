"""AugMix's pixel-value operations, batched in torch (the geometric ones are in
:mod:`mixkit.functional.augment_geometry`; both are run by
:mod:`mixkit.functional.augment_dispatch`).

Each operation is ``op(x, magnitude, out)``: ``x`` is a ``(N, C, H, W)`` scratch copy of the
samples in [0, 1], which the operation may overwrite; ``magnitude`` the ``(N,)`` magnitudes;
the result is written to ``out`` (same shape, contiguous). Fidelity to the reference's PIL
calls: posterize, solarize and equalize work on the uint8 levels ``floor(255 x + .5)``;
autocontrast stretches each channel from its min to its max; the colour enhancements blend
as ``ImageEnhance`` does. Outputs stay float, where the reference rounds each result to uint8.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from mixkit._device import upload

__all__ = ["VALUE_OPS"]


def _col(v: Tensor, x: Tensor) -> Tensor:
    return upload(v, x.device, x.dtype).view(-1, 1, 1, 1)


def _autocontrast(x: Tensor, _: Tensor, out: Tensor) -> None:
    n, c = x.shape[:2]
    pixels = x.view(n, c, -1)
    lo, hi = pixels.amin(2), pixels.amax(2)  # two reductions: faster than one aminmax
    flat = hi <= lo  # a flat channel stays as it is
    low = torch.where(flat, 0.0, lo).view(n, c, 1, 1)
    span = torch.where(flat, 1.0, hi - lo).view(n, c, 1, 1)
    # (x - lo) / (hi - lo): exactly 0 at the darkest pixel and 1 at the brightest (the rounded
    # difference is monotone, so every value lands in [0, 1]), as PIL's integer table gives;
    # a bias-and-scale form left 1e-8s and 1 + 1e-7 at the ends
    torch.sub(x, low, out=out).div_(span)


def _level_counts(flat: Tensor, bins: int, *, scatter: bool | None = None) -> Tensor:
    """``torch.bincount(flat, minlength=bins)`` for indices in ``[0, bins)``; off the CPU (or with
    ``scatter=True``) as a scatter-add of ones, the same counts: a device's ``bincount`` reads
    the indices' range back to the host first, which waits for every queued kernel."""
    if not (flat.device.type != "cpu" if scatter is None else scatter):
        return torch.bincount(flat, minlength=bins)
    return torch.zeros(bins, dtype=torch.int64, device=flat.device).index_add_(
        0, flat, torch.ones((), dtype=torch.int64, device=flat.device).expand(flat.shape[0]))


def _equalize(x: Tensor, _: Tensor, out: Tensor) -> None:
    """PIL's ``ImageOps.equalize``, per sample and channel, on uint8 levels.

    Levels are counted with one ``bincount`` over (sample, channel, level) bins (int32
    indices) and mapped through the lookup tables with one ``index_select``. PIL's step is
    the count of pixels below the brightest level present, ``// 255`` (0: the identity), read
    from that level's count. The tables are worked out on integer-valued floats,
    ``floor(a / b)`` for the integer divisions: exact in float32 for counts below 2^22
    (float64 above).
    """
    b, c, h, w = x.shape
    n = b * c
    exact = torch.float32 if h * w < 2**22 else torch.float64
    levels = x.mul_(255.0).add_(0.5).view(n, h * w).to(torch.int32)  # truncation: the floor of these positives
    top = levels.amax(dim=1, keepdim=True).long()  # each channel's brightest level
    flat = levels.add_(torch.arange(0, n * 256, 256, dtype=torch.int32, device=x.device).view(n, 1)).view(-1)
    counts = _level_counts(flat, n * 256).view(n, 256)
    step = counts.gather(1, top).neg_().add_(h * w).to(exact).div_(255).floor_()  # (below the brightest) // 255
    hist = counts.to(exact)
    below = hist.cumsum(dim=1).sub_(hist)  # pixels strictly darker than each level
    lut = below.add_(step.div(2).floor_()).div_(step.clamp_min(1)).floor_().clamp_max_(255)
    if x.device.type != "cpu" or not bool(step.all()):  # (on a device: no wait for the test)
        lut = torch.where(step > 0, lut, torch.arange(256.0, dtype=exact, device=x.device))
    torch.index_select(lut.to(x.dtype).div_(255.0).view(-1), 0, flat, out=out.view(-1))


def _posterize(x: Tensor, bits: Tensor, out: Tensor) -> None:
    """Keep the ``bits`` high bits of each uint8 level (PIL's ``ImageOps.posterize``):
    ``floor(level / q) * q / 255`` with ``q = 2^(8 - bits)``. ``floor(255 x + .5) / q`` is
    floored once: for a power of two ``q`` the division is exact and
    ``floor(floor(a) / q) = floor(a / q)``."""
    q = _col(torch.pow(2.0, 8 - bits.round().clamp(0, 8)), x)
    # (255 x + .5) / q as x * (255 / q) + .5 / q: q a power of two, both scalings are exact,
    # so the values are the same with a pass fewer
    torch.mul(x.mul_(255.0 / q).add_(0.5 / q).floor_(), q / 255.0, out=out)


def _solarize(x: Tensor, threshold: Tensor, out: Tensor) -> None:
    """Invert levels ``>= threshold`` (PIL's ``ImageOps.solarize``): ``floor(255x + .5) >= t``.
    The comparison is written as 0/1 floats (much faster than a bool tensor)."""
    torch.ge(x, _col((threshold - 0.5) / 255.0, x), out=out).sub_(x).abs_()  # |1 - x| or |0 - x|


def _gray(x: Tensor) -> Tensor:
    """PIL's ``convert("L")`` luma for RGB; the channel mean otherwise (a grey image is its own)."""
    if x.shape[1] == 3:
        w = upload(torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype), x.device).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True)
    return x.mean(dim=1, keepdim=True)


def _enhance(x: Tensor, degenerate: Tensor, factor: Tensor, out: Tensor) -> None:
    """PIL's ``ImageEnhance``: ``blend(degenerate, x, factor)`` clipped to [0, 1]."""
    torch.lerp(degenerate.expand_as(x), x, _col(factor, x), out=out).clamp_(0.0, 1.0)


def _color(x: Tensor, factor: Tensor, out: Tensor) -> None:
    _enhance(x, _gray(x), factor, out)


def _contrast(x: Tensor, factor: Tensor, out: Tensor) -> None:
    mean = torch.floor(_gray(x).mean(dim=(1, 2, 3), keepdim=True) * 255.0 + 0.5) / 255.0  # PIL: int(mean + .5)
    _enhance(x, mean, factor, out)


def _brightness(x: Tensor, factor: Tensor, out: Tensor) -> None:
    torch.mul(x, _col(factor, x), out=out).clamp_(0.0, 1.0)  # blend with black


def _sharpness(x: Tensor, factor: Tensor, out: Tensor) -> None:
    """Blend with PIL's ``SMOOTH`` filter (3x3, centre 5, others 1, sum 13); border pixels stay."""
    smooth = x.clone()
    if x.shape[2] > 2 and x.shape[3] > 2:
        box = F.avg_pool2d(x, 3, stride=1)  # mean of each 3x3 window
        smooth[:, :, 1:-1, 1:-1] = (9.0 / 13.0) * box + (4.0 / 13.0) * x[:, :, 1:-1, 1:-1]
    _enhance(x, smooth, factor, out)


#: The pixel-value operations by name: ``op(x, magnitude, out)``.
VALUE_OPS: dict[str, Callable[[Tensor, Tensor, Tensor], None]] = {
    "autocontrast": _autocontrast, "equalize": _equalize, "posterize": _posterize, "solarize": _solarize,
    "color": _color, "contrast": _contrast, "brightness": _brightness, "sharpness": _sharpness,
}
