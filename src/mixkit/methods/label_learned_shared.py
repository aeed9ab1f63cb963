"""What the learned-lambda label policies (AdaMixup, MetaMixUp) share: a blend that keeps
lambda in the autograd graph, the layer it happens at, the model's classifier and its input,
and averaging across the processes of a distributed run.

Behind :mod:`mixkit.methods.label_learned` and :mod:`mixkit.methods.label_learned_meta`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as td
from torch import Tensor, nn

from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError, ModelError
from mixkit.functional.learned_lambda import (
    lerp_blend,
)
from mixkit.hooks import INPUT, mix_features
from mixkit.methods.feature import ManifoldMixup
from mixkit.methods.linear import MixUp
from mixkit.types import LayerParams, Params

__all__ = ["average_across_ranks", "blending", "check_blend_method", "classifier_input", "classifier_layer", "mixing_layer", "unwrap"]


def check_blend_method(inner: MixMethod, policy: str) -> None:
    """Refuse sample policies whose mixing is not a linear blend differentiable in lambda."""
    if not isinstance(inner, (MixUp, ManifoldMixup)):
        raise HyperParameterError(
            f"{policy} learns the lambda of a linear blend, so it needs a mixing that is differentiable in "
            f"lambda: use method='mixup' (input) or method='manifold_mixup' (hidden layer), not {inner.name!r}"
        )


def mixing_layer(params: Params) -> str:
    """Where the blend happens: the sampled layer (Manifold Mixup) or the input (Mixup)."""
    return params.layer if isinstance(params, LayerParams) else INPUT


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside a (Distributed)DataParallel wrapper."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


@contextmanager
def blending(model: nn.Module, layer: str, index: Tensor, lam: Tensor) -> Iterator[None]:
    """Within the block, ``model``'s forward blends ``layer`` (or the input) differentiably:
    ``h~ = lam * h + (1 - lam) * h[index]`` with ``lam (B,)`` kept in the autograd graph."""
    with mix_features(model, layer, lambda h: lerp_blend(h, index, lam)):
        yield


def classifier_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The model's last ``nn.Linear`` (its classifier) and its name."""
    found = [(n, m) for n, m in unwrap(model).named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ModelError(f"{type(unwrap(model)).__name__} has no nn.Linear classifier, whose input AdaMixup uses as features")
    return found[-1]


@contextmanager
def classifier_input(model: nn.Module, store: list[Tensor]) -> Iterator[None]:
    """Within the block, append to ``store`` the input of the model's classifier (the
    penultimate features ``(B, D)``) at every forward."""
    handle = classifier_layer(model)[1].register_forward_pre_hook(lambda m, args: store.append(args[0]))
    try:
        yield
    finally:
        handle.remove()


def average_across_ranks(tensors: list[Tensor]) -> None:
    """Average tensors in place across the processes of a distributed run (no-op otherwise)."""
    if td.is_available() and td.is_initialized() and td.get_world_size() > 1:
        for t in tensors:
            td.all_reduce(t)
            t.div_(td.get_world_size())
