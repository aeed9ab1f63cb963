"""Common corruptions generated on the fly, batched, with the CIFAR-10-C severities.

Follows Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019 (reference code github.com/hendrycks/robustness,
``ImageNet-C/create_c/make_cifar_c.py``). The severity constants below are those of the
CIFAR version of that script; the code is an independent torch implementation that works on
whole batches ``(B, C, H, W)`` of float images in [0, 1], on any device and float dtype
(computed in float32, or float64 for float64 input), never modifies its input and clamps its
output to [0, 1]. The reference quantises to uint8 after each corruption; these functions
do not.

Each corruption is ``fn(x, severity, *, generator=None)`` with ``severity`` in 1..5.
Deterministic ones accept ``generator`` for a uniform signature and ignore it. Noise is drawn
on the CPU with the given generator and moved to the input's device, so CPU and GPU agree.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mixkit import rng
from mixkit.errors import HyperParameterError, UnknownMethodError, suggest
from mixkit.functional.layout import in_format
from mixkit.validation import check_x

__all__ = [
    "gaussian_noise",
    "shot_noise",
    "gaussian_blur",
    "contrast",
    "brightness",
    "jpeg",
    "corrupt",
    "CORRUPTIONS",
    "SEVERITY_PARAMS",
]

#: Per-corruption constants of severities 1..5, from ``make_cifar_c.py``.
SEVERITY_PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise standard deviation
    "shot_noise": (500.0, 250.0, 100.0, 75.0, 50.0),  # photons at full intensity
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # blur sigma, pixels
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor on the deviation from the mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to the HSV value
    "jpeg": (80.0, 65.0, 58.0, 50.0, 40.0),  # JPEG quality
}

# ITU-T T.81 (JPEG) Annex K, tables K.1 (luminance) and K.2 (chrominance).
_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
) + ((99,) * 8,) * 4
# JFIF RGB -> YCbCr (rows Y, Cb, Cr), applied to level-shifted values.
_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def _severity_param(name: str, severity: int) -> float:
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise HyperParameterError(f"severity must be an integer in 1..5, got {severity!r}")
    return SEVERITY_PARAMS[name][severity - 1]


def _prepare(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Check ``x`` and return it in the working dtype (float32, or float64)."""
    check_x(x, spatial_dims=(2,), needs_float=True)
    rng.check_generator(generator)
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _finish(out: Tensor, x: Tensor) -> Tensor:
    """Clamp to [0, 1] and return in ``x``'s dtype and memory format."""
    out = out.clamp(0.0, 1.0).to(x.dtype)
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        out = in_format(out, torch.channels_last)
    return out


def gaussian_noise(x: Tensor, severity: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Additive Gaussian noise ``x + N(0, sigma^2)``, ``sigma`` from 0.04 to 0.10.

    Args:
        x: ``(B, C, H, W)`` float images in [0, 1].
        severity: 1..5.
        generator: CPU generator of the noise.

    Returns:
        ``(B, C, H, W)`` corrupted images, same dtype and device.

    Example:
        >>> out = gaussian_noise(torch.full((2, 3, 8, 8), 0.5), 3, generator=torch.Generator().manual_seed(0))
        >>> out.shape, bool((out - 0.5).abs().max() > 0)
        (torch.Size([2, 3, 8, 8]), True)
    """
    sigma = _severity_param("gaussian_noise", severity)
    work = _prepare(x, generator)
    noise = rng.normal(tuple(x.shape), generator=generator).to(device=x.device, dtype=work.dtype)
    return _finish(work + sigma * noise, x)


def shot_noise(x: Tensor, severity: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Photon (Poisson) noise ``Poisson(c * x) / c``, ``c`` from 500 down to 50.

    The rates go to the CPU for the draw (``torch.poisson`` takes only CPU generators).

    Args:
        x: ``(B, C, H, W)`` float images in [0, 1].
        severity: 1..5.
        generator: CPU generator of the noise.

    Returns:
        ``(B, C, H, W)`` corrupted images, same dtype and device.
    """
    photons = _severity_param("shot_noise", severity)
    work = _prepare(x, generator)
    rates = (work.detach().to(device="cpu", dtype=torch.float64) * photons).clamp_min(0.0)
    counts = rng.poisson(rates, generator=generator).to(device=x.device, dtype=work.dtype)
    return _finish(counts / photons, x)


def _blur_matrix(size: int, sigma: float) -> Tensor:
    """``(size, size)`` float64 ``A`` with ``(v @ A)`` the 1-D blur of a length-``size`` row ``v``.

    Normalised Gaussian taps truncated at ``r = int(4 sigma + 0.5)`` (as SciPy), with the
    replicated border folded in: tap ``t`` of output ``j`` reads input ``clamp(j + t, 0, size - 1)``.
    """
    radius = int(4.0 * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = torch.arange(size).repeat(taps.numel())
    src = (out + taps.long().repeat_interleave(size)).clamp(0, size - 1)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    return matrix.index_put_((src, out), kernel.repeat_interleave(size), accumulate=True)


def gaussian_blur(x: Tensor, severity: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian blur with ``sigma`` from 0.4 to 1 pixel, each channel on its own.

    As the reference (``skimage.filters.gaussian``, i.e. SciPy's ``gaussian_filter``): a
    separable kernel truncated at ``4 sigma`` and edges extended by replicating the border
    pixels, so a constant image stays constant. Each 1-D pass is a product with a small
    ``(H, H)`` or ``(W, W)`` matrix that holds the taps and the border rule, which is faster
    than a convolution for these few taps.

    Args:
        x: ``(B, C, H, W)`` float images in [0, 1].
        severity: 1..5.
        generator: unused (the blur is deterministic).

    Returns:
        ``(B, C, H, W)`` blurred images, same dtype and device.
    """
    sigma = _severity_param("gaussian_blur", severity)
    work = _prepare(x, generator)
    h, w = work.shape[-2:]
    along_w = _blur_matrix(w, sigma).to(device=work.device, dtype=work.dtype)
    along_h = _blur_matrix(h, sigma).to(device=work.device, dtype=work.dtype)
    return _finish(along_h.T @ (work @ along_w), x)


def contrast(x: Tensor, severity: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Lower contrast: ``(x - m) * c + m`` with ``m`` each image's per-channel mean.

    ``c`` goes from 0.75 down to 0.15. The mean of every channel is kept exactly (the result
    is a convex combination of ``x`` and ``m``, so the clamp never acts).

    Args:
        x: ``(B, C, H, W)`` float images in [0, 1].
        severity: 1..5.
        generator: unused (the change is deterministic).

    Returns:
        ``(B, C, H, W)`` images, same dtype and device.
    """
    factor = _severity_param("contrast", severity)
    work = _prepare(x, generator)
    mean = work.mean(dim=(2, 3), keepdim=True)
    return _finish(torch.add(mean * (1.0 - factor), work, alpha=factor), x)


def brightness(x: Tensor, severity: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Brighter images: ``+c`` on the HSV value, clipped at 1, ``c`` from 0.05 to 0.3.

    The reference converts RGB to HSV, adds ``c`` to V and converts back. With hue and
    saturation fixed every RGB channel is proportional to V, so the same result is computed
    without the round trip: ``x * V' / V`` with ``V = max_c x`` and ``V' = min(V + c, 1)``;
    black pixels (``V = 0``, saturation 0) become the grey ``V'``. Images with one channel or
    more than three get the same per-pixel rule (V is the max over channels).

    Args:
        x: ``(B, C, H, W)`` float images in [0, 1].
        severity: 1..5.
        generator: unused (the change is deterministic).

    Returns:
        ``(B, C, H, W)`` images, same dtype and device.
    """
    shift = _severity_param("brightness", severity)
    work = _prepare(x, generator)
    value = work.amax(dim=1, keepdim=True)
    brighter = (value + shift).clamp_max(1.0)
    ratio = brighter / value.clamp_min(torch.finfo(work.dtype).tiny)
    return _finish(torch.where(value > 0, work * ratio, brighter), x)


def _dct_matrix(dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(8, 8)`` orthonormal DCT-II matrix ``D``; ``D @ block @ D.T`` is the 2-D DCT."""
    n = torch.arange(8, dtype=torch.float64)
    d = torch.cos(torch.pi * (2 * n.view(1, 8) + 1) * n.view(8, 1) / 16) * (2.0 / 8) ** 0.5
    d[0] /= 2.0**0.5
    return d.to(device=device, dtype=dtype)


def _quant_tables(quality: float, channels: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(C, 8, 8)`` IJG-scaled quantisation steps: chroma table for channels 1, 2 of YCbCr."""
    scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
    tables = [_CHROMA_TABLE if (channels == 3 and i > 0) else _LUMA_TABLE for i in range(channels)]
    base = torch.tensor(tables, dtype=torch.float64)
    steps = torch.floor((base * scale + 50.0) / 100.0).clamp(1.0, 255.0)
    return steps.to(device=device, dtype=dtype)


def jpeg(x: Tensor, severity: int, *, generator: torch.Generator | None = None) -> Tensor:
    """JPEG-like compression artefacts at quality 80, 65, 58, 50, 40.

    RGB input goes to JFIF YCbCr; each channel, on 0..255 values shifted by -128, is cut into
    8x8 blocks (edges padded by replication), transformed by the 2-D DCT, divided by the
    ITU-T T.81 Annex K table (luminance for Y, chrominance for Cb and Cr) scaled to the
    quality as libjpeg does, rounded, multiplied back and inverted. Images with other channel
    counts use the luminance table on every channel, without colour conversion.

    Differences from a real JPEG codec (PIL/libjpeg, as the reference uses): no 4:2:0 chroma
    subsampling (as libjpeg with ``subsampling=0``), floating-point rather than integer DCT,
    no rounding to 8-bit pixels before or after, and round-half-to-even. Entropy coding is
    lossless and so needs no counterpart. An image constant within each 8x8 block comes out
    nearly unchanged (only its DC terms are rounded).

    Args:
        x: ``(B, C, H, W)`` float images in [0, 1].
        severity: 1..5.
        generator: unused (the compression is deterministic).

    Returns:
        ``(B, C, H, W)`` images, same dtype and device.
    """
    quality = _severity_param("jpeg", severity)
    work = _prepare(x, generator)
    b, c, h, w = work.shape
    colour = torch.tensor(_YCBCR, dtype=work.dtype, device=work.device) if c == 3 else None
    levels = work * 255.0 - 128.0
    if colour is not None:
        levels = torch.einsum("dc,bchw->bdhw", colour, levels)
    ph, pw = -h % 8, -w % 8
    if ph or pw:
        levels = F.pad(levels, (0, pw, 0, ph), mode="replicate")
    nh, nw = (h + ph) // 8, (w + pw) // 8
    blocks = levels.reshape(b, c, nh, 8, nw, 8).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, 64)
    d = _dct_matrix(work.dtype, work.device)
    dct = torch.kron(d, d)  # (64, 64): the 2-D DCT of a row-major flattened block
    steps = _quant_tables(quality, c, work.dtype, work.device).view(c, 64)
    coeffs = torch.round(blocks @ dct.T / steps) * steps
    blocks = (coeffs @ dct).view(b, nh, nw, c, 8, 8).permute(0, 3, 1, 4, 2, 5)
    levels = blocks.reshape(b, c, h + ph, w + pw)[:, :, :h, :w]
    if colour is not None:
        levels = torch.einsum("cd,bdhw->bchw", torch.linalg.inv(colour), levels)
    return _finish((levels + 128.0) / 255.0, x)


Corruption = Callable[..., Tensor]

#: Name -> corruption function, in the order of the reference script.
CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "brightness": brightness,
    "contrast": contrast,
    "jpeg": jpeg,
    "gaussian_blur": gaussian_blur,
}


def corrupt(x: Tensor, name: str, severity: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Apply the corruption ``name`` of :data:`CORRUPTIONS` at ``severity`` 1..5.

    Args:
        x: ``(B, C, H, W)`` float images in [0, 1].
        name: a key of :data:`CORRUPTIONS`.
        severity: 1..5.
        generator: CPU generator for the noise corruptions.

    Returns:
        ``(B, C, H, W)`` corrupted images, same dtype and device.

    Example:
        >>> x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> corrupt(x, "contrast", 5).std() < x.std()
        tensor(True)
    """
    if name not in CORRUPTIONS:
        raise UnknownMethodError(
            f"unknown corruption {name!r}; available: {sorted(CORRUPTIONS)}." + suggest(str(name), CORRUPTIONS)
        )
    return CORRUPTIONS[name](x, severity, generator=generator)
