"""Procedural fractal pictures: a stand-in for PixMix's downloaded mixing set.

PixMix (Hendrycks et al., CVPR 2022, github.com/andyzoujm/pixmix) mixes training images with
a set of "structurally complex" pictures: 14,230 fractals downloaded from DeviantArt plus
feature visualisations. Those pictures cannot be shipped, so this module draws fractals of
the same kind: attractors of random iterated function systems (IFS), the family of
procedural fractals used for formula-driven pre-training (Kataoka et al., "Pre-training
without Natural Images", ACCV 2020 (FractalDB); Baradad et al., "Learning to See by Looking
at Noise", NeurIPS 2021), rendered by the chaos game with random colours on a dark
background, like the DeviantArt fractals. The background is a random dark colour rather than
pure black: PixMix's multiplicative mixing raises the picture to a negative power half the
time, which turns every exactly-black pixel white.

Each IFS has 2 to 4 affine maps ``w_k(z) = A_k z + t_k``. The linear parts follow the
singular-value parametrisation of Anderson & Farrell ("Improving Fractal Pre-training",
WACV 2022): ``A_k = R(theta_k) diag(s1_k, s2_k) R(phi_k) D_k`` with random rotations, random
reflections ``D_k`` and singular values below 1 whose "sigma factor"
``sum_k (s1_k + 2 s2_k)`` is drawn from ``U[(5 + N) / 2, (6 + N) / 2]`` for ``N`` maps, the
range in which random IFS give neither dust nor filled blobs. Maps are chosen with
probability proportional to ``|det A_k|``. Every chain starts at the fixed point of one of the
maps, which lies on the attractor, so no point is off the fractal; the chains of all the
fractals of a call advance together, one tensor step per iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mixkit import rng
from mixkit.errors import HyperParameterError

__all__ = ["fractal_images"]

_MAX_MAPS = 4
_BURN_IN = 4  # steps before points are recorded (the chains start on the attractor)
_STEPS = 24  # recorded steps per chain
_POINTS_PER_PIXEL = 3.0
_MAX_RENDER = 96  # larger pictures are drawn at this side and upsampled (time grows with area)
_CHUNK_CHAINS = 1 << 17  # chains run at once (their arrays stay in cache)
_MARGIN = 0.03  # share of the picture left empty around the fractal
_BACKGROUND = 0.25  # background channels ~ U(0, 0.25): dark, rarely exactly black


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in hw):
        raise HyperParameterError(f"size must be a positive int or a pair (H, W) of them, got {size!r}")
    return hw  # type: ignore[return-value]


def _rotation(angle: Tensor) -> Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _singular_values(counts: Tensor, generator: torch.Generator | None) -> Tensor:
    """``(n, M, 2)`` singular values (s1 >= s2, < 1) meeting each IFS's sigma factor."""
    n = counts.shape[0]
    live = torch.arange(_MAX_MAPS) < counts.unsqueeze(1)  # (n, M)
    alpha = rng.uniform((n,), generator=generator) * 0.5 + (5.0 + counts) / 2.0
    raw = rng.uniform((n, _MAX_MAPS, 2), 0.05, 1.0, generator=generator)
    s1, s2 = raw.amax(-1), raw.amin(-1)
    total = ((s1 + 2 * s2) * live).sum(1)
    scale = (alpha / total).unsqueeze(1)
    sv = torch.stack([s1 * scale, s2 * scale], -1).clamp(max=0.98)
    return sv * live.unsqueeze(-1)


def _ifs(n: int, channels: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random IFS: linear parts ``(n, M, 2, 2)``, shifts ``(n, M, 2)``, map CDF ``(n, M)``,
    and map colours ``(n, M, channels)``."""
    counts = rng.randint(2, _MAX_MAPS + 1, (n,), generator=generator)
    sv = _singular_values(counts, generator)
    theta, phi = (rng.uniform((n, _MAX_MAPS), 0.0, 2 * math.pi, generator=generator) for _ in range(2))
    flips = torch.where(rng.bernoulli((n, _MAX_MAPS, 2), 0.5, generator=generator), -1.0, 1.0)
    linear = _rotation(theta) @ torch.diag_embed(sv) @ _rotation(phi) @ torch.diag_embed(flips.double())
    shift = rng.uniform((n, _MAX_MAPS, 2), -1.0, 1.0, generator=generator)
    weight = sv[..., 0] * sv[..., 1]  # |det A|, 0 for unused maps
    cdf = (weight / weight.sum(1, keepdim=True)).cumsum(1)
    cdf[:, -1] = 1.0
    colours = rng.uniform((n, _MAX_MAPS, channels), 0.15, 1.0, generator=generator)
    return linear.float(), shift.float(), cdf.float(), colours.float()


def _start(
    linear: Tensor, shift: Tensor, table: Tensor, pick: Callable[[], Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Chains started at maps' fixed points (on the attractor) and run for the burn-in;
    returns the positions, colours and the bounds ``(n, 1, 2)`` the burn-in points span."""
    eye = torch.eye(2).expand_as(linear)
    fixed = torch.linalg.solve(eye - linear, shift.unsqueeze(-1)).squeeze(-1).flatten(0, 1)
    first = pick()
    z, col = fixed[first], table[first][..., 6:]  # col[..., 0] == 1: the point count
    low, high = z.amin(1, keepdim=True), z.amax(1, keepdim=True)
    for _ in range(_BURN_IN):
        z, col = _step(z, col, table[pick()])
        low, high = torch.minimum(low, z.amin(1, keepdim=True)), torch.maximum(high, z.amax(1, keepdim=True))
    return z, col, low, high


def _step(z: Tensor, col: Tensor, row: Tensor) -> tuple[Tensor, Tensor]:
    """One chaos-game step: ``z <- A z + t`` and the colour moved halfway to the map's."""
    zx, zy = z.unbind(-1)
    nx = row[..., 0] * zx + row[..., 1] * zy + row[..., 4]
    ny = row[..., 2] * zx + row[..., 3] * zy + row[..., 5]
    return torch.stack([nx, ny], -1), torch.lerp(col, row[..., 6:], 0.5)


def _draw(
    linear: Tensor, shift: Tensor, cdf: Tensor, colours: Tensor, background: Tensor, hw: tuple[int, int],
    chains: int, generator: torch.Generator | None,
) -> Tensor:
    """Run the chaos game of ``n`` IFS together; splat the points onto ``(n, C, H, W)``
    over the ``(n, C)`` background colours."""
    n, c = colours.shape[0], colours.shape[-1]
    h, w = hw
    # one row per map: a00 a01 a10 a11 t0 t1 1 colour..., gathered with one flat index a step
    one = torch.ones(n, _MAX_MAPS, 1)
    table = torch.cat([linear.flatten(2), shift, one, colours], -1).flatten(0, 1)
    offset = (torch.arange(n) * _MAX_MAPS).unsqueeze(1)

    def pick() -> Tensor:
        k = torch.searchsorted(cdf, torch.rand(n, chains, generator=generator)).clamp_(max=_MAX_MAPS - 1)
        return k + offset

    z, col, low, high = _start(linear, shift, table, pick)
    # the burn-in points give the fitting box; rare later points beyond it fall in the margin
    extent = (high - low).amax(-1, keepdim=True).clamp_min(1e-12) / (1 - 2 * _MARGIN)
    origin = (low + high) / 2 - extent / 2
    scale = torch.tensor([w, h], dtype=torch.float32) / extent
    base = (torch.arange(n) * (h * w)).unsqueeze(1)
    acc = torch.zeros(n * h * w, c + 1)
    for _ in range(_STEPS):
        z, col = _step(z, col, table[pick()])
        pix = ((z - origin) * scale).long()
        flat = base + pix[..., 1].clamp(0, h - 1) * w + pix[..., 0].clamp(0, w - 1)
        acc.index_add_(0, flat.view(-1), col.reshape(-1, c + 1))
    acc = acc.view(n, h * w, c + 1)
    count, colour = acc[..., 0], acc[..., 1:]
    density = torch.log1p(count) / torch.log1p(count.amax(1, keepdim=True))
    alpha = density.sqrt().unsqueeze(-1)
    bg = background.unsqueeze(1)
    pixels = bg + alpha * (colour / count.clamp_min(1).unsqueeze(-1) - bg)
    return pixels.transpose(1, 2).reshape(n, c, h, w).clamp(0, 1)


def fractal_images(
    n: int, size: int | tuple[int, int], *, channels: int = 3, generator: torch.Generator | None = None
) -> Tensor:
    """Random IFS fractals drawn by the chaos game: PixMix's default mixing pictures.

    Each picture is the attractor of a random 2-4 map affine IFS (the parametrisation is in
    the module docstring), scaled to fill the picture with its aspect ratio kept, coloured by
    averaging random per-map colours along each chain and blended over a random dark
    background colour (channels in [0, 0.25]) by the square root of the log point density.
    About 3 points per pixel are drawn; pictures larger than 96 pixels a side are drawn at 96
    and upsampled bilinearly, which bounds the time (on one core, about 0.5 s per 1,000
    pictures of 32 x 32, 6 s of 252 x 252). The pictures stand in for the paper's downloaded
    fractals, which cannot be redistributed: they share the self-similar, multi-scale
    structure that makes fractals useful mixing pictures.

    Args:
        n: number of pictures.
        size: ``H`` (square) or ``(H, W)``.
        channels: channels per picture (1 for grey-scale data, 3 for RGB, any count >= 1).
        generator: CPU generator; the same seed gives the same pictures.

    Returns:
        ``(n, channels, H, W)`` float32 in [0, 1].

    Example:
        >>> pics = fractal_images(4, 32, generator=torch.Generator().manual_seed(0))
        >>> pics.shape, bool(pics.min() >= 0), bool(pics.max() <= 1)
        (torch.Size([4, 3, 32, 32]), True, True)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise HyperParameterError(f"n must be an int >= 0, got {n!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise HyperParameterError(f"channels must be an int >= 1, got {channels!r}")
    rng.check_generator(generator)
    hw = _size(size)
    shrink = min(1.0, _MAX_RENDER / max(hw))
    draw_hw = (max(1, round(hw[0] * shrink)), max(1, round(hw[1] * shrink)))
    per_fractal = int(max(256, _POINTS_PER_PIXEL * draw_hw[0] * draw_hw[1]))
    chains = math.ceil(per_fractal / _STEPS)
    chunk = max(1, _CHUNK_CHAINS // chains)
    out = []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        linear, shift, cdf, colours = _ifs(m, channels, generator)
        background = rng.uniform((m, channels), 0.0, _BACKGROUND, generator=generator).float()
        pics = _draw(linear, shift, cdf, colours, background, draw_hw, chains, generator)
        if draw_hw != hw:
            pics = F.interpolate(pics, size=hw, mode="bilinear", align_corners=False).clamp_(0, 1)
        out.append(pics)
    return torch.cat(out) if out else torch.zeros(0, channels, *hw)
