"""AugMix's augmentation chains: the draws of a batch's mixtures and the mixture itself.

Paper and reference code:
    * Hendrycks et al., "AugMix: A Simple Data Processing Method to Improve Robustness and
      Uncertainty", ICLR 2020 (github.com/google-research/augmix: ``augment_and_mix.py`` and
      ``cifar.py`` ``aug`` for the mixture).

``m * x + (1 - m) * sum_i w_i * chain_i(x)`` per sample, with ``w ~ Dirichlet(alpha)``, ``m ~
Beta(alpha, alpha)`` and each chain 1 to 3 operations of :mod:`mixkit.functional.augment_ops`.
All ``B * width`` chains run together, one depth step at a time, in one buffer reused per
thread; large images are worked through a few samples at a time. Moved here from
:mod:`mixkit.functional.augment_ops`, which still serves these names.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mixkit import rng
from mixkit._device import upload
from mixkit.errors import HyperParameterError, ShapeError
from mixkit.functional.alloc import fresh_like
from mixkit.functional.layout import affine_into, copy_into
from mixkit.functional.augment_dispatch import run_kernels
from mixkit.functional.augment_ops import _HALF, AUGMIX_OPS, _check_images, _check_ops, sample_ops

__all__ = ["ChainDraws", "apply_chains", "augment_chains", "release_chain_buffer", "sample_chains"]


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


def apply_chains(x: Tensor, draws: ChainDraws, ops: Sequence[str] = AUGMIX_OPS, *,
                 normalization: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """AugMix's mixture: ``m * x + (1 - m) * sum_i w_i * chain_i(x)``, per sample.

    All ``B * width`` chains run together, one depth step at a time: each step appends the
    images of the chains still running to one buffer (so no image is copied back in place).
    The buffer is this thread's scratch of at most ``_CHAIN_KEEP_BYTES`` (16 MiB), reused
    across calls (a fresh one costs its page faults on every call): a batch whose chains need
    more (large images) is worked through a few samples at a time, with the same values. The
    result is always a tensor of its own.

    Args:
        x: ``(B, C, H, W)`` float pixels in [0, 1]; never modified.
        draws: the :class:`ChainDraws` of this batch.
        ops: the operation names ``draws.ops`` refers to.
        normalization: ``(mean, std)`` broadcastable to ``x`` (float32, or float64 for float64
            ``x``): ``x`` is then normalised, ``(pixels - mean) / std``, and so is the result.
            The conversions run in the contiguous work buffer (the same values as
            converting before and after): fused with the copy in for a contiguous ``x``;
            for another layout (channels_last), after a plain copy in, as a per-channel
            broadcast over a channels_last batch is several times slower.

    Returns:
        ``(B, C, H, W)`` tensor of ``x``'s dtype and memory format.
    """
    _check_images(x)
    if torch.is_grad_enabled() and x.requires_grad:
        raise ValueError(
            "apply_chains is not differentiable (its operations run in place and are mostly piecewise "
            "constant), but x requires grad: pass x.detach(), or call it under torch.no_grad()"
        )
    if torch.is_grad_enabled() and normalization is not None and any(
            isinstance(t, Tensor) and t.requires_grad for t in normalization):
        raise ValueError(
            "apply_chains is not differentiable, but the normalization (mean, std) requires grad: "
            "pass detached statistics, or call it under torch.no_grad()"
        )
    b, width, depth = draws.ops.shape
    if b != x.shape[0]:
        raise ShapeError(f"draws are for {b} samples but x has batch size {x.shape[0]}")
    ops = _check_ops(ops)
    dtype = torch.float32 if x.dtype in _HALF else x.dtype
    images_per_sample = 2 + (draws.ops >= 0).flatten(1).sum(dim=1)  # the sample (clamped and not), its chains' images
    sample_bytes = math.prod(x.shape[1:]) * dtype.itemsize
    room = max(1, _CHAIN_KEEP_BYTES // sample_bytes)  # images the kept buffer holds
    chunks = _chunks(images_per_sample.tolist(), room) if x.device.type == "cpu" else [(0, b)]
    if len(chunks) == 1:
        out = _mixture(x, draws, ops, dtype, normalization)
        if out.stride() == x.stride() and out.dtype == x.dtype:
            return out
        return copy_into(fresh_like(x), out)  # x's memory format and dtype
    # large images: a few samples at a time, so the work fits the kept buffer (no batch-sized
    # buffer of chain images is mapped and faulted in at every call; each row's values are the same)
    result = fresh_like(x)
    for start, stop in chunks:
        part = draws.take(torch.arange(start, stop))
        result[start:stop] = _mixture(x[start:stop], part, ops, dtype, _stats_rows(normalization, x, start, stop))
    return result


def _stats_rows(normalization: tuple[Tensor, Tensor] | None, x: Tensor, start: int,
                stop: int) -> tuple[Tensor, Tensor] | None:
    """The normalisation stats of samples ``start:stop``: stats with a batch dim (per-sample
    stats, ``(B, C, 1, 1)`` say) are sliced like ``x``; shared ones, ``(1, C, 1, 1)`` or
    ``(C, 1, 1)``, apply to every chunk as they are."""
    if normalization is None:
        return None
    return tuple(  # type: ignore[return-value]
        t[start:stop] if t.ndim == x.ndim and t.shape[0] == x.shape[0] else t
        for t in normalization
    )


def _chunks(images: list[int], room: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` sample ranges whose images (``images[i]`` per sample) fit
    ``room`` images, each holding at least one sample."""
    chunks, start, used = [], 0, 0
    for i, n in enumerate(images):
        if used and used + n > room:
            chunks.append((start, i))
            start, used = i, 0
        used += n
    chunks.append((start, len(images)))
    return chunks


def _mixture(x: Tensor, draws: ChainDraws, ops: tuple[str, ...], dtype: torch.dtype,
             normalization: tuple[Tensor, Tensor] | None) -> Tensor:
    """:func:`apply_chains` on checked arguments, as a contiguous tensor of ``dtype``.

    The buffer holds the clamped pixels the chains start from (rows ``:B``), each step's
    images, and the unclamped pixels last (the original's term of the mixture). The mixture
    is one ``embedding_bag`` (:func:`weighted_rows`): each sample's weighted sum of its four
    rows (the original and its chains' last images), read once and written once, where three
    row gathers and four passes over the batch did it before (the same values)."""
    b, width, depth = draws.ops.shape
    rows = 2 * b + int((draws.ops >= 0).sum())  # the chains' start, each step's images, the original
    images = _chain_buffer(rows * math.prod(x.shape[1:]), dtype, x.device).view((rows,) + tuple(x.shape[1:]))
    pixels = images[rows - b :]
    if normalization is None:
        copy_into(pixels, x)  # contiguous, whatever x's layout
    else:
        mean, std = normalization
        affine_into(pixels, x, std, mean)  # pixels = x * std + mean, written contiguous
    torch.clamp(pixels, 0.0, 1.0, out=images[:b])
    latest = torch.arange(b * width) // width  # row of ``images`` holding each chain's latest image
    end = b
    for step in range(depth):
        op_index = draws.ops[:, :, step].reshape(-1)
        live = (op_index >= 0).nonzero().squeeze(1)
        if live.numel():
            n = live.numel()
            magnitude = draws.magnitude[:, :, step].reshape(-1)[live]
            order = run_kernels(images, latest[live], op_index[live], magnitude, ops, images[end : end + n])
            latest[live[order]] = torch.arange(end, end + n)
            end += n
    sources = torch.cat((torch.arange(rows - b, rows).view(b, 1), latest.view(b, width)), dim=1)
    weights = torch.cat((draws.m.unsqueeze(1), (1.0 - draws.m.unsqueeze(1)) * draws.weights), dim=1)
    out = weighted_rows(images.view(rows, -1), upload(sources, x.device), upload(weights, x.device, dtype)).view(x.shape)
    if normalization is not None:
        out.sub_(mean).div_(std)
    return out


def weighted_rows(table: Tensor, sources: Tensor, weights: Tensor) -> Tensor:
    """``out[i] = sum_j weights[i, j] * table[sources[i, j]]``, summed in ``j`` order.

    One ``embedding_bag`` (each source row read once, each result written once) on CUDA and
    for float32 tables up to ``_CHAIN_KEEP_BYTES`` on the CPU. On the CPU its float64 kernel
    is several times slower than a row gather and ``addcmul`` per source, and so is its
    float32 kernel once the table outgrows the caches (tens of MB: 195 against 48 us per
    600 KB row); other devices may lack the kernel (MPS before torch 2.10): those take the
    gathers (the same sums, in the same order).
    """
    if table.device.type == "cuda" or (table.device.type == "cpu" and table.dtype == torch.float32
                                       and table.numel() * table.element_size() <= _CHAIN_KEEP_BYTES):
        return F.embedding_bag(sources, table, per_sample_weights=weights, mode="sum")
    out = table.index_select(0, sources[:, 0]) * weights[:, :1]
    for j in range(1, sources.shape[1]):
        out.addcmul_(table.index_select(0, sources[:, j]), weights[:, j : j + 1])
    return out


_CHAINS = threading.local()
#: largest chain buffer kept per thread between calls: larger batches are worked through a
#: few samples at a time (16 MiB: a batch of 128 at 32x32 needs about 12.5 MB)
_CHAIN_KEEP_BYTES = 16 << 20


def _chain_buffer(numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """This thread's chain buffer of at least ``numel`` elements (CPU, up to
    ``_CHAIN_KEEP_BYTES``; grown on demand, kept until :func:`release_chain_buffer`); larger
    buffers and other devices get a new tensor."""
    if device.type != "cpu" or numel * dtype.itemsize > _CHAIN_KEEP_BYTES:
        return torch.empty(numel, dtype=dtype, device=device)
    bufs = getattr(_CHAINS, "bufs", None)
    if bufs is None:
        bufs = _CHAINS.bufs = {}
    buf = bufs.get(dtype)
    if buf is None or buf.numel() < numel:
        buf = bufs[dtype] = torch.empty(numel, dtype=dtype)
    return buf[:numel]


def release_chain_buffer() -> None:
    """Free this thread's AugMix chain buffer (made again when next needed)."""
    if hasattr(_CHAINS, "bufs"):
        del _CHAINS.bufs


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
