"""Patch-level neighbourhood interpolation (Pani): patches, their nearest patches, the mix.

Follows Sun, Yu, Lin, Zhu, "Patch-level Neighborhood Interpolation: A General and Effective
Graph-based Regularization Strategy", ACML 2023 (PMLR 222), arXiv 1911.09307 (no official
code). A batch ``(B, C, H, W)`` is cut into non-overlapping ``s x s`` patches (the bottom and
right edges padded by replication when ``s`` does not divide the size); each patch of a
sample is linked to its ``K`` nearest patches (any position) in that sample's peer images,
and is replaced by ``lam * patch + (1 - lam) * mean(neighbours)``.

Patches are indexed ``b * P + i`` over the batch (``P`` patches per sample, row-major on the
patch grid), so one ``(B, P, K)`` int64 tensor of neighbours drives both the mix and the label.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mixkit._device import upload
from mixkit.functional.alloc import fresh, fresh_like

__all__ = [
    "from_patches",
    "interpolate_patches",
    "neighbour_sums",
    "nearest_patches",
    "smallest_columns",
    "patch_grid",
    "patch_shares",
    "source_weights",
    "to_patches",
]

_HALF = (torch.float16, torch.bfloat16)
#: largest distance (or gathered key) block, in elements, built at once by :func:`nearest_patches`.
_BLOCK = 2**22
#: the same on the CPU with :func:`smallest_columns` (float32), whose gathers read the block
#: at random: a smaller block stays in the caches
_CPU_BLOCK = 2**20


def _work(x: Tensor) -> Tensor:
    return x.float() if x.dtype in _HALF else x


def patch_grid(spatial: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """``(rows, cols)`` of the patch grid: ``ceil(H / s)`` by ``ceil(W / s)``."""
    return math.ceil(spatial[0] / patch_size), math.ceil(spatial[1] / patch_size)


def to_patches(x: Tensor, patch_size: int) -> Tensor:
    """``(B, P, C * s * s)`` non-overlapping patches of ``(B, C, H, W)`` (half: in float32).

    When ``s`` does not divide ``H`` or ``W`` the bottom and right edges are padded by
    replicating the last row and column, so edge patches are whole.
    """
    b, c, h, w = x.shape
    s = patch_size
    gh, gw = patch_grid((h, w), s)
    work = x
    if (gh * s, gw * s) != (h, w):
        work = F.pad(_work(x), (0, gw * s - w, 0, gh * s - h), mode="replicate")
    # one copy (half converted on the way) into memory kept from call to call when large
    out = fresh((b, gh * gw, c * s * s), torch.float32 if x.dtype in _HALF else x.dtype, x.device)
    out.view(b, gh, gw, c, s, s).copy_(work.reshape(b, c, gh, s, gw, s).permute(0, 2, 4, 1, 3, 5))
    return out


def from_patches(patches: Tensor, shape: tuple[int, ...], patch_size: int) -> Tensor:
    """Inverse of :func:`to_patches`: ``(B, P, C * s * s)`` back to ``shape = (B, C, H, W)``."""
    b, c, h, w = shape
    s = patch_size
    gh, gw = patch_grid((h, w), s)
    full = patches.reshape(b, gh, gw, c, s, s).permute(0, 3, 1, 4, 2, 5).reshape(b, c, gh * s, gw * s)
    return full[:, :, :h, :w]


def patch_shares(spatial: tuple[int, int], patch_size: int) -> Tensor:
    """``(P,)`` float64: the share of the image's pixels each patch covers (sums to 1).

    Edge patches of a grid that overruns the image count only their in-image pixels.
    """
    h, w = spatial
    s = patch_size
    gh, gw = patch_grid((h, w), s)
    rows = (h - torch.arange(gh, dtype=torch.float64) * s).clamp(max=s)
    cols = (w - torch.arange(gw, dtype=torch.float64) * s).clamp(max=s)
    return (rows.unsqueeze(1) * cols.unsqueeze(0)).reshape(-1) / (h * w)


def nearest_patches(x: Tensor, peers: Tensor, patch_size: int, k: int, *, metric: str = "euclidean") -> Tensor:
    """The ``k`` nearest patches of each patch among the patches of its sample's peers.

    Distances are Euclidean between flattened patches (``metric="cosine"``: between patches
    scaled to unit norm, which ranks as cosine similarity), in float32 (float64 for float64
    input). The ranking uses ``|k|^2 - 2 q.k`` (the query's own norm does not change it), one
    batched product per block of samples; blocks hold a few samples (or a few of one sample's
    patches), so the distances stay in cache and memory stays bounded whatever the image size.
    On the CPU, float32 distances are ranked by :func:`smallest_columns` (exact; several times
    faster than ``topk`` there); elsewhere by ``topk``.

    Args:
        x: ``(B, C, H, W)`` float batch (or features); only read.
        peers: ``(B, m)`` int64 peer rows of each sample (never the sample itself), m >= 1.
        patch_size: patch side ``s``.
        k: neighbours per patch, at most ``m * P``.
        metric: ``"euclidean"`` or ``"cosine"``.

    Returns:
        ``(B, P, k)`` int64 on ``x``'s device: flat patch ids ``row * P + i``, nearest first.
    """
    with torch.no_grad():
        u = to_patches(x.detach(), patch_size)
        if metric == "cosine":
            u = F.normalize(u, dim=-1)
        b, n, d = u.shape
        peers = upload(peers, x.device)
        m = peers.shape[1]
        groups = _groups(m * n, k) if u.device.type == "cpu" and u.dtype == torch.float32 else None
        keys, query = _keys_and_queries(u, columns=groups is not None)
        del u
        block = _BLOCK if groups is None else _CPU_BLOCK
        step = max(1, block // max(1, m * n * max(n, d + 1)))
        # a sample's own block too is bounded: its queries a few at a time (small patches on
        # large images)
        width = n if m * n * n <= block else max(1, block // (m * n))
        parts, buffer = [], None
        for start in range(0, b, step):
            rows = peers[start : start + step]
            cand = keys.index_select(0, rows.reshape(-1)).view(rows.shape[0], m * n, d + 1)
            cols = []
            for first in range(0, n, width):
                last = min(n, first + width)
                if groups is None:  # (g, queries, m * P)
                    dist = torch.bmm(query[start : start + step, first:last], cand.transpose(1, 2))
                    cols.append(dist.topk(k, dim=-1, largest=False).indices)  # columns slot * P + j
                else:  # (g, m * P, queries), into one buffer reused from block to block (stays in cache)
                    shape = (rows.shape[0], m * n, last - first)
                    if buffer is None or buffer.shape != shape:
                        buffer = torch.empty(shape)
                    dist = torch.bmm(cand, query[start : start + step, :, first:last], out=buffer)
                    cols.append(smallest_columns(dist, k, groups).transpose(1, 2))
            col = cols[0] if len(cols) == 1 else torch.cat(cols, dim=1)
            parts.append(rows.gather(1, (col // n).flatten(1)).view(col.shape) * n + col % n)
        return torch.cat(parts)


def _keys_and_queries(u: Tensor, *, columns: bool) -> tuple[Tensor, Tensor]:
    """``[-2 u, |u|^2]`` ``(B, P, D + 1)`` and ``[u, 1]``, so that a key row times a query
    row is a squared distance up to the query's own norm: ``(B, P, D + 1)``, or ``(B, D + 1,
    P)`` with ``columns`` (the distances then come out (candidates, queries), queries
    innermost). Both in kept memory when large; the squares are taken a few samples at a time
    (no batch-sized temporary)."""
    b, n, d = u.shape
    keys = fresh((b, n, d + 1), u.dtype, u.device)
    torch.mul(u, -2.0, out=keys[:, :, :d])
    chunk = max(1, (1 << 20) // max(1, n * d))
    for start in range(0, b, chunk):
        torch.sum(u[start : start + chunk].square(), dim=-1, out=keys[start : start + chunk, :, d])
    if not columns:
        query = fresh((b, n, d + 1), u.dtype, u.device)
        query[:, :, :d].copy_(u)
        query[:, :, d].fill_(1.0)
    else:
        query = fresh((b, d + 1, n), u.dtype, u.device)
        query[:, :d].copy_(u.transpose(1, 2))
        query[:, d].fill_(1.0)
    return keys, query


#: bits of a float32 value converted to float64 that are always 0 (the low mantissa bits),
#: where :func:`smallest_columns` stores a candidate's row
_FREE_BITS = 29


@functools.lru_cache(maxsize=64)
def _groups(m: int, k: int) -> int | None:
    """The group size :func:`smallest_columns` uses for ``m`` candidates and ``k`` picks, or
    ``None`` where plain ``topk`` is the better choice (few candidates, no divisor that makes
    the two selection stages much smaller than ``m``, or rows too many to index in the free
    bits of a float64)."""
    if m >= 1 << _FREE_BITS or k < 1:
        return None
    best, cost = None, m // 4  # below a quarter of the candidates per query, or not at all
    for g in range(2, m // k + 1):  # g candidates per group, m / g >= k groups
        if m % g == 0 and m // g + g * k < cost:
            best, cost = g, m // g + g * k
    return best


def smallest_columns(dist: Tensor, k: int, group: int) -> Tensor:
    """The rows of the ``k`` smallest values of each column of ``dist`` ``(S, M, Q)``
    (float32), smallest first: ``(S, k, Q)`` int64, the same as
    ``dist.topk(k, dim=1, largest=False).indices`` (ties may be ordered differently).

    Exact, in two stages of vector operations over the columns (``Q`` innermost), where
    ``topk`` selects one column at a time (a few microseconds each on the CPU):

    1. the rows are cut into ``M / group`` strided groups (rows ``j, j + M / group, ...``) and
       each group's minimum is taken; the ``k`` groups with the smallest minima hold the
       ``k`` smallest values (each value among them is at most the ``k``-th smallest
       minimum, and every group holding a smaller value is among those ``k``);
    2. the ``k * group`` values of those groups are gathered and the ``k`` smallest taken.

    Each stage picks its ``k`` by ``k`` rounds of a minimum over the rows, the row index
    carried in the low (always zero) mantissa bits of the values made float64, so one
    ``amin`` gives both and the pick is struck out by a scatter.
    """
    s, m, q = dist.shape
    g = m // group
    minima = dist.view(s, group, g, q).amin(1)  # (S, G, Q)
    picked = _pick(minima, k)  # (S, k, Q) groups
    rows = (picked.unsqueeze(1) + g * torch.arange(group, device=dist.device).view(1, group, 1, 1)).view(s, group * k, q)
    return rows.gather(1, _pick(dist.gather(1, rows), k))


def _pick(values: Tensor, k: int) -> Tensor:
    """The positions along dim 1 of the ``k`` smallest of ``values`` ``(S, N, Q)`` (float32,
    ``N < 2**29``), smallest first (ties: the first position first for values >= 0; NaN is
    the largest value, as for ``topk``).

    Non-finite values are made the largest and smallest float32 first: the vectorised
    ``amin`` returns its own NaN for a NaN (all bits set), which would lose the position.
    """
    s, n, q = values.shape
    position = torch.arange(n, device=values.device).view(1, n, 1)
    top = torch.finfo(torch.float32).max
    packed = values.to(torch.float64).nan_to_num_(nan=top, posinf=top, neginf=-top)
    packed = packed.view(torch.int64).bitwise_or_(position).view(torch.float64)
    out = torch.empty((s, k, q), dtype=torch.float64, device=values.device)
    low = (1 << _FREE_BITS) - 1
    for r in range(k):
        best = torch.amin(packed, 1, out=out[:, r])
        packed.scatter_(1, (best.view(torch.int64) & low).unsqueeze(1), math.inf)
    return out.view(torch.int64).bitwise_and_(low)


def interpolate_patches(x: Tensor, neighbours: Tensor, lam: Tensor, patch_size: int) -> Tensor:
    """``lam * patch + (1 - lam) * mean(neighbour patches)`` for every patch, out of place.

    Args:
        x: ``(B, C, H, W)`` float tensor (half precision is mixed in float32 and cast back).
        neighbours: ``(B, P, K)`` flat patch ids into ``x``'s patches (``row * P + i``).
        lam: ``(B,)`` own weight of each sample (exact at 1: the sample is returned as is).
        patch_size: patch side ``s``.

    Returns:
        The mixed batch, same shape, dtype and memory format as ``x``.
    """
    u = to_patches(x, patch_size)
    b, n, d = u.shape
    nb = upload(neighbours, x.device)
    k = nb.shape[2]
    total = neighbour_sums(u.reshape(b * n, d), nb.reshape(b * n, k))
    weight = upload(lam, x.device, u.dtype).view(b, 1, 1)
    if torch.is_grad_enabled() and (u.requires_grad or weight.requires_grad):
        mixed = torch.lerp(torch.div(total, k).view(b, n, d), u, weight)
    else:  # the same values, in the sums' own memory
        mixed = total.div_(k).view(b, n, d).lerp_(u, weight)
    # written once, into x's dtype and memory format (kept memory when large)
    out = fresh_like(x)
    c, h, w, s = x.shape[1], x.shape[2], x.shape[3], patch_size
    gh, gw = patch_grid((h, w), s)
    if (gh * s, gw * s) != (h, w):  # padded: the grid's image, cropped
        return out.copy_(from_patches(mixed, tuple(x.shape), s))
    out.view(b, c, gh, s, gw, s).copy_(mixed.view(b, gh, gw, c, s, s).permute(0, 3, 1, 4, 2, 5))
    return out


def neighbour_sums(rows: Tensor, neighbours: Tensor) -> Tensor:
    """``out[i] = sum_j rows[neighbours[i, j]]``, added in ``j`` order (a new tensor).

    One ``embedding_bag`` on the CPU and CUDA: each neighbour read once and each sum written
    once, where ``K`` row gathers added one by one make ``K`` temporaries of the batch's size
    (6x slower at 224 x 224 here); the same sums, in the same order. Other devices may lack
    the kernel (MPS before torch 2.10): they take the gathers.
    """
    if rows.device.type in ("cpu", "cuda"):
        return F.embedding_bag(neighbours, rows, mode="sum")
    return _gathered_sums(rows, neighbours)


def _gathered_sums(rows: Tensor, neighbours: Tensor) -> Tensor:
    """:func:`neighbour_sums` by ``K`` row gathers."""
    out = rows.index_select(0, neighbours[:, 0])
    for j in range(1, neighbours.shape[1]):
        out = out + rows.index_select(0, neighbours[:, j])
    return out


def source_weights(neighbours: Tensor, peers: Tensor, lam: Tensor, shares: Tensor) -> Tensor:
    """``(B, m)`` float64: the realised weight of each peer in each mixed sample.

    A patch covering a share ``a`` of the image gives ``(1 - lam) * a / K`` to the sample of
    each of its ``K`` neighbours, so the peer weights sum to ``1 - lam`` and the pixel mass of
    the mixed sample splits exactly as these weights (with ``lam`` for the sample itself).

    Args:
        neighbours: ``(B, P, K)`` flat patch ids (``row * P + i``).
        peers: ``(B, m)`` peer rows.
        lam: ``(B,)`` own weight of each sample.
        shares: ``(P,)`` pixel share of each patch (:func:`patch_shares`).
    """
    b, n, k = neighbours.shape
    src = (neighbours.cpu() // n).reshape(b, -1)
    mass = shares.to(torch.float64).view(1, n, 1).expand(b, n, k).reshape(b, -1) / k
    per_row = torch.zeros(b, b, dtype=torch.float64).scatter_add_(1, src, mass)
    return per_row.gather(1, peers.cpu()) * (1.0 - lam.to(torch.float64)).unsqueeze(1)
