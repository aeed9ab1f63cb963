"""AugMix's image operations and augmentation chains, batched in torch.

Paper and reference code:
    * Hendrycks et al., "AugMix: A Simple Data Processing Method to Improve Robustness and
      Uncertainty", ICLR 2020 (github.com/google-research/augmix: ``augmentations.py`` for the
      operations and their severity-to-magnitude mapping, ``augment_and_mix.py`` and
      ``cifar.py`` ``aug`` for the mixture).

Inputs are ``(B, C, H, W)`` float pixels in [0, 1] (clamped first). Each sample gets its own
operation and magnitude; a call loops over the operations (about nine), never over samples:
rotations and shears of a batch are one ``grid_sample`` with per-sample affine matrices,
whole-pixel translations one ``gather`` (the same values: their samples land on pixel
centres), and equalize counts every histogram with one ``bincount``. AugMix's ``B * width``
chains run together, the later depth steps rewriting in place only the chains still running.

Fidelity to the reference's PIL calls (checked against Pillow in the tests, within its uint8
rounding): geometric operations use PIL's affine convention (output pixel centre
``(x + .5, y + .5)`` maps to an input point; shears and translations about the top-left
corner, rotation about the centre) and its bilinear edges (clamped inside the image, zero
outside); posterize, solarize and equalize work on the uint8 levels ``floor(255 x + .5)``;
autocontrast stretches each channel from its min to its max. Outputs stay float, where the
reference rounds every operation's result to uint8.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mixkit import rng
from mixkit.errors import DTypeError, HyperParameterError, ShapeError

__all__ = [
    "AUGMIX_OPS", "ALL_OPS", "GEOMETRIC_OPS", "ChainDraws", "apply_op", "apply_ops", "op_magnitudes",
    "sample_ops", "random_ops", "sample_chains", "apply_chains", "augment_chains",
]

#: The reference's ``augmentations``: the operations that do not overlap ImageNet-C/CIFAR-C.
AUGMIX_OPS: tuple[str, ...] = (
    "autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y", "translate_x", "translate_y",
)
#: The reference's ``augmentations_all`` (``--all-ops``): adds the four colour enhancements.
ALL_OPS: tuple[str, ...] = AUGMIX_OPS + ("color", "contrast", "brightness", "sharpness")
#: Operations done by one batched affine warp.
GEOMETRIC_OPS: tuple[str, ...] = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
_SIGNED = frozenset(GEOMETRIC_OPS)  # the reference negates these with probability 1/2
_HALF = (torch.float16, torch.bfloat16)
_SMALL_IMAGE = 3 * 64 * 64  # elements per image up to which results are gathered by one cat


# ------------------------------------------------------------------ pixel-value operations
def _levels(x: Tensor) -> Tensor:
    """uint8 levels ``floor(255 * x + 0.5)`` of [0, 1] pixels, as floats."""
    return (x * 255.0).add_(0.5).floor_()


def _col(v: Tensor, x: Tensor) -> Tensor:
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _autocontrast(x: Tensor, _: Tensor) -> Tensor:
    lo, hi = torch.aminmax(x.flatten(2), dim=2)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(lo), 1.0 / (hi - lo).clamp_min(1e-12))
    bias = torch.where(flat, torch.zeros_like(lo), -lo * scale)
    return torch.addcmul(bias[..., None, None], x, scale[..., None, None])  # (x - lo) / (hi - lo)


def _equalize(x: Tensor, _: Tensor) -> Tensor:
    """PIL's ``ImageOps.equalize``, per sample and channel, on uint8 levels."""
    b, c, h, w = x.shape
    n = b * c
    rows = torch.arange(n, device=x.device).view(n, 1) * 256
    flat = (_levels(x).reshape(n, h * w).long() + rows).flatten()  # (sample, channel, level) bins
    hist = torch.bincount(flat, minlength=n * 256).view(n, 256)
    present = torch.arange(256, device=x.device).expand(n, 256)
    brightest = torch.where(hist > 0, present, -1).amax(dim=1, keepdim=True)
    last = hist.gather(1, brightest)  # pixels at the brightest level present
    step = (h * w - last) // 255
    below = hist.cumsum(dim=1) - hist  # pixels strictly darker than each level
    lut = ((step // 2 + below) // step.clamp_min(1)).clamp_max(255)
    lut = torch.where(step > 0, lut, present).to(x.dtype) / 255.0
    return lut.flatten().index_select(0, flat).view(b, c, h, w)


def _posterize(x: Tensor, bits: Tensor) -> Tensor:
    """Keep the ``bits`` high bits of each uint8 level (PIL's ``ImageOps.posterize``)."""
    q = _col(torch.pow(2.0, 8 - bits.round().clamp(0, 8)), x)
    return _levels(x).div_(q).floor_().mul_(q / 255.0)


def _solarize(x: Tensor, threshold: Tensor) -> Tensor:
    """Invert levels ``>= threshold`` (PIL's ``ImageOps.solarize``): ``floor(255x + .5) >= t``."""
    return (x >= _col((threshold - 0.5) / 255.0, x)).to(x.dtype).sub_(x).abs_()  # |1 - x| or |0 - x|


def _gray(x: Tensor) -> Tensor:
    """PIL's ``convert("L")`` luma for RGB; the channel mean otherwise (a grey image is its own)."""
    if x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True)
    return x.mean(dim=1, keepdim=True)


def _enhance(x: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    """PIL's ``ImageEnhance``: ``blend(degenerate, x, factor)`` clipped to [0, 1]."""
    return torch.lerp(degenerate.expand_as(x), x, _col(factor, x)).clamp_(0.0, 1.0)


def _color(x: Tensor, factor: Tensor) -> Tensor:
    return _enhance(x, _gray(x), factor)


def _contrast(x: Tensor, factor: Tensor) -> Tensor:
    mean = torch.floor(_gray(x).mean(dim=(1, 2, 3), keepdim=True) * 255.0 + 0.5) / 255.0  # PIL: int(mean + .5)
    return _enhance(x, mean, factor)


def _brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * _col(factor, x)).clamp_(0.0, 1.0)  # blend with black


def _sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with PIL's ``SMOOTH`` filter (3x3, centre 5, others 1, sum 13); border pixels stay."""
    smooth = x.clone()
    if x.shape[2] > 2 and x.shape[3] > 2:
        box = F.avg_pool2d(x, 3, stride=1)  # mean of each 3x3 window
        smooth[:, :, 1:-1, 1:-1] = (9.0 / 13.0) * box + (4.0 / 13.0) * x[:, :, 1:-1, 1:-1]
    return _enhance(x, smooth, factor)


_VALUE_OPS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "autocontrast": _autocontrast, "equalize": _equalize, "posterize": _posterize, "solarize": _solarize,
    "color": _color, "contrast": _contrast, "brightness": _brightness, "sharpness": _sharpness,
}


# ------------------------------------------------------------------------ geometric ops
def _affine(op: str, magnitude: Tensor, h: int, w: int) -> Tensor:
    """``(N, 2, 3)`` float64 PIL affine data: output pixel coords -> input pixel coords."""
    m = magnitude.to(torch.float64)
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    if op == "rotate":  # PIL Image.rotate: about (w/2, h/2), counter-clockwise for degrees > 0
        a = m * (math.pi / 180.0)
        cos, sin = torch.cos(a), torch.sin(a)
        cx, cy = w / 2.0, h / 2.0
        rows = (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)
    elif op == "shear_x":
        rows = (one, m, zero, zero, one, zero)
    elif op == "shear_y":
        rows = (one, zero, zero, m, one, zero)
    elif op == "translate_x":
        rows = (one, zero, m, zero, one, zero)
    else:  # translate_y
        rows = (one, zero, zero, zero, one, m)
    return torch.stack(rows, dim=1).view(-1, 2, 3)


def _warp(x: Tensor, matrices: Tensor) -> Tensor:
    """Bilinear affine warp with per-sample matrices and PIL's edges.

    A source point inside the image is read with its coordinates clamped to the pixel centres
    (PIL's clamped bilinear); a point outside it reads 0 (moved far out, with zero padding).
    Each grid coordinate is one
    broadcast ``a * x + (b * y + c)`` over the batch, with the matrices pre-scaled to
    grid_sample's [-1, 1] units.
    """
    n, _, h, w = x.shape
    m = matrices.to(torch.float64).cpu()
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5).view(1, 1, w)
    ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5).view(1, h, 1)
    planar = torch.empty(n, 2, h, w, dtype=x.dtype, device=x.device)  # (u, v) planes
    for row, size in ((0, w), (1, h)):
        # normalised source coordinate 2 * src / size - 1: the matrix row scaled once
        a, b, c = (v.to(device=x.device, dtype=x.dtype).view(n, 1, 1) for v in (
            m[:, row, 0] * (2.0 / size), m[:, row, 1] * (2.0 / size), m[:, row, 2] * (2.0 / size) - 1.0))
        torch.add(a * xs, b * ys + c, out=planar[:, row])
    u, v = planar.unbind(1)
    outside = (torch.maximum(u, v) >= 1.0).logical_or_(torch.minimum(u, v) < -1.0).to(x.dtype)
    u.clamp_(1.0 / w - 1.0, 1.0 - 1.0 / w).add_(outside, alpha=-8.0)  # edge pixel centres; outside: far left
    v.clamp_(1.0 / h - 1.0, 1.0 - 1.0 / h)
    grid = planar.permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _translate(x: Tensor, shift: Tensor, axis: int) -> Tensor:
    """Whole-pixel translations: ``out[..., i] = x[..., i + shift]`` along ``axis`` (3: x, 2:
    y) per sample, 0 where that falls outside; exactly :func:`_warp` of a translation by an
    integer (its samples land on pixel centres), with one gather instead of a resampling."""
    n, c, h, w = x.shape
    pad = int(shift.abs().max())
    padded = F.pad(x, (pad, pad, 0, 0) if axis == 3 else (0, 0, pad, pad))
    hp, wp = padded.shape[2], padded.shape[3]
    step = shift.to(device=x.device, dtype=torch.long).view(n, 1, 1) + pad
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    flat = (ys + step) * wp + xs if axis == 2 else ys * wp + (xs + step)  # (n, h, w) index into the padded image
    out = padded.reshape(n, c, hp * wp).gather(2, flat.view(n, 1, h * w).expand(n, c, h * w))
    return out.view(n, c, h, w)


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


def _apply_ops(x: Tensor, op_index: Tensor, magnitude: Tensor, ops: tuple[str, ...],
               source: Tensor | None = None, *, inplace: bool = False) -> Tensor:
    """:func:`apply_ops` on checked float32/64 pixels already in [0, 1].

    Row ``r`` of the result is computed from ``x[source[r]]`` (``x[r]`` without ``source``),
    so AugMix's chains can start from the batch without copying it ``width`` times. With
    ``inplace`` (no ``source``) the results are written into ``x`` itself and rows without an
    operation are not touched (each row is read before any row is written over).
    """
    src = None if source is None else source.to(x.device)
    op_index = op_index.cpu()

    flat = x.view(x.shape[0], -1) if x.is_contiguous() else None  # 2-D row gathers are faster

    def take(rows: Tensor) -> Tensor:
        rows = rows if src is None else src[rows]
        if flat is None:
            return x.index_select(0, rows)
        return flat.index_select(0, rows).view((rows.shape[0],) + tuple(x.shape[1:]))

    values: list[tuple[Tensor, Tensor]] = []
    if not inplace:
        keep = (op_index < 0).nonzero().squeeze(1)
        if keep.numel():
            keep = keep.to(x.device)
            values.append((keep, take(keep)))
    geo_rows, geo_mats = [], []
    for k, name in enumerate(ops):
        rows = (op_index == k).nonzero().squeeze(1)
        if not rows.numel():
            continue
        mag = magnitude[rows]
        if name in ("translate_x", "translate_y") and bool((mag == mag.round()).all()):
            dev = rows.to(x.device)
            values.append((dev, _translate(take(dev), mag, 3 if name == "translate_x" else 2)))
        elif name in _SIGNED:
            geo_rows.append(rows)
            geo_mats.append(_affine(name, mag, x.shape[2], x.shape[3]))
        else:
            dev = rows.to(x.device)
            values.append((dev, _VALUE_OPS[name](take(dev), mag)))
    if geo_rows:
        rows = torch.cat(geo_rows).to(x.device)
        values.append((rows, _warp(take(rows), torch.cat(geo_mats))))
    if not values:
        return x
    return _scatter_rows(x, values, op_index.shape[0], inplace)


def _scatter_rows(x: Tensor, values: list[tuple[Tensor, Tensor]], n: int, inplace: bool) -> Tensor:
    """Each group's results written at its rows (after every read: safe in place). Small
    images: one concatenation and one reorder (few calls); large ones: one copy per group
    into the output (less memory traffic)."""
    if x[0].numel() <= _SMALL_IMAGE:
        rows = torch.cat([r for r, _ in values])
        result = torch.cat([v for _, v in values])
        if inplace:
            return x.index_copy_(0, rows, result)
        out = result.index_select(0, torch.argsort(rows))  # every row appears once: back in row order
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            out = out.contiguous(memory_format=torch.channels_last)
        return out
    out = x
    if not inplace:
        out = torch.empty((n,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            out = out.contiguous(memory_format=torch.channels_last)
    for rows, result in values:
        out.index_copy_(0, rows, result)
    return out


def apply_ops(x: Tensor, op_index: Tensor, magnitude: Tensor, ops: Sequence[str] = AUGMIX_OPS, *,
              source: Tensor | None = None) -> Tensor:
    """Apply operation ``ops[op_index[b]]`` with ``magnitude[b]`` to each sample ``b``.

    Samples are grouped per operation (a loop over the operations, not the samples); every
    geometric operation of the batch goes through one ``grid_sample``.

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
    work = (x.float() if x.dtype in _HALF else x).clamp(0.0, 1.0)
    if n == 0:
        return work.new_empty((0,) + tuple(work.shape[1:])).to(x.dtype)
    return _apply_ops(work, op_index, magnitude.cpu(), ops, source).to(x.dtype)


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
def _int_param(level: Tensor, maxval: float) -> Tensor:
    return torch.floor(level * maxval / 10.0)  # the reference's int(level * maxval / 10)


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
    h, w = size
    table: dict[str, Callable[[Tensor], Tensor]] = {
        "posterize": lambda v: 4.0 - _int_param(v, 4),
        "rotate": lambda v: _int_param(v, 30),
        "solarize": lambda v: 256.0 - _int_param(v, 256),
        "shear_x": lambda v: v * 0.3 / 10.0,
        "shear_y": lambda v: v * 0.3 / 10.0,
        "translate_x": lambda v: _int_param(v, w / 3.0),
        "translate_y": lambda v: _int_param(v, h / 3.0),
    }
    mag = torch.zeros_like(level, dtype=torch.float64)
    for k, name in enumerate(_check_ops(ops)):
        rows = op_index == k
        if name in table:
            value = table[name](level)
        elif name in ("color", "contrast", "brightness", "sharpness"):
            value = level * 1.8 / 10.0 + 0.1
        else:
            continue
        if name in _SIGNED:
            value = torch.where(negate, -value, value)
        mag = torch.where(rows, value, mag)
    return mag


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
@dataclass(frozen=True, eq=False)
class ChainDraws:
    """The draws of AugMix's mixture for a batch (CPU tensors).

    Attributes:
        ops: ``(B, width, depth)`` int64 operation indices, ``-1`` past a chain's depth.
        magnitude: ``(B, width, depth)`` float64 magnitudes.
        weights: ``(B, width)`` float64 Dirichlet weights of the chains.
        m: ``(B,)`` float64 weight of the original image in the final blend.
    """

    ops: Tensor
    magnitude: Tensor
    weights: Tensor
    m: Tensor

    def take(self, rows: Tensor) -> ChainDraws:
        """The draws of the samples ``rows``."""
        rows = rows.cpu()
        return ChainDraws(self.ops[rows], self.magnitude[rows], self.weights[rows], self.m[rows])


def sample_chains(b: int, image_size: tuple[int, int], *, width: int = 3, depth: int = -1, severity: int = 3,
                  alpha: float = 1.0, ops: Sequence[str] = AUGMIX_OPS,
                  generator: torch.Generator | None = None) -> ChainDraws:
    """Draw AugMix's mixture for ``b`` samples, as the reference's ``aug`` does per image.

    Chain weights ~ Dirichlet(alpha, ..., alpha), the original's weight ``m`` ~ Beta(alpha,
    alpha), each chain's depth ``depth`` or uniform in {1, 2, 3} when ``depth == -1``, each
    step's operation uniform over ``ops`` at a level ~ U(0.1, severity).
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise HyperParameterError(f"width must be a positive integer, got {width!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or not (depth == -1 or depth >= 1):
        raise HyperParameterError(f"depth must be -1 (uniform in [1, 3]) or a positive integer, got {depth!r}")
    if not (alpha > 0 and math.isfinite(alpha)):
        raise HyperParameterError(f"alpha must be a finite number > 0, got {alpha!r}")
    d = depth if depth > 0 else 3
    weights = rng.dirichlet((b,), [float(alpha)] * width, generator=generator)
    m = rng.beta((b,), float(alpha), float(alpha), generator=generator)
    op_index, magnitude = sample_ops((b, width, d), image_size, severity=severity, ops=ops, generator=generator)
    if depth == -1:
        lengths = rng.randint(1, 4, (b, width), generator=generator)
        past = torch.arange(d).view(1, 1, d) >= lengths.unsqueeze(-1)
        op_index = op_index.masked_fill(past, -1)
        magnitude = magnitude.masked_fill(past, 0.0)
    return ChainDraws(op_index, magnitude, weights, m)


def apply_chains(x: Tensor, draws: ChainDraws, ops: Sequence[str] = AUGMIX_OPS) -> Tensor:
    """AugMix's mixture: ``m * x + (1 - m) * sum_i w_i * chain_i(x)``, per sample.

    All ``B * width`` chains run together, one depth step at a time.

    Args:
        x: ``(B, C, H, W)`` float pixels in [0, 1]; never modified.
        draws: the :class:`ChainDraws` of this batch.
        ops: the operation names ``draws.ops`` refers to.

    Returns:
        ``(B, C, H, W)`` tensor of ``x``'s dtype and memory format.
    """
    _check_images(x)
    b, width, depth = draws.ops.shape
    if b != x.shape[0]:
        raise ShapeError(f"draws are for {b} samples but x has batch size {x.shape[0]}")
    ops = _check_ops(ops)
    work = x.float() if x.dtype in _HALF else x
    source = torch.arange(b * width) // width  # chain r starts from sample r // width
    chains = _apply_ops(work.contiguous().clamp(0.0, 1.0), draws.ops[:, :, 0].reshape(-1),
                        draws.magnitude[:, :, 0].reshape(-1), ops, source)
    for step in range(1, depth):  # later steps rewrite only the chains still running
        _apply_ops(chains, draws.ops[:, :, step].reshape(-1), draws.magnitude[:, :, step].reshape(-1), ops,
                   inplace=True)
    coef = ((1.0 - draws.m.unsqueeze(1)) * draws.weights).to(device=work.device, dtype=work.dtype)  # (B, width)
    out = work * _col(draws.m, work)
    for i in range(width):
        out.addcmul_(chains[i::width], coef[:, i].view(-1, 1, 1, 1))
    return out.to(x.dtype)


def augment_chains(x: Tensor, *, width: int = 3, depth: int = -1, severity: int = 3, alpha: float = 1.0,
                   ops: Sequence[str] = AUGMIX_OPS, generator: torch.Generator | None = None) -> Tensor:
    """The AugMix image of each sample (:func:`sample_chains` then :func:`apply_chains`).

    Args:
        x: ``(B, C, H, W)`` float pixels in [0, 1]; never modified.
        width: number of chains mixed (the reference's ``mixture_width``).
        depth: operations per chain; -1 draws it uniformly in {1, 2, 3} per chain.
        severity: operation severity in [1, 10].
        alpha: Dirichlet and Beta concentration.
        ops: operation names (:data:`AUGMIX_OPS`, or :data:`ALL_OPS` for ``--all-ops``).
        generator: CPU generator for the draws.

    Example:
        >>> x = torch.rand(4, 3, 16, 16)
        >>> out = augment_chains(x, generator=torch.Generator().manual_seed(0))
        >>> out.shape, bool(((out >= 0) & (out <= 1)).all())
        (torch.Size([4, 3, 16, 16]), True)
    """
    _check_images(x)
    draws = sample_chains(x.shape[0], (x.shape[2], x.shape[3]), width=width, depth=depth, severity=severity,
                          alpha=alpha, ops=ops, generator=generator)
    return apply_chains(x, draws, ops)
