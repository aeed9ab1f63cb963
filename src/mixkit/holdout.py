"""A held-out split of the training data, for methods that measure the model while it trains.

Some label policies need data the model does not train on: CAMixup measures per-class
calibration after each epoch, MetaMixUp takes meta-gradients on held-out batches. A method
asks for a split by setting ``holdout_fraction``; the training engine then keeps that share of
every class out of training and hands the method a :class:`Holdout` through
:meth:`mixkit.MixMethod.attach_holdout`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from mixkit.errors import HyperParameterError

__all__ = ["Holdout", "split_holdout"]


class Holdout:
    """Held-out images and labels, served as model-ready batches.

    Args:
        images: ``(N, C, H, W)`` stored images (uint8 or float), never modified.
        labels: ``(N,)`` int64 labels.
        prepare: turns a slice of ``images`` into a model-ready batch (normalised, on the
            training device); the identity by default.

    Example:
        >>> h = Holdout(torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 0, 1, 0]))
        >>> [x.shape[0] for x, _ in h.batches(2)], len(h)
        ([2, 2, 1], 5)
    """

    def __init__(self, images: Tensor, labels: Tensor, prepare: Callable[[Tensor], Tensor] | None = None) -> None:
        if images.shape[0] != labels.shape[0]:
            raise HyperParameterError(f"images and labels must have the same length, got {images.shape[0]} and {labels.shape[0]}")
        if images.shape[0] == 0:
            raise HyperParameterError("the held-out split is empty: use more training images or a larger fraction")
        self.images, self.labels = images, labels
        self.prepare = prepare or (lambda x: x)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """All held-out samples in order, ``batch_size`` at a time."""
        for start in range(0, len(self), batch_size):
            x = self.prepare(self.images[start:start + batch_size])
            yield x, self.labels[start:start + batch_size].to(x.device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` held-out samples drawn without replacement (all of them if ``n >= len``)."""
        idx = torch.randperm(len(self), generator=generator)[:n]
        x = self.prepare(self.images[idx])
        return x, self.labels[idx].to(x.device)


def split_holdout(labels: Tensor, fraction: float, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split sample indices into (train, held-out), holding out ``fraction`` of every class.

    Every class keeps at least one training sample and gives at least one held-out sample
    when it has two or more. The split depends only on ``labels``, ``fraction`` and ``seed``.

    Returns:
        ``(train_index, holdout_index)``, sorted int64 tensors.

    Example:
        >>> tr, ho = split_holdout(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 0.25)
        >>> len(tr), len(ho), sorted(set(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])[ho].tolist()))
        (6, 2, [0, 1])
    """
    if not 0.0 < fraction < 1.0:
        raise HyperParameterError(f"holdout fraction must be in (0, 1), got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    held = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(members.numel(), generator=gen)]
        n = min(max(1, round(fraction * members.numel())), members.numel() - 1)
        held.append(members[:n])
    holdout = torch.cat(held).sort().values
    keep = torch.ones(labels.shape[0], dtype=torch.bool)
    keep[holdout] = False
    return torch.nonzero(keep).flatten(), holdout
