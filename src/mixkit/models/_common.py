"""What every model of the zoo shares: the staged skeleton, the layer helpers and the init.

Every network is ``stem -> layer1 -> ... -> layerN -> norm -> global average pool -> fc``.
The stages are plain attributes that each run exactly once per forward, so feature-level
methods (:func:`mixkit.mix_features`, :class:`mixkit.ManifoldMixup`) can hook them by name.
Global average pooling makes every model accept any input size from about 8 px upwards
(28x28 Fashion-MNIST, 32x32 CIFAR, 64x64 Tiny-ImageNet).

Initialisation follows He et al., "Delving Deep into Rectifiers", ICCV 2015, in the
``fan_out`` form of the ResNet authors' Torch code (github.com/facebook/fb.resnet.torch) and of
the Wide-ResNet reference code: convolutions ~ N(0, 2 / (k * k * C_out)); batch-norm
``weight = 1``, ``bias = 0``; the classifier keeps PyTorch's default weights with a zero bias.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixkit.errors import HyperParameterError, ShapeError

__all__ = ["StagedNet", "conv1x1", "conv3x3", "init_weights", "check_positive_int"]


def check_positive_int(name: str, value: object) -> int:
    """``value`` if it is an ``int`` >= 1 (``bool`` excluded), else a :class:`HyperParameterError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HyperParameterError(f"{name} must be an int >= 1, got {value!r}")
    return value


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A 3x3 convolution with padding 1 and no bias (a batch norm always follows or precedes it)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A 1x1 convolution with no bias (projection shortcuts and bottlenecks)."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def init_weights(model: nn.Module) -> None:
    """He-normal (``fan_out``, ReLU gain) convolutions, unit batch norms, zero classifier bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


class StagedNet(nn.Module):
    """Skeleton of the zoo: ``stem``, stages ``layer1``..``layerN``, ``norm``, pooling, ``fc``.

    Subclasses build ``stem``, one attribute per name in :attr:`stage_names`, ``norm`` (a final
    BN-ReLU for pre-activation nets, ``nn.Identity`` otherwise) and ``fc``, then call
    :func:`init_weights`.

    Attributes:
        stage_names: the hookable stages, in forward order.
        in_channels: channels the input must have.
        num_classes: width of the logits.
        num_features: channels entering the classifier.
    """

    stage_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.in_channels = check_positive_int("in_channels", in_channels)

    def forward_features(self, x: Tensor) -> Tensor:
        """Run the stem, every stage once, and ``norm``.

        Args:
            x: images ``(B, in_channels, H, W)``, any memory format.

        Returns:
            Feature maps ``(B, num_features, H', W')``.

        Raises:
            ShapeError: ``x`` is not 4-D or has the wrong number of channels.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(
                f"{type(self).__name__} expects images of shape (B, {self.in_channels}, H, W), "
                f"got shape {tuple(x.shape)}"
                + (" (add the channel dimension with x.unsqueeze(1))" if x.ndim == 3 else "")
            )
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch of images.

        Args:
            x: images ``(B, in_channels, H, W)``.

        Returns:
            Logits ``(B, num_classes)``.
        """
        features = F.adaptive_avg_pool2d(self.forward_features(x), 1)
        return self.fc(torch.flatten(features, 1))
