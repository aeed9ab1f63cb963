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

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mixkit._device import upload
from mixkit.functional.blend import match_format

__all__ = [
    "from_patches",
    "interpolate_patches",
    "nearest_patches",
    "patch_grid",
    "patch_shares",
    "source_weights",
    "to_patches",
]

_HALF = (torch.float16, torch.bfloat16)
#: largest distance (or gathered key) block, in elements, built at once by :func:`nearest_patches`.
_BLOCK = 2**22


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
    work = _work(x)
    if (gh * s, gw * s) != (h, w):
        work = F.pad(work, (0, gw * s - w, 0, gh * s - h), mode="replicate")
    return work.reshape(b, c, gh, s, gw, s).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * s * s)


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
    batched product per block of samples; blocks hold a few samples, so the distances (at
    most ``2**22`` values) stay in cache and memory stays bounded whatever the image size;
    there is no loop over patches.

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
        query = torch.cat([u, u.new_ones(b, n, 1)], dim=2)  # [q, 1]
        keys = torch.cat([-2.0 * u, u.square().sum(-1, keepdim=True)], dim=2)  # [-2 k, |k|^2]
        del u
        peers = upload(peers, x.device)
        m = peers.shape[1]
        step = max(1, _BLOCK // max(1, m * n * max(n, d + 1)))
        parts = []
        for start in range(0, b, step):
            rows = peers[start : start + step]
            cand = keys.index_select(0, rows.reshape(-1)).view(rows.shape[0], m * n, d + 1)
            dist = torch.bmm(query[start : start + step], cand.transpose(1, 2))  # (g, P, m * P)
            col = dist.topk(k, dim=-1, largest=False).indices  # columns slot * P + j
            parts.append(rows.gather(1, (col // n).flatten(1)).view(col.shape) * n + col % n)
        return torch.cat(parts)


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
    flat = u.reshape(b * n, d)
    nb = upload(neighbours, x.device)
    acc = torch.zeros_like(u)
    for j in range(nb.shape[2]):  # K gathers of one batch each: no (B, P, K, D) tensor
        acc += flat.index_select(0, nb[:, :, j].reshape(-1)).view(b, n, d)
    mean = acc / nb.shape[2]
    mixed = torch.lerp(mean, u, upload(lam, x.device, u.dtype).view(b, 1, 1))
    return match_format(from_patches(mixed, tuple(x.shape), patch_size).to(x.dtype), x)


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
