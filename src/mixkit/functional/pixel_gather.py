"""Per-pixel gathers of a batch through a flat index (the batched form of per-sample Mosaic,
RICAP and DCutMix in :mod:`mixkit.functional.multi`), with a backward of one scatter-add per
channel plane.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mixkit.functional.alloc import fresh_like
from mixkit.functional.layout import from_memory, match_format, memory_order, to_memory

__all__: list[str] = []


def _gather_pixels(x: Tensor, flat: Tensor) -> Tensor:
    """``out[b, c, p] = x.flatten(2)[r, c, q]`` where ``flat[b * P + p] = r * P + q`` (P positions)."""
    order = memory_order(x)
    if order is not None:  # channels last: a pixel's channels are one contiguous row
        view = to_memory(x, order)
        rows = view.reshape(-1, x.shape[1]).index_select(0, flat)
        return match_format(from_memory(rows.view(view.shape), order), x)
    if x.shape[1] <= 8:  # images: one gather per channel plane, each over the whole batch
        if torch.is_grad_enabled() and x.requires_grad:
            return _PlaneGather.apply(x, flat)
        return _gather_planes(x, flat)
    out = fresh_like(x)  # keeps x's memory format
    planes = x.transpose(0, 1).reshape(x.shape[1], -1)  # feature maps: one gather for all channels
    return out.copy_(planes.index_select(1, flat).view((x.shape[1], x.shape[0]) + x.shape[2:]).transpose(0, 1))


def _gather_planes(x: Tensor, flat: Tensor) -> Tensor:
    """:func:`_gather_pixels` for few channels: one gather per channel plane."""
    out = fresh_like(x)
    for c in range(x.shape[1]):
        out[:, c] = x[:, c].reshape(-1).index_select(0, flat).view(out[:, c].shape)
    return out


class _PlaneGather(torch.autograd.Function):
    """:func:`_gather_planes` with a backward of one scatter-add per channel plane (autograd's
    graph of the per-channel assignments makes a zero tensor of the batch's size per channel)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, flat: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(flat)
        return _gather_planes(x, flat)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (flat,) = ctx.saved_tensors
        grad = torch.empty_like(g)
        # half precision accumulates in float32 (more exact, and its index_add is far faster)
        work = torch.float32 if g.dtype in (torch.float16, torch.bfloat16) else g.dtype
        for c in range(g.shape[1]):
            plane = torch.zeros(flat.shape[0], dtype=work, device=g.device)
            src = g[:, c].reshape(-1).to(work)
            # create_graph: the out-of-place (differentiable) scatter
            plane = plane.index_add(0, flat, src) if torch.is_grad_enabled() else plane.index_add_(0, flat, src)
            grad[:, c] = plane.view(grad[:, c].shape)
        return grad, None
