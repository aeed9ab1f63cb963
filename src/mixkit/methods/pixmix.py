"""PixMix: mixing each image with its augmentations and a structurally complex picture.

Paper and reference code:
    * Hendrycks, Zou, Mazeika, Tang, Li, Song, Steinhardt, "PixMix: Dreamlike Pictures
      Comprehensively Improve Safety Measures", CVPR 2022 (github.com/andyzoujm/pixmix:
      ``cifar.py`` ``pixmix`` and ``augment_input``, ``pixmix_utils.py`` ``get_ab``, ``add``,
      ``multiply``).

The augmentation operations are :mod:`mixkit.functional.augment_ops` (AugMix's); the default
mixing pictures are :func:`mixkit.functional.fractals.fractal_images`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mixkit import rng
from mixkit._device import upload
from mixkit.base import MixMethod
from mixkit.errors import DTypeError, HyperParameterError, ShapeError
from mixkit.functional.alloc import fresh, fresh_like
from mixkit.functional.augment_ops import (
    ALL_OPS,
    AUGMIX_OPS,
    apply_ops_grouped,
    sample_ops,
)
from mixkit.functional.blend import take_rows
from mixkit.functional.layout import affine_into, copy_into
from mixkit.functional.pixmix_mixing import (  # the public mixings: also served from here
    _additive_mix_,
    _multiplicative_mix_,
    additive_mix,
    mixing_coefficients,
    multiplicative_mix,
)
from mixkit.functional.pixmix_pictures import (
    _crop,
    _fit,
    _fractal_set,
    _image_paths,
    _load_images,
    _match_channels,
)
from mixkit.registry import register
from mixkit.types import MixTarget, Params
from mixkit.validation import check_alpha, check_positive_int

__all__ = ["PixMix", "PixMixParams", "additive_mix", "mixing_coefficients", "multiplicative_mix"]

_PAD = 9 / 8  # pictures are fitted to 9/8 of the batch's size, then cropped (Resize(36) + RandomCrop(32))


# ----------------------------------------------------------------------------- method
@dataclass(frozen=True, eq=False, kw_only=True)
class PixMixParams(Params):
    """Params of PixMix (``index`` is the identity, ``lam`` all ones: the label is kept).

    Attributes:
        rounds: ``(B,)`` int64 number of mixing rounds in [0, k] (0 for samples left alone).
        use_picture: ``(B, k)`` bool, round ``i`` mixes in the picture (else an augmented copy).
        multiply: ``(B, k)`` bool, round ``i`` mixes multiplicatively (else additively).
        coef: ``(B, k, 2)`` float64 weights ``(a, b)`` of each round.
        picture: ``(B,)`` int64 index of each sample's picture in the mixing set.
        crop: ``(B, 2)`` float64 crop position of the picture, a share of the slack per side.
        ops: ``(B, k + 1)`` int64 augmentation ops (``augment_ops`` indices; -1: none). Column 0
            augments the starting image, column ``i + 1`` the copy mixed in round ``i``.
        magnitude: ``(B, k + 1)`` float64 magnitudes of those ops.
    """

    rounds: Tensor
    use_picture: Tensor
    multiply: Tensor
    coef: Tensor
    picture: Tensor
    crop: Tensor
    ops: Tensor
    magnitude: Tensor


def _rounds(mixed: Tensor, sources: Tensor, partner: Tensor, live: Tensor, params: PixMixParams) -> None:
    """The mixing rounds, in place on ``mixed``: round ``i`` mixes each ``live[:, i]`` sample
    with its partner image ``sources[partner[:, i]]``, multiplicatively or additively, then
    clips to [0, 1]. The (round, sample) pairs are sorted once (by round, the multiplicative
    ones first, then by sample), so each round's two mixings are slices of them."""
    step, rows = live.t().nonzero(as_tuple=True)  # by round, then by sample
    kind = 2 * step + (~params.multiply[rows, step]).long()
    order = torch.argsort(kind, stable=True)
    step, rows = step[order], rows[order]
    counts = torch.bincount(kind, minlength=2 * live.shape[1]).tolist()
    a, b = upload(params.coef[rows, step], mixed.device, mixed.dtype).t().contiguous()  # (M,) each
    partner = upload(partner[rows, step], mixed.device)
    # every group gathers its rows into the same two buffers (pooled blocks for large batches):
    # fresh batch-sized temporaries would fault their pages in at every group of every call
    most = max(counts)
    if not most:
        return
    per_row = math.prod(mixed.shape[1:])
    bufs = [fresh((most, per_row), mixed.dtype, mixed.device) for _ in range(2)]
    flat, flat_sources = mixed.view(mixed.shape[0], per_row), sources.view(sources.shape[0], per_row)
    start = 0
    for i, count in enumerate(counts):
        if count:
            part = slice(start, start + count)
            mix = _additive_mix_ if i % 2 else _multiplicative_mix_
            idx = upload(rows[part], mixed.device)
            weights = (a[part].view(-1, 1, 1, 1), b[part].view(-1, 1, 1, 1))
            img1 = torch.index_select(flat, 0, idx, out=bufs[0][:count]).view((count,) + mixed.shape[1:])
            img2 = torch.index_select(flat_sources, 0, partner[part], out=bufs[1][:count]).view(img1.shape)
            mixed.index_copy_(0, idx, mix(img1, img2, *weights).clamp_(0, 1))  # mixed into img1, in place
        start += count


@register(
    "pixmix",
    family="linear",
    paper="PixMix: Dreamlike Pictures Comprehensively Improve Safety Measures",
    authors="Hendrycks et al.",
    venue="CVPR 2022",
    year=2022,
    code="https://github.com/andyzoujm/pixmix",
    sources=1,
    summary="0-k rounds of additive or multiplicative mixing with augmented copies and a fractal picture; label kept.",
)
class PixMix(MixMethod):
    """PixMix: mix each image, in pixel space, with augmented copies of itself and a picture.

    As the reference ``pixmix``, per sample: start from the image, augmented (one random AugMix
    op at ``severity``) with probability 1/2; run ``r ~ U{0, ..., k}`` rounds (the code's
    ``np.random.randint(k + 1)``: 0 rounds happen), each mixing in, with probability 1/2, a
    fresh augmented copy of the original, else the sample's picture (one per sample, uniform
    over the set), additively or multiplicatively (1/2 each) with weights from
    :func:`mixing_coefficients`, clipped to [0, 1] after each round. The label is kept: ``lam``
    is all ones, ``index`` the identity, the target has one source.

    Mixing set: by default ``num_pictures`` procedural fractals
    (:func:`mixkit.functional.fractals.fractal_images` from ``seed``, at the batch's channel
    count), standing in for the paper's downloaded fractals and feature visualisations; or a
    folder of images (ImageFolder-style or flat, read with Pillow); or a ``(N, C, H, W)`` tensor
    (uint8, or float in [0, 1]). As the CIFAR code's ``Resize(36) + RandomCrop(32)``, pictures
    are fitted (aspect kept, centred; bilinear, antialiased when shrinking) to 9/8 of the
    batch's size and each sample takes a random crop. The fitted set is kept as 8-bit levels
    per size, channel count and device (1,000 fractals take about 1 s to make at 32 x 32, 6 s
    at 224 x 224, on one core), never pickled: PixMix pickles by its constructor arguments.
    Grey batches get RGB pictures' luma.

    Deviations from the reference (PIL images one at a time): augmented copies stay float, not
    rounded to uint8; normalised inputs (:meth:`set_input_normalization`) are mapped to pixels,
    mixed and normalised again. Defaults are the CIFAR code's; its ImageNet script uses
    ``beta=4, severity=1``.

    Args:
        mixing_set: ``None`` (procedural fractals), a folder path, or a picture tensor.
        num_pictures: number of fractals when ``mixing_set`` is ``None``.
        seed: seed of the fractal set (the set is fixed, like a dataset, whatever the call's generator).
        k: maximum number of mixing rounds.
        beta: mixing severity (the Beta parameter of :func:`mixing_coefficients`).
        severity: severity of the augmentation operations, in [1, 10].
        all_ops: also use the colour, contrast, brightness and sharpness ops (the reference's ``--all-ops``).
        p: probability of PixMix for the batch (``mode="batch"``) or each sample (``"elem"``).
        mode: ``"batch"`` or ``"elem"``.
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> m = mixkit.create("pixmix", num_pictures=8)
        >>> out = m(torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]), generator=torch.Generator().manual_seed(0))
        >>> out.x.shape, out.target.k, bool((out.params.lam == 1).all())
        (torch.Size([4, 3, 16, 16]), 1, True)
    """

    differentiable = False
    spatial_dims = (2,)
    identity_at_full_lambda = False

    def __init__(
        self,
        *,
        mixing_set: str | os.PathLike[str] | Tensor | None = None,
        num_pictures: int = 1000,
        seed: int = 0,
        k: int = 4,
        beta: float = 3.0,
        severity: int = 3,
        all_ops: bool = False,
        p: float = 1.0,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.mixing_set = _check_mixing_set(mixing_set)
        self.num_pictures = check_positive_int(num_pictures, "num_pictures", allow_none=False)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise HyperParameterError(f"seed must be an int >= 0, got {seed!r}")
        self.seed = seed
        self.k = check_positive_int(k, "k", allow_none=False)
        self.beta = check_alpha(beta, "beta")
        if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 10:
            raise HyperParameterError(f"severity must be an integer in [1, 10], got {severity!r}")
        self.severity = severity
        self.all_ops = bool(all_ops)
        self._paths: list[Path] | None = None
        self._images: list[Tensor] | None = None
        self._cache: dict[tuple[int, int, int, str], Tensor] = {}

    @property
    def _ops(self) -> tuple[str, ...]:
        return ALL_OPS if self.all_ops else AUGMIX_OPS

    def target(self, y: Tensor, params: Params) -> MixTarget:
        """The labels, unmixed (one source of weight 1)."""
        return MixTarget.unmixed(y, self.num_classes)

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> PixMixParams:
        b, k = x.shape[0], self.k
        active = self._active(b, generator)
        first = rng.bernoulli((b,), 0.5, generator=generator) & active
        rounds = rng.randint(0, k + 1, (b,), generator=generator) * active
        use_picture = rng.bernoulli((b, k), 0.5, generator=generator)
        multiply = rng.bernoulli((b, k), 0.5, generator=generator)
        coef = mixing_coefficients((b, k), self.beta, generator=generator)
        picture = rng.randint(0, self._count(), (b,), generator=generator)
        crop = rng.uniform((b, 2), generator=generator)
        ops, magnitude = sample_ops(
            (b, k + 1), (x.shape[2], x.shape[3]), severity=self.severity, ops=self._ops, generator=generator
        )
        used = torch.cat([first.unsqueeze(1), (torch.arange(k) < rounds.unsqueeze(1)) & ~use_picture], dim=1)
        return PixMixParams(
            index=torch.arange(b), lam=torch.ones(b, dtype=torch.float64), rounds=rounds, use_picture=use_picture,
            multiply=multiply, coef=coef, picture=picture, crop=crop,
            ops=ops.masked_fill(~used, -1), magnitude=magnitude.masked_fill(~used, 0.0),
        )

    def _mix(self, x: Tensor, params: PixMixParams) -> Tensor:
        _check_pixmix_params(x, params)
        changed = (params.ops[:, 0] >= 0) | (params.rounds > 0)
        if not bool(changed.any()):
            return x.clone()
        dtype = torch.promote_types(x.dtype, torch.float32)
        stats = self._stats(x, dtype)
        # contiguous work in pixel units: per-channel broadcasts over a channels_last batch are
        # several times slower, so the layout changes once on the way in (see affine_into)
        # and once on the way out
        mixed = fresh(tuple(x.shape), dtype, x.device)  # large batches: a reused block, no page faults
        if stats is None:
            copy_into(mixed, x).clamp_(0, 1)
        else:
            affine_into(mixed, x, stats[1], stats[0]).clamp_(0, 1)
        live = torch.arange(params.use_picture.shape[1]) < params.rounds.unsqueeze(1)  # (B, k)
        sources, slot, picture = self._sources(x, mixed, params, (live & params.use_picture).any(1))
        start = (slot[:, 0] >= 0).nonzero().squeeze(1)
        if start.numel():
            mixed.index_copy_(0, upload(start, x.device), take_rows(sources, slot[start, 0]))
        partner = torch.where(params.use_picture, picture.unsqueeze(1), slot[:, 1:])  # (B, k) rows of sources
        _rounds(mixed, sources, partner, live, params)
        out = mixed if stats is None else mixed.sub_(stats[0]).div_(stats[1])
        kept = upload((~changed).nonzero().squeeze(1), x.device)
        if kept.numel():
            out.index_copy_(0, kept, take_rows(x, kept).to(dtype))  # exact copies of the samples left alone
        if out.stride() == x.stride() and out.dtype == x.dtype:
            return out
        return copy_into(fresh_like(x), out)  # x's memory format and dtype

    def _sources(self, x: Tensor, pixels: Tensor, params: PixMixParams,
                 needed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Every image mixed in, in one contiguous buffer: the augmented copies of the batch
        (``pixels``: contiguous, in [0, 1]; one batched call), then the pictures of the
        ``needed`` rows (``(B,)`` bool). Also returns the ``(B, k + 1)`` row of the copy of each
        (sample, column) with an op and the ``(B,)`` row of each needed sample's picture (-1
        elsewhere)."""
        rows, cols = (params.ops >= 0).nonzero(as_tuple=True)
        chosen = needed.nonzero().squeeze(1)
        n = rows.numel()
        sources = fresh((n + chosen.numel(),) + tuple(pixels.shape[1:]), pixels.dtype, pixels.device)
        slot = torch.full(params.ops.shape, -1, dtype=torch.long)
        if n:
            order = apply_ops_grouped(pixels, rows, params.ops[rows, cols], params.magnitude[rows, cols], sources[:n],
                                      self._ops)
            sources[:n].clamp_(0, 1)  # warps may leave -1e-10s, which the multiplicative mixing's powers turn to NaN
            slot[rows[order], cols[order]] = torch.arange(n)
        picture = torch.full(needed.shape, -1, dtype=torch.long)
        if chosen.numel():
            picture[chosen] = torch.arange(n, sources.shape[0])
            sources[n:].copy_(self._pictures(x, params, chosen)).mul_(1 / 255)
        return sources, slot, picture

    # ------------------------------------------------------------------- the picture set
    def _count(self) -> int:
        if self.mixing_set is None:
            return self.num_pictures  # type: ignore[return-value]
        if isinstance(self.mixing_set, Tensor):
            return self.mixing_set.shape[0]
        if self._paths is None:
            self._paths = _image_paths(Path(self.mixing_set))
        return len(self._paths)

    def _pictures(self, x: Tensor, params: PixMixParams, rows: Tensor) -> Tensor:
        """The cropped pictures ``(N, C, H, W)`` of samples ``rows``, uint8 (8-bit levels)."""
        c, hw = x.shape[1], (x.shape[2], x.shape[3])
        fit = (math.ceil(hw[0] * _PAD), math.ceil(hw[1] * _PAD))
        key = (c, *fit, str(x.device))
        if key not in self._cache:
            self._cache[key] = upload(self._build(c, fit), x.device)
        pics = self._cache[key]
        index = params.picture[rows]
        if int(index.max()) >= pics.shape[0] or int(index.min()) < 0:
            raise ShapeError(f"params.picture indexes a mixing set of {pics.shape[0]} pictures, got {index.tolist()}")
        return _crop(pics, index, params.crop[rows], hw)

    def _build(self, channels: int, fit: tuple[int, int]) -> Tensor:
        """The whole set at size ``fit`` with ``channels`` channels, uint8 on the CPU."""
        if self.mixing_set is None:
            return _fractal_set(self.num_pictures, fit, channels, self.seed)
        if isinstance(self.mixing_set, Tensor):
            pics = self.mixing_set.detach().cpu()
            if pics.is_floating_point():
                pics = (pics.clamp(0, 1) * 255).round().to(torch.uint8)
            return _match_channels(_fit(pics, fit), channels)
        if self._images is None:
            self._count()
            self._images = _load_images(self._paths)  # type: ignore[arg-type]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(self._images):
            groups.setdefault(tuple(im.shape[1:]), []).append(i)  # one interpolate per native size
        out = torch.empty(len(self._images), channels, *fit, dtype=torch.uint8)
        for rows in groups.values():
            batch = torch.stack([self._images[i] for i in rows])
            out[torch.tensor(rows)] = _match_channels(_fit(batch, fit), channels)
        return out


def _check_mixing_set(mixing_set: object) -> str | os.PathLike[str] | Tensor | None:
    if mixing_set is None:
        return None
    if isinstance(mixing_set, Tensor):
        if mixing_set.ndim != 4 or 0 in mixing_set.shape:
            raise ShapeError(f"mixing_set must be a (N, C, H, W) tensor of pictures, got shape {tuple(mixing_set.shape)}")
        if not (mixing_set.is_floating_point() or mixing_set.dtype == torch.uint8):
            raise DTypeError(f"mixing_set must be uint8 or float pixels in [0, 1], got {mixing_set.dtype}")
        return mixing_set
    if isinstance(mixing_set, (str, os.PathLike)):
        if not Path(mixing_set).is_dir():
            raise FileNotFoundError(f"mixing_set: no folder at {os.fspath(mixing_set)!r} (give a folder of images)")
        return mixing_set
    raise TypeError(f"mixing_set must be None, a folder path or a (N, C, H, W) tensor, got {type(mixing_set).__name__}")


def _check_pixmix_params(x: Tensor, params: PixMixParams) -> None:
    b, k = params.use_picture.shape
    shapes = {"rounds": (b,), "multiply": (b, k), "coef": (b, k, 2), "picture": (b,), "crop": (b, 2),
              "ops": (b, k + 1), "magnitude": (b, k + 1)}
    bad = {n: tuple(getattr(params, n).shape) for n, shape in shapes.items() if getattr(params, n).shape != shape}
    if bad or b != x.shape[0] or x.ndim != 4:
        raise ShapeError(f"PixMix params for k={k} do not fit x of shape {tuple(x.shape)}: shapes {bad or shapes}")
