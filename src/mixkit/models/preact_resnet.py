"""PreAct ResNet-18, the CIFAR variant of the mixup literature.

Papers and reference code:
    * He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016 (full
      pre-activation units: BN-ReLU-conv, BN-ReLU-conv, identity addition).
    * Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018, and Verma et al.,
      "Manifold Mixup", ICML 2019, which train this network on CIFAR.
    * Reference code read: github.com/kuangliu/pytorch-cifar ``models/preact_resnet.py`` (used
      by github.com/facebookresearch/mixup-cifar10) and
      github.com/vikasverma1077/manifold_mixup ``supervised/models/preresnet.py`` (the same
      network with a base-width option). This file is written independently.

Layout, as in the reference code: stem ``conv3x3(in_channels, w)`` with no BN or ReLU; four
stages of two pre-activation basic blocks with ``w, 2w, 4w, 8w`` channels and strides
1, 2, 2, 2; global average pooling; ``fc``. Where a block changes the shape, its shortcut is a
strided 1x1 convolution applied to the *pre-activated* input (BN-ReLU shared with the residual
branch). Like the reference code, and unlike the paper's final extra activation, there is no
BN-ReLU after the last stage (``norm`` is the identity); this keeps the 11,171,146
parameters (10 classes, ``w = 64``) of the networks behind the published mixup numbers.
"""

from __future__ import annotations

from torch import Tensor, nn

from mixkit.errors import HyperParameterError
from mixkit.models._common import StagedNet, check_positive_int, conv1x1, conv3x3, init_weights

__all__ = ["PreActResNet", "preact_resnet18"]


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus the shortcut.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        stride: stride of the first convolution (and of the projection shortcut).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
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
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + skip


class PreActResNet(StagedNet):
    """Pre-activation ResNet with basic blocks, CIFAR layout (3x3 stem, no max-pool).

    Args:
        blocks: blocks per stage, four numbers (``(2, 2, 2, 2)`` is ResNet-18).
        num_classes: width of the logits.
        in_channels: channels of the input (1 for Fashion-MNIST, 3 for CIFAR).
        width: base channels ``w``; the stages have ``w, 2w, 4w, 8w``.

    Raises:
        HyperParameterError: ``blocks`` is not four positive ints, or an option is invalid.

    Example:
        >>> import torch
        >>> net = PreActResNet((1, 1, 1, 1), num_classes=3, width=8)
        >>> net(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 3])
        >>> net.stage_names
        ('layer1', 'layer2', 'layer3', 'layer4')
    """

    stage_names = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self, blocks: tuple[int, ...], *, num_classes: int = 10, in_channels: int = 3, width: int = 64
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels)
        if len(blocks) != 4:
            raise HyperParameterError(f"blocks must give four stages, got {blocks!r}")
        blocks = tuple(check_positive_int("blocks[i]", b) for b in blocks)
        self.width = check_positive_int("width", width)
        widths = (width, 2 * width, 4 * width, 8 * width)
        self.stem = conv3x3(in_channels, width)
        channels = width
        for i, (n, out, stride) in enumerate(zip(blocks, widths, (1, 2, 2, 2)), start=1):
            units = [PreActBlock(channels if j == 0 else out, out, stride if j == 0 else 1) for j in range(n)]
            setattr(self, f"layer{i}", nn.Sequential(*units))
            channels = out
        self.norm = nn.Identity()
        self.num_features = widths[-1]
        self.fc = nn.Linear(widths[-1], num_classes)
        init_weights(self)


def preact_resnet18(*, num_classes: int = 10, in_channels: int = 3, width: int = 64) -> PreActResNet:
    """PreAct ResNet-18 (2, 2, 2, 2 blocks): 11.17M parameters for 10 classes at ``width=64``."""
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels, width=width)
