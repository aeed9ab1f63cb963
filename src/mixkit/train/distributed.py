"""Distributed data parallel helpers (gloo on CPU, NCCL on GPU), no-ops in one process.

Under ``torchrun`` every process sees the same global data order; each global batch is split
into equal slices, one per rank. Each rank mixes its own slice, or, with
``pair_across_ranks``, all ranks gather the global batch, mix it with the same draws, and
keep their own rows of the mixed batch and target (input-space methods only).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as td
from torch import Tensor, nn

from mixkit.errors import HyperParameterError
from mixkit.types import MixTarget, StepOutput

__all__ = ["init_from_env", "leave", "rank", "world", "is_main", "barrier", "wrap", "unwrap", "shard_batches",
           "train_step", "gather_cat", "gather_objects", "sum_floats", "sync_buffers"]


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes in the environment, if any; it is
    left again when the process exits (:func:`leave`)."""
    if td.is_available() and not td.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        td.init_process_group(backend, timeout=timedelta(minutes=10))
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        atexit.register(leave)
        return True
    return False


def leave() -> None:
    """Destroy the process group, if one is active. A group still alive when the interpreter
    shuts down can take its process down with it: the backend's threads are torn down without
    being joined (``terminate called without an active exception``, SIGABRT), seen once in
    the two-process test after a run that had finished."""
    if not _active():
        return
    try:
        if td.get_backend() == "gloo":  # every rank here before any tears its connections down
            td.monitored_barrier(timeout=timedelta(seconds=60))
        td.destroy_process_group()
    except Exception:  # noqa: BLE001 - a peer already gone: nothing left to leave
        pass


def _active() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if _active() else 0


def world() -> int:
    return td.get_world_size() if _active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if _active():
        td.barrier()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` in a distributed run, else the model."""
    if not _active():
        return model
    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def shard_batches(order: Tensor, batch_size: int) -> list[Tensor]:
    """This rank's slice of every global batch of ``order`` (the last batch may be smaller).

    Slices have equal length on every rank (a remainder smaller than the world size is
    dropped), so that gradient all-reduces stay in step; a final slice of one sample is
    dropped too (batch norm cannot train on one sample).
    """
    w, r = world(), rank()
    out = []
    for start in range(0, order.shape[0], batch_size):
        chunk = order[start : start + batch_size]
        per = chunk.shape[0] // w
        if per >= 2 or (per == 1 and start == 0):
            out.append(chunk[r * per : (r + 1) * per])
    return out


def gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not _active():
        return [obj]
    out: list[object] = [None] * world()
    td.all_gather_object(out, obj)
    return out


def sum_floats(values: list[float]) -> list[float]:
    """Element-wise sum of a short list of floats over ranks."""
    if not _active():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    td.all_reduce(t)
    return t.tolist()


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm statistics) to every rank."""
    if _active():
        for b in unwrap(model).buffers():
            td.broadcast(b, 0)


def gather_cat(t: Tensor) -> Tensor:
    """Concatenate a tensor's rows from every rank (equal shapes required), rank order."""
    if not _active():
        return t
    parts = [torch.empty_like(t) for _ in range(world())]
    td.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def train_step(
    method, model: nn.Module, x: Tensor, y: Tensor, criterion: Callable, generator: torch.Generator, across: bool
) -> StepOutput:
    """The method's training step, or its cross-rank variant."""
    if not (across and _active() and world() > 1):
        return method.train_step(model, x, y, criterion=criterion, generator=generator)
    from mixkit.registry import method_info

    from mixkit.base import MixMethod

    if method_info(method.name).needs:
        raise HyperParameterError(f"pair_across_ranks works with input-space methods only, not {method.name}")
    if type(method).train_step is not MixMethod.train_step:
        raise HyperParameterError(
            f"pair_across_ranks mixes the gathered batch with the plain mix-forward-loss step; {method.name} has its "
            "own training step (a label policy, an extra loss term or forward), which would be skipped: "
            "train it without pair_across_ranks")
    xs, ys = gather_cat(x), gather_cat(y)
    out = method(xs, ys, generator=generator)  # same draws on every rank (same generator state)
    b, r = x.shape[0], rank()
    rows = slice(r * b, (r + 1) * b)
    target = MixTarget(ys, out.target.index[rows], out.target.weight[rows], out.target.num_classes)
    logits = model(out.x[rows])
    return StepOutput(loss=criterion(logits, target), logits=logits, target=target)
