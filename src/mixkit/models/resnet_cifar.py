"""CIFAR ResNet-(6n+2): three stages of ``n`` basic blocks with 16, 32 and 64 channels.

Papers and reference code:
    * He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, section 4.2
      (the CIFAR-10 networks: 3x3 stem with 16 channels, stages on 32x32, 16x16 and 8x8 maps,
      global average pooling, a fully connected classifier; 6n+2 weighted layers).
    * Reference code read: github.com/akamaster/pytorch_resnet_cifar10 (option-A shortcut,
      resnet20 = 0.27M parameters). This file is written independently.

Shortcuts. Option A (the default, and the paper's choice for its CIFAR experiments) is
parameter-free: where a stage halves the resolution and doubles the width, the shortcut
subsamples ``x[:, :, ::2, ::2]`` and pads the new channels with zeros, split evenly before and
after the existing ones. Option B projects with a strided 1x1 convolution and batch norm
wherever the shape changes (identity elsewhere). resnet20 has 269,722 parameters with option A
and 272,474 with option B (10 classes).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from mixkit.errors import HyperParameterError
from mixkit.models._common import StagedNet, conv1x1, conv3x3, init_weights

__all__ = [
    "CifarResNet",
    "cifar_resnet",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
]

Shortcut = Literal["A", "B"]


class PadShortcut(nn.Module):
    """Option-A shortcut: strided subsampling, then zero channels around the input's.

    Args:
        stride: subsampling step in both spatial dimensions.
        extra_channels: zero channels to add (half before, the rest after).
    """

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.before = extra_channels // 2
        self.after = extra_channels - self.before

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C + extra_channels, ceil(H / stride), ceil(W / stride))``."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.before + self.after}"


class BasicBlock(nn.Module):
    """Post-activation basic block: conv3x3-BN-ReLU-conv3x3-BN, add the shortcut, ReLU.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        stride: stride of the first convolution (and of the shortcut).
        shortcut: ``"A"`` (zero-padding identity) or ``"B"`` (1x1 projection) where the
            shape changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: Shortcut) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            if shortcut == "A":
                self.shortcut = PadShortcut(stride, out_channels - in_channels)
            else:
                self.shortcut = nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, ceil(H / stride), ceil(W / stride))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(StagedNet):
    """ResNet-(6n+2) for small images (He et al. 2016, section 4.2).

    Layout: stem ``conv3x3(in_channels, 16)``-BN-ReLU; ``layer1``, ``layer2``, ``layer3`` of
    ``n = (depth - 2) / 6`` basic blocks with 16, 32, 64 channels and strides 1, 2, 2; global
    average pooling; ``fc``. Works on any input of at least 4x4 pixels.

    Args:
        depth: 6n + 2 for some n >= 1 (20, 32, 44, 56, 110, ...).
        num_classes: width of the logits.
        in_channels: channels of the input (1 for Fashion-MNIST, 3 for CIFAR).
        shortcut: ``"A"`` (parameter-free zero padding, the paper's CIFAR choice) or ``"B"``
            (1x1 convolution + BN projection) where a stage changes the shape.

    Raises:
        HyperParameterError: ``depth`` is not 6n + 2, or an option is invalid.

    Example:
        >>> import torch
        >>> net = CifarResNet(20, num_classes=10, in_channels=1)
        >>> net(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> net.stage_names
        ('layer1', 'layer2', 'layer3')
    """

    stage_names = ("layer1", "layer2", "layer3")

    def __init__(
        self, depth: int, *, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "A"
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise HyperParameterError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), got {depth!r}")
        if shortcut not in ("A", "B"):
            raise HyperParameterError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.depth = depth
        self.shortcut_type = shortcut
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(conv3x3(in_channels, 16), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.norm = nn.Identity()
        self.num_features = 64
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def _stage(self, in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        first = BasicBlock(in_channels, out_channels, stride, self.shortcut_type)
        rest = [BasicBlock(out_channels, out_channels, 1, self.shortcut_type) for _ in range(blocks - 1)]
        return nn.Sequential(first, *rest)


def cifar_resnet(depth: int, *, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "A") -> CifarResNet:
    """CIFAR ResNet of any depth 6n + 2; see :class:`CifarResNet`."""
    return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


def resnet20(*, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "A") -> CifarResNet:
    """ResNet-20 (n = 3): 0.27M parameters for 10 classes with option-A shortcuts."""
    return CifarResNet(20, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


def resnet32(*, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "A") -> CifarResNet:
    """ResNet-32 (n = 5): 0.46M parameters for 10 classes with option-A shortcuts."""
    return CifarResNet(32, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


def resnet44(*, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "A") -> CifarResNet:
    """ResNet-44 (n = 7): 0.66M parameters for 10 classes with option-A shortcuts."""
    return CifarResNet(44, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


def resnet56(*, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "A") -> CifarResNet:
    """ResNet-56 (n = 9): 0.85M parameters for 10 classes with option-A shortcuts."""
    return CifarResNet(56, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


def resnet110(*, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "A") -> CifarResNet:
    """ResNet-110 (n = 18): 1.73M parameters for 10 classes with option-A shortcuts."""
    return CifarResNet(110, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)
