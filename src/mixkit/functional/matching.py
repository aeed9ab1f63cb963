"""Optimal matchings between clouds of samples (k-Mixup's pairing).

Follows Greenewald et al., "k-Mixup Regularization for Deep Learning via Optimal Transport"
(TMLR 2023; reference code github.com/AnmingGu/kmixup-cifar10): clouds of ``k`` samples are
matched by the permutation of least total squared distance, found exactly (shortest
augmenting paths, as the Hungarian method).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mixkit._device import upload
from mixkit.functional.alloc import fresh
from mixkit.functional.blend import memory_order, to_memory

__all__ = ["linear_assignment", "match_clouds"]


def linear_assignment(cost: np.ndarray) -> np.ndarray:
    """Exact minimum-cost perfect matchings of many square problems at once.

    Shortest augmenting paths with row and column potentials (Crouse, "On implementing 2D
    rectangular assignment algorithms", IEEE TAES 2016, the method of SciPy's
    ``linear_sum_assignment``), O(n^3) per problem and vectorised over the leading dim: every
    problem runs the same steps, finished ones idle. Each row is added by one Dijkstra search
    over the reduced costs; the potentials move once per search, not once per step.

    Args:
        cost: ``(P, n, n)`` finite costs.

    Returns:
        ``(P, n)`` int64: ``perm[p, i]`` is the column matched to row ``i``; it minimises
        ``sum_i cost[p, i, perm[p, i]]``.
    """
    cost = np.asarray(cost, dtype=np.float64)
    problems, n, m = cost.shape
    if n != m:
        raise ValueError(f"cost must hold square matrices, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("cost must be finite")
    u, v = np.zeros((problems, n + 1)), np.zeros((problems, n))  # u[:, n]: a scratch row
    col4row = np.full((problems, n), -1, dtype=np.int64)
    row4col = np.full((problems, n), -1, dtype=np.int64)
    for cur in range(n):
        dist, path, seen, reach = _shortest_path(cost, u, v, row4col, cur)
        # potentials: every reached column and the row matched to it move by reach - dist
        owned = seen & (row4col >= 0)
        gain = np.where(seen, reach[:, None] - dist, 0.0)
        u[np.arange(problems)[:, None], np.where(owned, row4col, n)] += gain
        u[:, cur] += reach
        v -= gain
        sink = (seen & ~owned).argmax(axis=1)  # the free column each search ended on
        _augment(path, row4col, col4row, sink, cur)
    return col4row


def _shortest_path(
    cost: np.ndarray, u: np.ndarray, v: np.ndarray, row4col: np.ndarray, cur: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Dijkstra over the reduced costs from row ``cur`` until a free column is reached, in
    every problem; returns the path costs ``dist``, the row each column was reached from, the
    columns reached and the path cost of the last one."""
    problems, n, _ = cost.shape
    ar = np.arange(problems)
    dist = np.full((problems, n), np.inf)
    path = np.full((problems, n), -1, dtype=np.int64)
    seen = np.zeros((problems, n), dtype=bool)
    reach = np.zeros(problems)
    i = np.full(problems, cur, dtype=np.int64)
    active = np.ones(problems, dtype=bool)
    while True:
        r = cost[ar, i] - (u[ar, i] - reach)[:, None] - v
        better = (r < dist) & ~seen
        better &= active[:, None]
        np.copyto(dist, r, where=better)
        np.copyto(path, i[:, None], where=better)
        masked = np.where(seen, np.inf, dist)
        j = masked.argmin(axis=1)
        seen[ar, j] |= active
        reach = np.where(active, masked[ar, j], reach)
        i = row4col[ar, j]  # the row matched to it (-1: free, the search ends)
        active &= i >= 0
        if not active.any():
            return dist, path, seen, reach


def _augment(path: np.ndarray, row4col: np.ndarray, col4row: np.ndarray, j: np.ndarray, cur: int) -> None:
    """Flip the matching along each problem's path from column ``j`` back to row ``cur``."""
    ar = np.arange(path.shape[0])
    active = np.ones(path.shape[0], dtype=bool)
    while True:
        i = path[ar, j]
        row4col[ar, j] = np.where(active, i, row4col[ar, j])
        prev = col4row[ar, i]
        col4row[ar, i] = np.where(active, j, prev)
        active &= i != cur
        if not active.any():
            return
        j = np.where(active, prev, j)


def match_clouds(x: Tensor, order: Tensor, partner: Tensor, k: int) -> Tensor:
    """k-Mixup's pairing: optimal matchings between clouds of ``k`` rows.

    Cloud ``c`` holds rows ``order[c*k:(c+1)*k]`` and is matched to the rows
    ``partner[c*k:(c+1)*k]`` by the permutation that minimises the total squared Euclidean
    distance of the flattened samples; a last, smaller cloud takes the remaining rows.

    Args:
        x: ``(B, ...)`` float batch (the distances are taken in float32 or float64).
        order: ``(B,)`` permutation that groups the rows into clouds.
        partner: ``(B,)`` permutation that gives each cloud its partner cloud.
        k: cloud size (>= 1).

    Returns:
        ``(B,)`` int64 on the CPU: the partner row of each row.
    """
    b = x.shape[0]
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    # rows flattened in memory order (a view for channels_last too): distances do not depend
    # on the order of the features
    flat = to_memory(x.detach(), memory_order(x)).reshape(b, -1).to(work)
    # squared norms a few rows at a time (each row's sum as flat.square().sum(1) adds it): a
    # batch-sized square of large samples faults its pages in at every call
    step = max(1, (4 << 20) // (flat.shape[1] * flat.dtype.itemsize))
    sq = torch.cat([flat[i : i + step].square().sum(1) for i in range(0, b, step)])
    index = torch.empty(b, dtype=torch.long)
    start = 0
    for size, count in ((k, b // k), (b % k, 1 if b % k else 0)):
        if not count:
            continue
        rows = order[start : start + size * count].view(count, size)
        cols = partner[start : start + size * count].view(count, size)
        r, q = upload(rows.reshape(-1), x.device), upload(cols.reshape(-1), x.device)
        # the clouds' rows, in pooled blocks for large batches (see mixkit.functional.alloc)
        a = torch.index_select(flat, 0, r, out=fresh((r.shape[0], flat.shape[1]), flat.dtype, flat.device))
        c = torch.index_select(flat, 0, q, out=fresh((q.shape[0], flat.shape[1]), flat.dtype, flat.device))
        a, c = a.view(count, size, -1), c.view(count, size, -1)  # (count, size, D)
        norms = sq[r].view(count, size, 1) + sq[q].view(count, 1, size)
        cost = torch.baddbmm(norms, a, c.transpose(1, 2), alpha=-2).clamp_min(0)  # squared distances
        perm = torch.from_numpy(linear_assignment(cost.cpu().double().numpy()))
        index[rows.reshape(-1)] = cols.gather(1, perm).reshape(-1)
        start += size * count
    return index
