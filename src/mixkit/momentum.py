"""The momentum (EMA) encoder of learnable mixup and its schedules: the papers' ``f_k``,
the cosine annealing of weights and the EMA momentum, and the stage features are read at.

Behind :mod:`mixkit.learnable`. References:
    * Liu et al., "AutoMix: Unveiling the Power of Mixup for Stronger Classifiers", ECCV 2022.
    * OpenMixup (github.com/Westlake-AI/openmixup): ``openmixup/models/classifiers/automix.py``
      (``momentum_update``) and ``openmixup/core/hooks/momentum_hook.py``
      (``CosineScheduleHook``).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from mixkit.errors import ModelError
from mixkit.hooks import resolve_layer

__all__ = ["MomentumEncoder", "cosine_value", "momentum_at", "resolve_stage"]


def cosine_value(step: int, total: int | None, start: float, end: float) -> float:
    """Cosine annealing from ``start`` (step 0) to ``end`` (step ``total``); ``start`` if no total."""
    if not total:
        return start
    t = min(max(step / total, 0.0), 1.0)
    return end + (start - end) * (1.0 + math.cos(math.pi * t)) / 2.0


def momentum_at(step: int, total: int | None, base: float = 0.999, end: float = 0.999999, warmup: float = 0.1) -> float:
    """The EMA momentum of the papers (OpenMixup ``CosineScheduleHook``; algorithms.md 1.6).

    ``m_t = base`` for ``t < warmup * T``, then ``end - (end - base) * (cos(pi t / T) + 1) / 2``
    (the jump at ``warmup * T`` is the code's). Without ``total`` the momentum stays ``base``.
    """
    if not total or step < warmup * total:
        return base
    t = min(step / total, 1.0)
    return end - (end - base) * (math.cos(math.pi * t) + 1.0) / 2.0


def resolve_stage(model: nn.Module, stage: str) -> str:
    """The stage name to read features at; ``"auto"`` is ``layer3`` (the papers' l = 3, e.g.
    the 3rd stage of a CIFAR ResNet) when the model has it, else its deepest ``layerN``."""
    if stage != "auto":
        resolve_layer(model, stage)  # raises a helpful ModelError if missing
        return stage
    names = {n for n, _ in model.named_modules()}
    if "layer3" in names:
        return "layer3"
    stages = sorted((int(n[5:]), n) for n in names if n.startswith("layer") and n[5:].isdigit())
    if not stages:
        raise ModelError(f"{type(model).__name__} has no stage named layerN: pass stage='<module name>'")
    return stages[-1][1]


class _StopForward(Exception):
    """Raised by the feature hook to end a forward pass at the stage."""


class MomentumEncoder(nn.Module):
    """An EMA copy of a model that never receives gradients (the papers' ``f_k`` and ``g_k``).

    Gradients flow through it to its INPUT (the Mixer's loss reaches the mask), never into its
    parameters (``requires_grad=False``). It runs in the train/eval mode of the model it follows.

    Args:
        model: the online model ``f_q``; copied (``theta_k := theta_q``).
        stage: the submodule whose output :meth:`features` returns.
    """

    def __init__(self, model: nn.Module, stage: str) -> None:
        super().__init__()
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        self.model = copy.deepcopy(model)
        self.stage = stage
        resolve_layer(self.model, stage)
        for prm in self.model.parameters():
            prm.requires_grad_(False)
        self.train(model.training)

    @torch.no_grad()
    def update(self, model: nn.Module, momentum: float) -> None:
        """``theta_k <- momentum * theta_k + (1 - momentum) * theta_q`` (parameters only, as the
        code; buffers such as BN statistics are the encoder's own). Follows ``model``'s mode."""
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        for pk, pq in zip(self.model.parameters(), model.parameters(), strict=True):
            pk.lerp_(pq.detach().to(pk.dtype), 1.0 - momentum)
        self.train(model.training)

    def features(self, x: Tensor) -> Tensor:
        """``(B, C, h, w)`` output of ``stage``; the forward stops there."""
        store: list[Tensor] = []

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            store.append(output)
            raise _StopForward

        handle = resolve_layer(self.model, self.stage).register_forward_hook(hook)
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not store or not isinstance(store[0], Tensor):
            raise ModelError(f"stage {self.stage!r} did not return a tensor in the forward pass")
        return store[0]

    def forward(self, x: Tensor) -> Tensor:
        """The EMA model's logits (gradient to ``x`` only)."""
        return self.model(x)
