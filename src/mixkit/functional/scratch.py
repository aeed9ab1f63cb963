"""Buffers kept per thread from one call to the next, and the half-precision row blend that
works in them (for :mod:`mixkit.functional.blend`, which re-exports the public names).

On the CPU a fresh multi-megabyte temporary is often handed back to the system when freed, and
touching the next one costs page faults worth several times the arithmetic, so the partner
rows of the in-place methods and the float32 work of half-precision blends live in buffers
reused across calls (:func:`release_blend_scratch` frees them).
"""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

from mixkit._device import upload
from mixkit.functional.alloc import fresh

__all__ = ["gather_rows_scratch", "release_blend_scratch"]

#: elements of float32 scratch per chunk when half-precision rows are blended with their own
#: weights (1 MiB: the temporaries stay in the caches, and small batches take one or two chunks)
_HALF_CHUNK = 1 << 18
#: up to this many elements, a half-precision batch blended with per-row weights on the CPU is
#: converted to float32 whole (two float32 buffers of at most 8 MiB kept per thread): four
#: passes and a handful of calls, about 1.5x faster than chunks for a 32x32 batch of 128
_HALF_WHOLE = 1 << 21


def _blend_half_rows(view: Tensor, index: Tensor, lam: Tensor, *, partners: Tensor | None = None,
                     out: Tensor | None = None) -> Tensor:
    """:func:`blend` of half-precision rows with per-row weights, in float32 chunks.

    On the CPU the float32 work runs in scratch buffers kept per thread and reused across
    calls: fresh megabyte temporaries are often handed back to the system when freed, and
    touching them again costs page faults worth several times the arithmetic.

    ``partners``: the rows ``view[index]``, already gathered (``index`` is then unused);
    ``out``: a contiguous tensor like ``view`` to write into (``view`` itself for
    :func:`blend_`: each chunk reads its own rows before writing them).
    """
    b = view.shape[0]
    view = view.contiguous()
    flat = view.view(b, math.prod(view.shape[1:]))
    rn = flat.shape[1]
    if view.device.type == "cpu" and partners is None and out is None and b * rn <= _HALF_WHOLE:
        # convert once, gather the partners from the float32 copy, blend, round once
        own, part = _whole_scratch(b * rn)
        own = own.view(b, rn).copy_(flat)
        part = torch.index_select(own, 0, upload(index, view.device), out=part.view(b, rn))
        w = lam.to(dtype=torch.float32).view(b, 1)
        return part.lerp_(own, w).to(view.dtype).view(view.shape)
    rows = max(1, _HALF_CHUNK // max(1, rn))
    out = fresh(tuple(flat.shape), flat.dtype, flat.device) if out is None else out.view(b, rn)
    index = upload(index, view.device)
    w = upload(lam, view.device, torch.float32).view(b, 1)
    src = None if partners is None else partners.reshape(b, rn)
    if view.device.type != "cpu":
        for s in range(0, b, rows):
            e = min(b, s + rows)
            g = flat.index_select(0, index[s:e]) if src is None else src[s:e]
            out[s:e] = g.float().lerp_(flat[s:e].float(), w[s:e])
        return out.view(view.shape)
    gathered, part, own = _scratch(min(rows, b) * rn, view.dtype)
    for s in range(0, b, rows):
        e = min(b, s + rows)
        n = (e - s) * rn
        g = torch.index_select(flat, 0, index[s:e], out=gathered[:n].view(e - s, rn)) if src is None else src[s:e]
        a = part[:n].view(e - s, rn).copy_(g)
        out[s:e] = a.lerp_(own[:n].view(e - s, rn).copy_(flat[s:e]), w[s:e])
    return out.view(view.shape)


_SCRATCH = threading.local()


def _scratch(numel: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """This thread's CPU scratch of at least ``numel`` elements: one buffer of ``dtype`` and
    two of float32 (grown on demand, never shrunk; at most ``_HALF_CHUNK`` elements each)."""
    bufs = getattr(_SCRATCH, "bufs", {})
    have = bufs.get(dtype)
    if have is None or have[0].numel() < numel:
        have = (torch.empty(numel, dtype=dtype), torch.empty(numel, dtype=torch.float32),
                torch.empty(numel, dtype=torch.float32))
        bufs[dtype] = have
        _SCRATCH.bufs = bufs
    return have


def _whole_scratch(numel: int) -> tuple[Tensor, Tensor]:
    """This thread's two float32 CPU buffers of at least ``numel`` elements for whole-batch
    half-precision blends (grown on demand up to ``_HALF_WHOLE``, never shrunk)."""
    bufs = getattr(_SCRATCH, "bufs", {})
    have = bufs.get("whole")
    if have is None or have[0].numel() < numel:
        have = bufs["whole"] = (torch.empty(numel, dtype=torch.float32), torch.empty(numel, dtype=torch.float32))
        _SCRATCH.bufs = bufs
    return have[0][:numel], have[1][:numel]


def gather_rows_scratch(view: Tensor, index: Tensor) -> Tensor:
    """``view[index]`` (a contiguous copy), written into a buffer reused across calls.

    The in-place methods gather the partners here: on the CPU a fresh batch-sized tensor costs
    its page faults on every call (a batch of 128 float32 images at 224x224 is 77 MB, which
    the C allocator always maps afresh), several times the copy itself. The buffer is kept
    per thread, dtype and device type (CPU only; other devices allocate normally), grows to
    the largest batch seen and is valid until the next call on the same thread; free it with
    :func:`mixkit.functional.release_scratch`.
    """
    if view.device.type != "cpu":
        return view.index_select(0, upload(index, view.device))
    if index.device.type != "cpu":
        index = index.cpu()
    shape = (index.shape[0],) + tuple(view.shape[1:])
    rows = getattr(_SCRATCH, "rows", None)
    if rows is None:
        rows = _SCRATCH.rows = {}
    last = rows.get(("view", view.dtype))  # the last call's view, reused for the same shape
    buf = rows.get(view.dtype)
    if buf is not None and buf.untyped_storage().data_ptr() == view.untyped_storage().data_ptr():
        # view lives in the buffer itself (an earlier result passed back in): leave it to the
        # caller and gather into a new buffer
        buf = last = None
    if last is not None and last[0] == shape:
        out = last[1]
    else:
        numel = math.prod(shape)
        if buf is None or buf.numel() < numel:
            buf = rows[view.dtype] = torch.empty(numel, dtype=view.dtype)
        out = buf[:numel].view(shape)
        rows[("view", view.dtype)] = (shape, out)
    if view.is_contiguous():  # whole rows: one copy per row
        per_row = math.prod(view.shape[1:])  # (not -1: an empty batch has no row size)
        torch.index_select(view.view(view.shape[0], per_row), 0, index, out=out.view(index.shape[0], per_row))
    else:
        torch.index_select(view, 0, index, out=out)
    return out


def release_blend_scratch() -> None:
    """Free this thread's buffers of this module (the in-place methods' partner rows and the
    float32 scratch of half-precision blends); they are made again when next needed.
    :func:`mixkit.functional.release_scratch` frees every reusable buffer of the thread."""
    for name in ("rows", "bufs"):
        if hasattr(_SCRATCH, name):
            delattr(_SCRATCH, name)
