"""Moving a call's parameters to the data's device without making the host wait.

Params are drawn on the CPU (index, lambda, boxes, masks). ``t.to(cuda)`` of a CPU tensor
copies with a stream synchronisation after it: the host waits for every kernel already queued
(the mixing itself) before it can queue the next one. A copy from CPU memory with
``non_blocking=True`` is staged by the driver at once and the host goes on (pageable memory is
copied to a staging buffer before the call returns, so the tensor may change or be freed
afterwards). Copies from a device to the CPU stay blocking: their result is read at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["upload"]

#: device types a CPU tensor is copied to without blocking
ASYNC_DEVICE_TYPES = frozenset({"cuda"})


def upload(t: Tensor, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """``t.to(device, dtype)``, without a host synchronisation from the CPU to a CUDA device
    (``t`` itself when nothing changes). Other copies block: MPS's non-blocking copies from
    pageable memory are not safe (pytorch/pytorch#139550)."""
    if t.device == device and (dtype is None or t.dtype == dtype):
        return t
    ahead = t.is_cpu and device is not None and torch.device(device).type in ASYNC_DEVICE_TYPES
    return t.to(device=device, dtype=dtype, non_blocking=ahead)
