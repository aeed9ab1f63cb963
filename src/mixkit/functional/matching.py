"""Optimal matchings between clouds of samples (k-Mixup's pairing).

Follows Greenewald et al., "k-Mixup Regularization for Deep Learning via Optimal Transport"
(TMLR 2023; reference code github.com/AnmingGu/kmixup-cifar10): clouds of ``k`` samples are
matched by the permutation of least total squared distance, found exactly with the Hungarian
method.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["linear_assignment", "match_clouds"]


def linear_assignment(cost: np.ndarray) -> np.ndarray:
    """Exact minimum-cost perfect matchings of many square problems at once.

    The Hungarian method with row/column potentials and shortest augmenting paths (O(n^3) per
    problem), vectorised over the leading dim: every problem runs the same steps, finished
    ones idle.

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
    ar = np.arange(problems)
    u, v = np.zeros((problems, n + 1)), np.zeros((problems, n + 1))
    match = np.zeros((problems, n + 1), dtype=np.int64)  # row (1-based) matched to column j
    way = np.zeros((problems, n + 1), dtype=np.int64)
    for i in range(1, n + 1):
        match[:, 0] = i
        j0 = np.zeros(problems, dtype=np.int64)
        minv = np.full((problems, n + 1), np.inf)
        used = np.zeros((problems, n + 1), dtype=bool)
        active = np.ones(problems, dtype=bool)
        while active.any():
            used[ar, j0] |= active
            i0 = match[ar, j0]
            cur = cost[ar, i0 - 1, :] - u[ar, i0][:, None] - v[:, 1:]
            free = ~used[:, 1:] & active[:, None]
            better = free & (cur < minv[:, 1:])
            np.copyto(minv[:, 1:], cur, where=better)
            np.copyto(way[:, 1:], j0[:, None], where=better)
            masked = np.where(free, minv[:, 1:], np.inf)
            j1 = masked.argmin(axis=1) + 1
            delta = np.where(active, masked[ar, j1 - 1], 0.0)
            step = np.where(used & active[:, None], delta[:, None], 0.0)
            # the used columns' rows are distinct (unused ones add 0), so no accumulation is lost
            u[ar[:, None], match] += step
            v -= step
            minv[:, 1:] -= np.where(free, delta[:, None], 0.0)
            j0 = np.where(active, j1, j0)
            active &= match[ar, j0] != 0
        active = np.ones(problems, dtype=bool)
        while active.any():  # flip the augmenting path back to the root
            j1 = way[ar, j0]
            match[ar[active], j0[active]] = match[ar[active], j1[active]]
            j0 = np.where(active, j1, j0)
            active &= j0 != 0
    perm = np.empty((problems, n), dtype=np.int64)
    perm[ar[:, None], match[:, 1:] - 1] = np.arange(n)
    return perm


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
    flat = x.detach().reshape(b, -1).to(work)
    index = torch.empty(b, dtype=torch.long)
    start = 0
    for size, count in ((k, b // k), (b % k, 1 if b % k else 0)):
        if not count:
            continue
        rows = order[start : start + size * count].view(count, size)
        cols = partner[start : start + size * count].view(count, size)
        a, c = flat[rows.to(x.device)], flat[cols.to(x.device)]  # (count, size, D)
        norms = a.square().sum(-1, keepdim=True) + c.square().sum(-1).unsqueeze(1)
        cost = torch.baddbmm(norms, a, c.transpose(1, 2), alpha=-2).clamp_min(0)  # squared distances
        perm = torch.from_numpy(linear_assignment(cost.cpu().double().numpy()))
        index[rows.reshape(-1)] = cols.gather(1, perm).reshape(-1)
        start += size * count
    return index
