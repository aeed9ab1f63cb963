"""Fresh output tensors that do not cost a page fault per 4 KB on the CPU.

A large fresh tensor on the CPU is mapped afresh by the C allocator at every call (glibc maps
every block above its largest mmap threshold, 32 MiB on 64-bit systems, and unmaps it when
freed), and each 4 KB page then faults when first written. For a 128 x 3 x 224 x 224 float32
batch (77 MB) that is about 19,000 faults, which cost several times the copy itself: a
``clone`` of it measured 57-72 ms here, of which the copy is under 10 ms.

:func:`fresh` allocates blocks above that size with ``mmap`` and asks the kernel for
transparent huge pages (``madvise(MADV_HUGEPAGE)``: 2 MB pages, so about 40 faults), the
same thing torch's ``THP_MEM_ALLOC_ENABLE=1`` does for every allocation of the process, but
only for mixkit's own large outputs.

When the last tensor on such a block is freed, the block is kept for the next output of the
same size, or up to a fifth smaller (a training loop mixes batches of one shape, so each call after the first two
reuses a block whose pages are already mapped: no faults, and no zeroing by the kernel, which
is most of what even huge pages cost). At most :data:`POOL_PER_SIZE` blocks per size and
:func:`pool_limit` bytes in all are kept; :func:`release_blocks` (or
:func:`mixkit.functional.release_scratch`) unmaps them.

Such a tensor behaves as any other, except that its storage cannot be resized (``resize_``
to a larger size raises). Smaller blocks, other devices, systems without ``MADV_HUGEPAGE``,
and ``MIXKIT_HUGE_PAGES=0`` in the environment (or :func:`set_huge_pages`) use
``torch.empty``. Values never depend on the allocation: only the time does.
"""

from __future__ import annotations

import math
import mmap
import os
import threading
import warnings

import numpy as np
import torch
from torch import Tensor

from mixkit.functional.layout import from_memory, memory_order

__all__ = [
    "HUGE_PAGE_MIN_BYTES",
    "POOL_PER_SIZE",
    "fresh",
    "fresh_copy",
    "fresh_like",
    "huge_pages_enabled",
    "is_large",
    "keep_freed_memory",
    "pool_limit",
    "pooled_bytes",
    "release_blocks",
    "set_huge_pages",
    "set_pool_limit",
]

#: blocks above this size (glibc's largest mmap threshold on 64-bit systems: the blocks it
#: always maps afresh) are allocated with huge pages
HUGE_PAGE_MIN_BYTES = 32 << 20

_STATE = {"enabled": os.environ.get("MIXKIT_HUGE_PAGES", "1") != "0" and hasattr(mmap, "MADV_HUGEPAGE")}


#: freed blocks kept per size (a loop's output is usually alive while the next is made: two
#: blocks then serve it without new mappings)
POOL_PER_SIZE = 2
#: the size class of a block: whole 2 MiB huge pages
_BLOCK_ROUND = 2 << 20

_POOL: dict[int, list[mmap.mmap]] = {}
#: re-entrant: a block may come back (a tensor freed by the garbage collector) while this
#: thread holds the lock
_POOL_LOCK = threading.RLock()
def _limit_from_env() -> int:
    value = os.environ.get("MIXKIT_BLOCK_POOL_MB", "1024")
    try:
        megabytes = int(value)
    except ValueError:
        megabytes = -1
    if megabytes < 0:
        warnings.warn(f"MIXKIT_BLOCK_POOL_MB must be a whole number of MiB >= 0, got {value!r}: using 1024",
                      stacklevel=2)
        megabytes = 1024
    return megabytes << 20


_POOL_STATE = {"limit": _limit_from_env(), "bytes": 0, "mapped": 0}


class _Lease(np.ndarray):
    """The byte array a pooled tensor is made from (``torch.frombuffer`` keeps it alive as long
    as the tensor's storage lives): when it is freed, its block goes back to the pool."""

    def __del__(self) -> None:
        block = self.__dict__.pop("block", None)  # views numpy makes of it carry no block
        if block is not None:
            try:
                _give_back(block)
            except Exception:  # noqa: BLE001 - interpreter shutdown: the block is simply unmapped
                pass


def _give_back(block: mmap.mmap) -> None:
    size = len(block)
    with _POOL_LOCK:
        kept = _POOL.setdefault(size, [])
        if len(kept) < POOL_PER_SIZE and _POOL_STATE["bytes"] + size <= _POOL_STATE["limit"]:
            kept.append(block)
            _POOL_STATE["bytes"] += size


#: a request may take a kept block up to this many times its size (batches of varying
#: size, e.g. the rows a per-sample policy gives each method, then reuse mapped blocks)
_BEST_FIT = 1.25


def _take(size: int) -> mmap.mmap:
    """A block of at least ``size`` bytes (a multiple of 2 MiB): the smallest kept one of at
    most ``_BEST_FIT`` times that, else a new mapping of exactly ``size``."""
    with _POOL_LOCK:
        fits = [s for s, kept in _POOL.items() if kept and size <= s <= size * _BEST_FIT]
        if fits:
            best = min(fits)
            _POOL_STATE["bytes"] -= best
            return _POOL[best].pop()
    block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with _POOL_LOCK:
        _POOL_STATE["mapped"] += 1  # blocks mapped so far (tests count them)
    try:
        block.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # THP unsupported here: still a valid block of ordinary pages
        pass
    return block


def _after_fork_in_child() -> None:
    """A forked child starts with a fresh lock (another thread may have held the parent's) and
    no kept blocks (its copies of the parent's are private; they are simply forgotten)."""
    global _POOL_LOCK
    _POOL_LOCK = threading.RLock()
    _POOL.clear()
    _POOL_STATE["bytes"] = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def release_blocks() -> None:
    """Unmap every kept block (they are mapped again when next needed)."""
    with _POOL_LOCK:
        blocks = [block for kept in _POOL.values() for block in kept]
        _POOL.clear()
        _POOL_STATE["bytes"] = 0
    for block in blocks:
        try:
            block.close()
        except BufferError:  # its last array is being freed this instant: unmapped with it
            pass


def pooled_bytes() -> int:
    """Bytes of freed blocks kept for reuse."""
    return _POOL_STATE["bytes"]


def pool_limit() -> int:
    """The most bytes of freed blocks kept (default 1 GiB, or ``MIXKIT_BLOCK_POOL_MB``)."""
    return _POOL_STATE["limit"]


def set_pool_limit(nbytes: int) -> None:
    """Keep at most ``nbytes`` of freed blocks (0: keep none); if more is kept already, every
    kept block is unmapped."""
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0:
        raise ValueError(f"nbytes must be an int >= 0, got {nbytes!r}")
    _POOL_STATE["limit"] = nbytes
    if _POOL_STATE["bytes"] > nbytes:
        release_blocks()


def huge_pages_enabled() -> bool:
    """Whether :func:`fresh` allocates large CPU tensors with huge pages."""
    return _STATE["enabled"]


def set_huge_pages(enabled: bool) -> None:
    """Turn huge-page allocation of large outputs on or off (the default is on where the
    system offers ``MADV_HUGEPAGE``, unless ``MIXKIT_HUGE_PAGES=0``)."""
    _STATE["enabled"] = bool(enabled) and hasattr(mmap, "MADV_HUGEPAGE")
    if not _STATE["enabled"]:
        release_blocks()


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def keep_freed_memory(top_pad_mb: int = 64) -> bool:
    """Ask the C allocator (glibc) to keep freed memory for reuse, for the whole process.

    By default glibc gives every block above 32 MiB a mapping of its own, unmapped when freed,
    and returns the top of its heap to the system once enough of it is free; either way the
    next large tensor faults its pages in again (about 1-3 us per 4 KiB page here). This sets
    ``M_MMAP_MAX`` to 0 (every block comes from the heap) and ``M_TRIM_THRESHOLD`` to its
    maximum (the heap is never trimmed), and grows the heap ``top_pad_mb`` MiB at a time. A
    loop that allocates the same sizes call after call then faults no pages after its first
    calls: at 224x224 (batch 128, one thread) it made YOCO per sample 2.8 times and PixMix
    1.4 times faster (see README, Speed; most methods fault no pages either way). The price:
    the process keeps its peak memory until it exits.

    It changes the allocator of the whole process (torch's tensors, the model's activations),
    from the call on; nothing in mixkit calls it by itself. The same can be had without code:
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment.

    Returns:
        Whether the settings were applied (False where the C library is not glibc).
    """
    import ctypes
    import ctypes.util

    if not isinstance(top_pad_mb, int) or isinstance(top_pad_mb, bool) or not 0 <= top_pad_mb <= 1024:
        raise ValueError(f"top_pad_mb must be an int in [0, 1024], got {top_pad_mb!r}")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = [mallopt(_M_MMAP_MAX, 0), mallopt(_M_TRIM_THRESHOLD, 2**31 - 1), mallopt(_M_TOP_PAD, top_pad_mb << 20)]
    return all(r == 1 for r in done)


def fresh(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device | str = "cpu") -> Tensor:
    """An uninitialised contiguous tensor; on the CPU above :data:`HUGE_PAGE_MIN_BYTES`,
    backed by memory advised for transparent huge pages (a kept block when one of its size
    is free).

    Example:
        >>> fresh((2, 3), torch.float32).shape
        torch.Size([2, 3])
    """
    device = torch.device(device)
    n = math.prod(shape)
    nbytes = n * dtype.itemsize
    if not (_STATE["enabled"] and device.type == "cpu" and nbytes > HUGE_PAGE_MIN_BYTES):
        return torch.empty(shape, dtype=dtype, device=device)
    block = _take(-(-nbytes // _BLOCK_ROUND) * _BLOCK_ROUND)
    lease = np.frombuffer(block, dtype=np.uint8, count=nbytes).view(_Lease)
    lease.block = block
    return torch.frombuffer(lease, dtype=dtype, count=n).view(shape)


def fresh_like(t: Tensor) -> Tensor:
    """``torch.empty_like(t)`` (same shape, dtype, device and strides), in :func:`fresh`
    memory when ``t`` is large and contiguous or channels_last."""
    if not is_large(t.numel(), t.dtype, t.device):
        return torch.empty_like(t)
    if t.is_contiguous():
        return fresh(tuple(t.shape), t.dtype, t.device)
    order = memory_order(t)  # channels_last: a contiguous block in memory order, viewed back
    if order is not None:
        return from_memory(fresh(tuple(t.shape[d] for d in order), t.dtype, t.device), order)
    return torch.empty_like(t)


def is_large(numel: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether :func:`fresh` would use huge pages for such a tensor (cheap: callers test it
    before building anything)."""
    return _STATE["enabled"] and numel * dtype.itemsize > HUGE_PAGE_MIN_BYTES and device.type == "cpu"


def fresh_copy(x: Tensor) -> Tensor:
    """``x.clone()``, into :func:`fresh_like` memory when ``x`` is large, contiguous or
    channels_last, and autograd need not see the copy (same values, same strides)."""
    if not is_large(x.numel(), x.dtype, x.device) or (torch.is_grad_enabled() and x.requires_grad):
        return x.clone()
    return fresh_like(x).copy_(x)  # empty_like's strides are clone's: x's when dense, else contiguous
