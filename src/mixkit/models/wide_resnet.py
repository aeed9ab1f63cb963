"""Wide-ResNet-d-k: pre-activation ResNet with three stages of 16k, 32k and 64k channels.

Papers and reference code:
    * Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (WRN-d-k with basic
      "B(3,3)" blocks, dropout between the two convolutions, ``(d - 4) / 6`` blocks per stage).
    * He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016 (pre-activation).
    * Reference code read: github.com/szagoruyko/wide-residual-networks (the authors' code) and
      github.com/xternalz/WideResNet-pytorch (the PyTorch port used by many mixup papers).
      This file is written independently.

Layout: stem ``conv3x3(in_channels, 16)`` (no BN or ReLU); ``layer1``, ``layer2``, ``layer3``
of ``n = (d - 4) / 6`` pre-activation blocks with ``16k, 32k, 64k`` channels and strides 1, 2, 2;
a final BN-ReLU (``norm``); global average pooling; ``fc``. A block is BN-ReLU-conv3x3,
dropout, BN-ReLU-conv3x3, plus the shortcut; where the width or resolution changes, the shortcut
is a strided 1x1 convolution of the pre-activated input. WRN-28-10 has 36,479,194 parameters and
WRN-28-2 1,467,610 for 10 classes.
"""

from __future__ import annotations

from torch import Tensor, nn

from mixkit.errors import HyperParameterError
from mixkit.models._common import StagedNet, check_positive_int, conv1x1, conv3x3, init_weights

__all__ = ["WideResNet", "wide_resnet28", "wrn28_2", "wrn28_10"]


class WideBlock(nn.Module):
    """Pre-activation wide basic block with optional dropout between the convolutions.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        stride: stride of the first convolution (and of the projection shortcut).
        dropout: drop probability after the first convolution; 0 disables it.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = conv1x1(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, ceil(H / stride), ceil(W / stride))``."""
        pre = self.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.dropout(self.conv1(pre))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + skip


class WideResNet(StagedNet):
    """Wide-ResNet-d-k (Zagoruyko & Komodakis 2016) for small images.

    Args:
        depth: ``6n + 4`` for some n >= 1 (16, 22, 28, 40, ...).
        widen_factor: ``k``; the stages have ``16k, 32k, 64k`` channels.
        num_classes: width of the logits.
        in_channels: channels of the input (1 for Fashion-MNIST, 3 for CIFAR).
        dropout: drop probability between the two convolutions of every block (the paper uses
            0.3 on CIFAR in some runs; the mixup literature uses 0).

    Raises:
        HyperParameterError: ``depth`` is not 6n + 4, or an option is invalid.

    Example:
        >>> import torch
        >>> net = WideResNet(10, 1, num_classes=10, in_channels=1)
        >>> net(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    stage_names = ("layer1", "layer2", "layer3")

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise HyperParameterError(f"depth must be 6n + 4 with n >= 1 (16, 22, 28, 40), got {depth!r}")
        self.widen_factor = check_positive_int("widen_factor", widen_factor)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise HyperParameterError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        self.depth = depth
        self.dropout = float(dropout)
        blocks = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.stem = conv3x3(in_channels, 16)
        channels = 16
        for i, (out, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
            units = [
                WideBlock(channels if j == 0 else out, out, stride if j == 0 else 1, dropout) for j in range(blocks)
            ]
            setattr(self, f"layer{i}", nn.Sequential(*units))
            channels = out
        self.norm = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.num_features = channels
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)


def wide_resnet28(k: int = 10, *, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WRN-28-k (four blocks per stage); see :class:`WideResNet`."""
    return WideResNet(28, k, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


def wrn28_2(*, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WRN-28-2: 1.47M parameters for 10 classes."""
    return WideResNet(28, 2, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


def wrn28_10(*, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WRN-28-10: 36.48M parameters for 10 classes."""
    return WideResNet(28, 10, num_classes=num_classes, in_channels=in_channels, dropout=dropout)
