"""ResNeXt-50 (32x4d), CIFAR layout: 3x3 stem, no max-pool, stages (3, 4, 6, 3).

Papers and reference code:
    * Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017
      (grouped 3x3 convolutions in the bottleneck; cardinality C, bottleneck width d).
    * He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (bottleneck blocks,
      projection shortcuts).
    * Reference code read: torchvision ``models/resnet.py`` (``resnext50_32x4d``; stride on the
      3x3 convolution, the "ResNet v1.5" placement) and OpenMixup's CIFAR configurations
      (github.com/Westlake-AI/openmixup), which swap the 7x7 stride-2 stem and max-pool for a
      3x3 stride-1 stem on 32x32 images. This file is written independently.

Layout: stem ``conv3x3(in_channels, 64)``-BN-ReLU; four stages of bottlenecks with
``planes = 64, 128, 256, 512`` and strides 1, 2, 2, 2. A bottleneck is
conv1x1(-> D)-BN-ReLU, grouped conv3x3(D -> D, C groups, stride)-BN-ReLU, conv1x1(-> 4 planes)-BN,
plus the shortcut, then ReLU, with ``D = C * floor(planes * d / 64)`` (128, 256, 512, 1024 for
32x4d). Shortcuts are identities, or a strided 1x1 convolution + BN where the shape changes
(option B). 22,992,714 parameters for 10 classes.
"""

from __future__ import annotations

from torch import Tensor, nn

from mixkit.errors import HyperParameterError
from mixkit.models._common import StagedNet, check_positive_int, conv1x1, conv3x3, init_weights

__all__ = ["ResNeXt", "resnext50_32x4d"]

#: Output channels of a bottleneck are ``EXPANSION * planes``.
EXPANSION = 4


class ResNeXtBottleneck(nn.Module):
    """Bottleneck with a grouped 3x3 convolution (post-activation).

    Args:
        in_channels: channels of the input.
        planes: bottleneck planes; the output has ``4 * planes`` channels.
        stride: stride of the grouped 3x3 convolution (and of the projection shortcut).
        cardinality: number of groups ``C``.
        base_width: width ``d`` of each group at ``planes = 64``.
    """

    def __init__(self, in_channels: int, planes: int, stride: int, cardinality: int, base_width: int) -> None:
        super().__init__()
        inner = cardinality * (planes * base_width // 64)
        out_channels = EXPANSION * planes
        self.conv1 = conv1x1(in_channels, inner)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = conv3x3(inner, inner, stride, groups=cardinality)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = conv1x1(inner, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, 4 * planes, ceil(H / stride), ceil(W / stride))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNeXt(StagedNet):
    """ResNeXt for small images (Xie et al. 2017), CIFAR stem, four stages.

    Args:
        blocks: bottlenecks per stage, four numbers (``(3, 4, 6, 3)`` is ResNeXt-50).
        num_classes: width of the logits.
        in_channels: channels of the input (1 for Fashion-MNIST, 3 for CIFAR).
        cardinality: groups ``C`` of every 3x3 convolution.
        base_width: per-group width ``d`` in the first stage (doubles with the planes).

    Raises:
        HyperParameterError: ``blocks`` is not four positive ints, or an option is invalid.

    Example:
        >>> import torch
        >>> net = ResNeXt((1, 1, 1, 1), num_classes=4, in_channels=1, cardinality=2, base_width=4)
        >>> net(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 4])
    """

    stage_names = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        blocks: tuple[int, ...],
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        cardinality: int = 32,
        base_width: int = 4,
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels)
        if len(blocks) != 4:
            raise HyperParameterError(f"blocks must give four stages, got {blocks!r}")
        blocks = tuple(check_positive_int("blocks[i]", b) for b in blocks)
        self.cardinality = check_positive_int("cardinality", cardinality)
        self.base_width = check_positive_int("base_width", base_width)
        self.stem = nn.Sequential(conv3x3(in_channels, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        channels = 64
        for i, (n, planes, stride) in enumerate(zip(blocks, (64, 128, 256, 512), (1, 2, 2, 2)), start=1):
            units = []
            for j in range(n):
                units.append(ResNeXtBottleneck(channels, planes, stride if j == 0 else 1, cardinality, base_width))
                channels = EXPANSION * planes
            setattr(self, f"layer{i}", nn.Sequential(*units))
        self.norm = nn.Identity()
        self.num_features = channels
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)


def resnext50_32x4d(*, num_classes: int = 10, in_channels: int = 3) -> ResNeXt:
    """ResNeXt-50 32x4d, CIFAR layout: 22.99M parameters for 10 classes."""
    return ResNeXt((3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels, cardinality=32, base_width=4)
