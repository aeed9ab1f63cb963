"""Batched image augmentations for training: random crop with zero padding, horizontal flip,
normalisation, and per-data-set channel statistics.

The crop-and-flip pair is the standard CIFAR training augmentation (He et al. 2016, "Deep
Residual Learning for Image Recognition", section 4.2: pad 4 pixels, take a random 32x32
crop, flip horizontally with probability 0.5). Everything works on whole batches with one
gather, no Python loop over samples. Sampling is apart from applying, as elsewhere in mixkit:
:func:`sample_crop_flip` draws :class:`CropFlipParams` on the CPU, :func:`crop_flip` applies
them; :func:`random_crop_flip` does both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mixkit import rng
from mixkit.errors import DTypeError, HyperParameterError, ShapeError

__all__ = [
    "CropFlipParams",
    "DATASET_STATS",
    "IMAGENET_STATS",
    "compute_stats",
    "crop_flip",
    "dataset_stats",
    "normalize",
    "random_crop_flip",
    "sample_crop_flip",
]

Stats = tuple[tuple[float, ...], tuple[float, ...]]

#: ImageNet's conventional statistics, the fallback for data sets without their own.
IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

#: ``(mean, std)`` per channel, in [0, 1] units, over every pixel of the training split (the
#: pooled standard deviation that :func:`compute_stats` returns, not the mean of per-image ones).
DATASET_STATS: dict[str, Stats] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tiny_imagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
    "imagenet": IMAGENET_STATS,
}


@dataclass(frozen=True)
class CropFlipParams:
    """Where each sample's crop starts in the zero-padded image, and whether it is flipped.

    Attributes:
        top: ``(B,)`` int64 row of the crop's top edge in the padded image, in ``[0, 2*padding]``.
        left: ``(B,)`` int64 column of the crop's left edge in the padded image.
        flip: ``(B,)`` bool, True where the crop is mirrored left-right.
        padding: zero padding added on each side before cropping.

    Example:
        >>> p = CropFlipParams(torch.tensor([4]), torch.tensor([4]), torch.tensor([False]), padding=4)
        >>> x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
        >>> torch.equal(crop_flip(x, p), x)
        True
    """

    top: torch.Tensor
    left: torch.Tensor
    flip: torch.Tensor
    padding: int


def _check_batch(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ShapeError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format of ``x`` to give its output (channels_last only when x is)."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def sample_crop_flip(
    batch_size: int, *, padding: int = 4, flip: bool = True, generator: torch.Generator | None = None
) -> CropFlipParams:
    """Draw crop offsets (uniform over the ``(2*padding+1)**2`` positions) and flips (p=0.5).

    Args:
        batch_size: number of samples ``B``.
        padding: zero padding on each side (>= 0).
        flip: whether to draw flips; if False no sample is flipped.
        generator: CPU generator for the draws, or None for torch's global one.

    Returns:
        :class:`CropFlipParams` with ``(B,)`` CPU tensors.
    """
    if padding < 0:
        raise HyperParameterError(f"padding must be >= 0, got {padding}")
    rng.check_generator(generator)
    top = rng.randint(0, 2 * padding + 1, (batch_size,), generator=generator)
    left = rng.randint(0, 2 * padding + 1, (batch_size,), generator=generator)
    flips = rng.bernoulli((batch_size,), 0.5 if flip else 0.0, generator=generator)
    return CropFlipParams(top, left, flips, padding)


def crop_flip(x: torch.Tensor, params: CropFlipParams) -> torch.Tensor:
    """Crop each sample of ``x`` from its zero-padded version and mirror it where asked.

    Output pixel ``(i, j)`` of sample ``b`` reads input pixel
    ``(top[b] + i - padding, left[b] + j' - padding)`` with ``j' = W-1-j`` if flipped, else
    ``j``; positions outside the input (the padding) are 0. A contiguous batch with crops
    inside the padded images (:func:`sample_crop_flip`'s) is padded once and gathered by rows
    and by columns; any other, one gather of pixels (the same values).

    Args:
        x: ``(B, C, H, W)`` batch, any dtype and device; not modified.
        params: offsets and flips for the ``B`` samples.

    Returns:
        ``(B, C, H, W)`` tensor of x's dtype, device and memory format.
    """
    _check_batch(x)
    b, _, h, w = x.shape
    if params.top.shape != (b,) or params.left.shape != (b,) or params.flip.shape != (b,):
        raise ShapeError(f"params are for {tuple(params.top.shape)} samples, the batch has {b}")
    pad = params.padding
    if x.is_contiguous() and x.numel() and bool(((params.top >= 0) & (params.top <= 2 * pad)
                                                 & (params.left >= 0) & (params.left <= 2 * pad)).all()):
        return _crop_flip_padded(x, params)
    return _crop_flip_gather(x, params)


def _crop_flip_padded(x: torch.Tensor, params: CropFlipParams) -> torch.Tensor:
    """:func:`crop_flip` of a contiguous batch whose crops lie inside the padded images (as
    :func:`sample_crop_flip` draws them): the zero-padded batch, then one gather of rows and one
    of columns (copies of the same values; 5-10x faster than the pixel gather of
    :func:`_crop_flip_gather` for a uint8 batch of 128 at 32x32)."""
    b, c, h, w = x.shape
    pad = params.padding
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad)) if pad else x
    hp, wp = h + 2 * pad, w + 2 * pad
    top, left, flips = (t.to(x.device) for t in (params.top, params.left, params.flip))
    # each output row (b, c, i) is padded row top[b] + i of image b, channel c
    first = (torch.arange(b * c, device=x.device) * hp).view(b, c, 1) + top.view(b, 1, 1)
    rows = (first + torch.arange(h, device=x.device)).view(-1)
    picked = torch.index_select(padded.reshape(b * c * hp, wp), 0, rows).view(b, c * h, wp)
    j = torch.arange(w, device=x.device)
    cols = left[:, None] + torch.where(flips[:, None], w - 1 - j, j)  # (B, W) padded column of each output one
    out = torch.gather(picked, 2, cols.view(b, 1, w).expand(b, c * h, w))
    return out.view(b, c, h, w)


def _crop_flip_gather(x: torch.Tensor, params: CropFlipParams) -> torch.Tensor:
    """:func:`crop_flip` for any batch: one gather of pixels, positions outside the input 0."""
    b, _, h, w = x.shape
    top, left, flips = (t.to(x.device) for t in (params.top, params.left, params.flip))
    rows = top[:, None] + torch.arange(h, device=x.device) - params.padding  # (B, H)
    cols = left[:, None] + torch.arange(w, device=x.device) - params.padding  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # (B, H, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = x[batch, :, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]  # (B, H, W, C)
    out = out.masked_fill(~inside[..., None], 0).permute(0, 3, 1, 2)
    return out.contiguous(memory_format=_memory_format(x))


def random_crop_flip(
    x: torch.Tensor, *, padding: int = 4, flip: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop of the zero-padded batch and random horizontal flip, per sample.

    Args:
        x: ``(B, C, H, W)`` batch, uint8 or float, any device; not modified.
        padding: zero padding on each side before the ``H x W`` crop (0: no crop).
        flip: mirror each sample left-right with probability 0.5.
        generator: CPU generator for the draws, or None for torch's global one.

    Returns:
        ``(B, C, H, W)`` tensor of x's dtype, device and memory format.

    Example:
        >>> x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
        >>> y = random_crop_flip(x, generator=torch.Generator().manual_seed(0))
        >>> y.shape, y.dtype
        (torch.Size([8, 3, 32, 32]), torch.uint8)
    """
    _check_batch(x)
    return crop_flip(x, sample_crop_flip(x.shape[0], padding=padding, flip=flip, generator=generator))


def normalize(
    x_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float], *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Map uint8 pixels to ``(x / 255 - mean) / std`` per channel.

    Args:
        x_uint8: ``(..., C, H, W)`` uint8 images, any device; channels_last is kept.
        mean: ``C`` channel means in [0, 1] units.
        std: ``C`` channel standard deviations (> 0), in [0, 1] units.
        dtype: floating dtype of the result (half types are computed in float32).

    Returns:
        Tensor of ``x_uint8``'s shape, device and memory format, of ``dtype``.

    Example:
        >>> normalize(torch.tensor([[[[0, 255]]]], dtype=torch.uint8), [0.5], [0.5])
        tensor([[[[-1.,  1.]]]])
    """
    if x_uint8.dtype != torch.uint8:
        raise DTypeError(f"normalize expects uint8 images, got {x_uint8.dtype}")
    if not dtype.is_floating_point:
        raise DTypeError(f"dtype must be a floating type, got {dtype}")
    if x_uint8.dim() < 3:
        raise ShapeError(f"expected (..., C, H, W) images, got shape {tuple(x_uint8.shape)}")
    channels = x_uint8.shape[-3]
    if len(mean) != channels or len(std) != channels:
        raise ShapeError(f"{channels} channels but {len(mean)} means and {len(std)} stds")
    if any(s <= 0 for s in std):
        raise HyperParameterError(f"std must be > 0, got {list(std)}")
    work = torch.float64 if dtype == torch.float64 else torch.float32
    mean64 = torch.tensor(list(mean), dtype=torch.float64)
    std64 = torch.tensor(list(std), dtype=torch.float64)
    scale = (1.0 / (255.0 * std64)).to(x_uint8.device, work).view(channels, 1, 1)
    shift = (mean64 / std64).to(x_uint8.device, work).view(channels, 1, 1)
    return (x_uint8.to(work) * scale - shift).to(dtype)


def compute_stats(images: torch.Tensor, *, chunk_size: int = 1024) -> Stats:
    """Per-channel mean and (pooled, population) standard deviation of uint8 images.

    Sums are exact integers, accumulated ``chunk_size`` images at a time.

    Args:
        images: ``(N, C, H, W)`` uint8 tensor, N >= 1.
        chunk_size: images processed at a time (bounds the memory used).

    Returns:
        ``(mean, std)``, each a tuple of ``C`` floats in [0, 1] units.

    Example:
        >>> compute_stats(torch.tensor([[[[0, 255]]]], dtype=torch.uint8))
        ((0.5,), (0.5,))
    """
    _check_batch(images)
    if images.dtype != torch.uint8 or images.shape[0] == 0:
        raise DTypeError(f"compute_stats expects non-empty uint8 images, got {images.dtype} {tuple(images.shape)}")
    total = torch.zeros(images.shape[1], dtype=torch.int64, device=images.device)
    squares = torch.zeros_like(total)
    for chunk in images.split(chunk_size):
        total += chunk.sum(dim=(0, 2, 3), dtype=torch.int64)
        squares += chunk.to(torch.int32).square().sum(dim=(0, 2, 3), dtype=torch.int64)
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total.double() / (count * 255.0)
    std = (squares.double() / (count * 255.0**2) - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def dataset_stats(name: str, images: torch.Tensor | None = None) -> Stats:
    """``DATASET_STATS[name]``; else computed from ``images`` if given; else ImageNet's.

    Args:
        name: data set name, as given to :func:`mixkit.data.load_dataset`.
        images: ``(N, C, H, W)`` uint8 training images of a data set without known statistics.
    """
    if name in DATASET_STATS:
        return DATASET_STATS[name]
    return compute_stats(images) if images is not None else IMAGENET_STATS
