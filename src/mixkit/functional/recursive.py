"""RecursiveMix's tensor functions: the history pasted into a batch, ROI pooling, the
consistency loss and the target extended by the history's sources.

Behind :mod:`mixkit.methods.recursivemix`. Paper and reference code:
    * Yang, Li, Zhao, Song, Yang, "RecursiveMix: Mixed Learning with History", NeurIPS 2022,
      arXiv 2203.06844 (github.com/implus/RecursiveMix-pytorch: ``utils.py::recursive_mix``,
      ``main.py::train``, ``models_cifar/resnet.py::forward``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mixkit._device import upload
from mixkit.errors import ShapeError
from mixkit.functional import row_paths
from mixkit.functional.alloc import fresh_copy
from mixkit.functional.layout import in_format
from mixkit.functional.boxes import box_mask
from mixkit.types import MixTarget

__all__ = ["extend_target", "history_consistency", "paste_history", "roi_average"]


def _work(t: Tensor) -> torch.dtype:
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def _cast_like(y: Tensor, like: Tensor) -> Tensor:
    if like.is_floating_point():
        return y.to(like.dtype)
    if y.is_floating_point():
        info = torch.iinfo(like.dtype)
        y = y.round().clamp(info.min, info.max)
    return y.to(like.dtype)


def _keep_format(out: Tensor, like: Tensor) -> Tensor:
    last = like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous()
    return in_format(out, torch.channels_last if last else torch.contiguous_format)


def _source_coords(start: Tensor, end: Tensor, size: int, mode: str) -> Tensor:
    """``(B, size)`` source coordinate of every output pixel for a box ``[start, end)``.

    As ``F.interpolate``: nearest takes ``floor(i * (size / side))`` in float32; bilinear with
    ``align_corners=True`` takes ``i * (size - 1) / (side - 1)``.
    """
    side = (end - start).clamp_min(1).unsqueeze(1)
    rel = torch.arange(size, device=start.device).unsqueeze(0) - start.unsqueeze(1)
    if mode == "nearest":
        scale = upload(torch.tensor(float(size), dtype=torch.float32), start.device) / side.float()
        return (rel.float() * scale).floor().long().clamp(0, size - 1)
    scale = torch.where(side > 1, (size - 1) / (side - 1).clamp_min(1).double(), 0.0)
    return (rel.double() * scale).clamp(0, size - 1)


def _paste_rows(x: Tensor, history: Tensor, boxes: Tensor) -> Tensor | None:
    """Nearest-neighbour :func:`_paste_each` of large samples, row by row: each history image
    resized to its box with ``F.interpolate``, which reads the same source pixels as the
    batched gather (``floor(i * size / side)`` in float32), and pasted over a copy of ``x``.
    ``None`` when a box lies outside the image (the batched form then runs)."""
    _, _, h, w = x.shape
    listed = boxes.tolist()
    if any(not (0 <= top <= bottom <= h and 0 <= left <= right <= w) for top, left, bottom, right in listed):
        return None
    out = fresh_copy(x)
    for i, (top, left, bottom, right) in enumerate(listed):
        if bottom > top and right > left:
            small = F.interpolate(history[i : i + 1], size=(bottom - top, right - left), mode="nearest")
            out[i, :, top:bottom, left:right] = _cast_like(small[0], x)
    return out


def _paste_each(x: Tensor, history: Tensor, boxes: Tensor, mode: str) -> Tensor:
    b, _, h, w = x.shape
    if (mode == "nearest" and row_paths.row_wise(x) and boxes.shape[0] == b and boxes.shape[1] == 4
            and (history.is_floating_point() or history.dtype == torch.uint8)
            and not (torch.is_grad_enabled() and (x.requires_grad or history.requires_grad))):
        out = _paste_rows(x, history, boxes)
        if out is not None:  # large samples: no gather of every pixel, no batch-sized temporaries
            return out
    boxes = upload(boxes, x.device)
    rows = _source_coords(boxes[:, 0], boxes[:, 2], h, mode)
    cols = _source_coords(boxes[:, 1], boxes[:, 3], w, mode)
    if mode == "nearest":  # one flat gather: (B, C, H * W) from (B, C, H * W)
        flat = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(-1, history.shape[1], -1)
        picked = history.reshape(b, -1, h * w).gather(2, flat).view(history.shape)
    else:
        work = _work(x)
        gy = (2 * rows / max(h - 1, 1) - 1).to(work)[:, :, None].expand(b, h, w)
        gx = (2 * cols / max(w - 1, 1) - 1).to(work)[:, None, :].expand(b, h, w)
        grid = torch.stack([gx, gy], dim=-1)
        picked = F.grid_sample(history.to(work), grid, mode="bilinear", padding_mode="border", align_corners=True)
    out = torch.where(box_mask(boxes, (h, w), x.device), _cast_like(picked, x), x)
    return _keep_format(out, x)


def paste_history(x: Tensor, history: Tensor, boxes: Tensor, interpolation: str = "nearest") -> Tensor:
    """Resize each historical image ``history[b]`` to its box and paste it over ``x[b]``.

    Args:
        x: ``(B, C, H, W)`` current batch; never modified.
        history: ``(B, C, H, W)`` historical batch (cast to ``x``'s dtype and device).
        boxes: ``(N, 4)`` int64 ``[top, left, bottom, right]`` (ends exclusive), N = 1 or B.
        interpolation: ``"nearest"`` (the reference's default) or ``"bilinear"``
            (``align_corners=True``, as the reference).

    Returns:
        ``(B, C, H, W)`` new tensor in ``x``'s dtype and memory format. One box for the batch
        uses ``F.interpolate``; one box per sample samples the same points in one batched call.
    """
    if history.shape != x.shape:
        raise ShapeError(f"history of shape {tuple(history.shape)} does not fit x of shape {tuple(x.shape)}")
    history = upload(history, x.device)
    if boxes.shape[0] != 1:
        return _paste_each(x, history, boxes, interpolation)
    top, left, bottom, right = boxes[0].tolist()
    if bottom <= top or right <= left:
        return fresh_copy(x)
    corners = True if interpolation == "bilinear" else None
    small = F.interpolate(history.to(_work(x)), size=(bottom - top, right - left), mode=interpolation,
                          align_corners=corners)
    out = fresh_copy(x)  # x.clone(), in a pooled block for a large batch (no page faults)
    out[:, :, top:bottom, left:right] = _cast_like(small, x)
    return out


def roi_average(features: Tensor, boxes: Tensor, image_size: Sequence[int]) -> Tensor:
    """Average of ``features`` under each box: RoIAlign with a 1x1 output, batched.

    The same sampling as ``torchvision.ops.roi_align(output_size=1, sampling_ratio=-1,
    aligned=True)`` (the reference's call): the box scaled to the feature map and shifted by
    half a cell, ``ceil(side)`` bilinear samples per dim at the centres of equal sub-bins.

    Args:
        features: ``(B, C, h, w)`` feature map.
        boxes: ``(N, 4)`` ``[top, left, bottom, right]`` in image pixels, N = 1 or B.
        image_size: ``(H, W)`` of the image the boxes refer to.

    Returns:
        ``(B, C)`` pooled features (0 for empty boxes), differentiable in ``features``.
    """
    b, _, fh, fw = features.shape
    work = _work(features)
    boxes = boxes.to(features.device).expand(b, 4).to(work)
    axes = []
    for k, (fsize, isize) in enumerate(((fh, image_size[0]), (fw, image_size[1]))):
        scale = fsize / isize
        start, length = boxes[:, k] * scale - 0.5, (boxes[:, k + 2] - boxes[:, k]) * scale
        n = torch.ceil(length).clamp_min(0)
        i = torch.arange(max(int(n.max()) if b else 1, 1), device=features.device, dtype=work)
        pos = start[:, None] + (i + 0.5) * (length / n.clamp_min(1))[:, None]
        axes.append((2 * pos / max(fsize - 1, 1) - 1, (i < n[:, None]).to(work), n))
    (gy, vy, ny), (gx, vx, nx) = axes
    grid = torch.stack([gx[:, None, :].expand(-1, gy.shape[1], -1), gy[:, :, None].expand(-1, -1, gx.shape[1])], -1)
    sampled = F.grid_sample(features.to(work), grid, mode="bilinear", padding_mode="border", align_corners=True)
    weight = vy[:, :, None] * vx[:, None, :] / (ny * nx).clamp_min(1)[:, None, None]
    return (sampled * weight[:, None]).sum(dim=(2, 3))


def history_consistency(roi_logits: Tensor, history_logits: Tensor, weight: Tensor) -> Tensor:
    """``mean_b weight_b * KL(softmax(history_logits_b) || softmax(roi_logits_b))``.

    Args:
        roi_logits: ``(B, K)`` the model's prediction on the pasted region.
        history_logits: ``(B, K)`` the stored logits of the history (no gradient flows).
        weight: ``(B,)`` per-sample weight, ``omega * (1 - lam)`` in RecursiveMix.
    """
    work = torch.promote_types(roi_logits.dtype, torch.float32)
    logq = F.log_softmax(roi_logits.to(work), dim=1)
    logp = F.log_softmax(history_logits.detach().to(device=roi_logits.device, dtype=work), dim=1)
    kl = F.kl_div(logq, logp, reduction="none", log_target=True).sum(dim=1)
    return (weight.to(device=kl.device, dtype=work) * kl).mean()


def _compact(index: Tensor, weight: Tensor, max_sources: int) -> tuple[Tensor, Tensor, Tensor]:
    """Drop sources of zero weight, fold those past ``max_sources`` into the last kept one,
    and number the label rows still referenced (the current batch's rows stay first): the
    rows used, the index into them and the weights (CPU tensors)."""
    keep = (weight != 0).any(dim=0)
    keep[0] = True
    index, weight = index[:, keep], weight[:, keep]
    if index.shape[1] > max_sources:
        tail = weight[:, max_sources - 1 :].sum(dim=1, keepdim=True)
        weight = torch.cat([weight[:, : max_sources - 1], tail], dim=1)
        index = index[:, :max_sources]
    used, inverse = torch.unique(index, return_inverse=True)
    return used, inverse, weight


def extend_target(
    y: Tensor, lam: Tensor, history: MixTarget | None, num_classes: int | None = None, max_sources: int = 16
) -> MixTarget:
    """The recursive target ``lam * y + (1 - lam) * history``, one column per source.

    The bookkeeping (which sources and label rows are still used: sizes that depend on the
    values) runs on the CPU, whatever ``y``'s device: on a GPU it would make the host wait at
    every call. ``lam`` and ``history``'s index and weight are best given as CPU tensors
    (:class:`~mixkit.methods.RecursiveMix` keeps its history's so); device ones are read back.

    Args:
        y: integer labels ``(B,)`` or soft labels ``(B, K)`` of the current batch.
        lam: ``(B,)`` weight of the current batch (its kept area).
        history: the history rows' target, or ``None`` when the batch is its own history.
        num_classes: stored on the target.
        max_sources: cap on the columns; deeper (tiny) weights fold into the last column.

    Returns:
        A :class:`MixTarget` whose labels are ``y`` followed by the historical labels still
        used; ``index[:, 0]`` is the sample itself, with weight ``lam``. Its tensors are on
        ``y``'s device.
    """
    labels, index, weight = extend_target_host(y, lam, history, max_sources)
    return MixTarget(labels, upload(index, y.device), upload(weight, y.device), num_classes)


def extend_target_host(
    y: Tensor, lam: Tensor, history: MixTarget | None, max_sources: int = 16
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`extend_target`'s labels (on ``y``'s device) with its index and weight still on
    the CPU."""
    b, dev = y.shape[0], y.device
    dtype = torch.float64 if y.dtype == torch.float64 else torch.float32
    own = torch.arange(b).unsqueeze(1)
    if history is None:
        labels, h_index, h_weight = y, own, torch.ones(b, 1, dtype=dtype)
    else:
        labels = torch.cat([y, history.labels.to(device=dev, dtype=y.dtype)])
        h_index, h_weight = history.index.cpu() + b, history.weight.to(device="cpu", dtype=dtype)
    lam = lam.to(device="cpu", dtype=dtype).unsqueeze(1)  # differentiable: a learned lam keeps its gradient
    index = torch.cat([own, h_index], dim=1)
    weight = torch.cat([lam, (1 - lam) * h_weight], dim=1)
    used, inverse, weight = _compact(index, weight, max_sources)
    return labels[upload(used, dev)], inverse, weight
