"""The model zoo of the training harness: small-image backbones with hookable stages.

Every model takes keyword-only ``num_classes`` and ``in_channels``, returns logits
``(B, num_classes)`` for images ``(B, in_channels, H, W)`` of any size (global average
pooling; 28x28, 32x32 and 64x64 are tested), and exposes ``stem``, stages ``layer1`` ..
``layerN`` (each runs exactly once per forward, so :func:`mixkit.mix_features` and
:class:`mixkit.ManifoldMixup` can hook them by name) and the classifier ``fc``.

Registered names (papers and reference code are in each module's docstring):

=================== ======================================== ======== ===============
name                network                                  stages   params (10 cl.)
=================== ======================================== ======== ===============
``resnet20``        CIFAR ResNet-20, option-A shortcuts      layer1-3 0.27M
``resnet32``        CIFAR ResNet-32                          layer1-3 0.46M
``resnet44``        CIFAR ResNet-44                          layer1-3 0.66M
``resnet56``        CIFAR ResNet-56                          layer1-3 0.85M
``resnet110``       CIFAR ResNet-110                         layer1-3 1.73M
``preact_resnet18`` PreAct ResNet-18 (mixup, Manifold Mixup) layer1-4 11.17M
``resnext50_32x4d`` ResNeXt-50 32x4d, CIFAR stem             layer1-4 22.99M
``wrn28_2``         Wide-ResNet-28-2                         layer1-3 1.47M
``wrn28_10``        Wide-ResNet-28-10                        layer1-3 36.48M
=================== ======================================== ======== ===============
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from mixkit.errors import ModelError, UnknownHyperParameterError, suggest
from mixkit.models._common import StagedNet
from mixkit.models.preact_resnet import PreActResNet, preact_resnet18
from mixkit.models.resnet_cifar import (
    CifarResNet,
    cifar_resnet,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from mixkit.models.resnext import ResNeXt, resnext50_32x4d
from mixkit.models.wide_resnet import WideResNet, wide_resnet28, wrn28_2, wrn28_10

__all__ = [
    "create_model",
    "list_models",
    "model_stages",
    "StagedNet",
    "CifarResNet",
    "PreActResNet",
    "ResNeXt",
    "WideResNet",
    "cifar_resnet",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "preact_resnet18",
    "resnext50_32x4d",
    "wide_resnet28",
    "wrn28_2",
    "wrn28_10",
]

# name -> (factory, class it builds); the class carries the stage names.
_MODELS: dict[str, tuple[Callable[..., StagedNet], type[StagedNet]]] = {
    "resnet20": (resnet20, CifarResNet),
    "resnet32": (resnet32, CifarResNet),
    "resnet44": (resnet44, CifarResNet),
    "resnet56": (resnet56, CifarResNet),
    "resnet110": (resnet110, CifarResNet),
    "preact_resnet18": (preact_resnet18, PreActResNet),
    "resnext50_32x4d": (resnext50_32x4d, ResNeXt),
    "wrn28_2": (wrn28_2, WideResNet),
    "wrn28_10": (wrn28_10, WideResNet),
}


def _entry(name: str) -> tuple[Callable[..., StagedNet], type[StagedNet]]:
    try:
        return _MODELS[name]
    except (KeyError, TypeError):
        raise ModelError(
            f"no model named {name!r}.{suggest(str(name), _MODELS)} Available: {', '.join(sorted(_MODELS))}"
        ) from None


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern``.

    Example:
        >>> list_models("wrn*")
        ['wrn28_10', 'wrn28_2']
    """
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def model_stages(name: str) -> tuple[str, ...]:
    """Names of the hookable stages of model ``name``, in forward order.

    These are the layer names feature-level methods accept (besides ``"input"``, the model's
    input). Each stage runs exactly once per forward pass.

    Raises:
        ModelError: no model is registered as ``name``.

    Example:
        >>> model_stages("resnet20")
        ('layer1', 'layer2', 'layer3')
    """
    return _entry(name)[1].stage_names


def create_model(name: str, *, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``, freshly initialised.

    Args:
        name: a name from :func:`list_models`.
        num_classes: width of the logits.
        in_channels: channels of the input images (1 for Fashion-MNIST, 3 for CIFAR).
        **kwargs: the model's own options (``width`` for ``preact_resnet18``, ``dropout`` for
            the Wide-ResNets, ``shortcut`` for the CIFAR ResNets); anything else is an error.

    Returns:
        The model, in training mode, on the default device and dtype.

    Raises:
        ModelError: no model is registered as ``name`` (the message names close matches).
        UnknownHyperParameterError: an option the model does not have (often a typo).
        HyperParameterError: an option has an invalid value.

    Example:
        >>> import torch
        >>> net = create_model("resnet20", num_classes=10, in_channels=1)
        >>> net(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    factory, _ = _entry(name)
    allowed = [p for p in inspect.signature(factory).parameters if p not in ("num_classes", "in_channels")]
    for key in kwargs:
        if key not in allowed:
            raise UnknownHyperParameterError(
                f"model {name!r} has no option {key!r}.{suggest(key, allowed)} "
                f"Options: {', '.join(allowed) if allowed else 'none besides num_classes and in_channels'}"
            )
    return factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
