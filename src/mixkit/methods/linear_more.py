"""More static linear mixing: locality-restricted Mixup and SamplePairing.

Papers and reference code:
    * Baena, Drumetz, Gripon, "Preventing Manifold Intrusion with Locality: Local Mixup",
      EUSIPCO 2022, arXiv 2201.04368 (github.com/raphael-baena/Local-Mixup).
    * Inoue, "Data Augmentation by Pairing Samples for Images Classification", arXiv
      1801.02929, 2018 (no official code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mixkit import rng
from mixkit.base import MixMethod
from mixkit.functional import row_paths
from mixkit.functional.blend import (
    blend,
    gather_rows_scratch,
    memory_order,
    take_rows,
    to_memory,
)
from mixkit.registry import register
from mixkit.types import BlendParams, MixOutput, MixTarget, Params
from mixkit.validation import check_alpha, check_choice, check_range

__all__ = ["LocalMixup", "SamplePairing", "PairingParams", "pair_distances", "distance_matrix", "local_partners"]


def _flat(x: Tensor) -> Tensor:
    """``(B, D)`` in at least float32 (half inputs are measured in float32), the values in
    ``x``'s memory order (a view of a channels_last batch, not a copy: distances do not
    depend on the order)."""
    return to_memory(x, memory_order(x)).reshape(x.shape[0], -1).to(torch.promote_types(x.dtype, torch.float32))


def pair_distances(x: Tensor, index: Tensor) -> Tensor:
    """``(B,)`` float64 on the CPU: ``||x[b] - x[index[b]]||_2`` over all non-batch dims.

    Args:
        x: ``(B, ...)`` float tensor.
        index: ``(B,)`` partner rows.
    """
    flat = _flat(x)
    if row_paths.rows_without_grad(flat) and flat.is_contiguous():
        # large samples: the partners in this thread's reused buffer (a batch-sized fresh gather
        # faults its pages in at every call: 77 MB at 224x224); the same values
        diff = gather_rows_scratch(flat, index.cpu()).sub_(flat)
    else:
        diff = take_rows(flat, index).sub_(flat)  # the sign does not change the norm
    return torch.linalg.vector_norm(diff, dim=1).to("cpu", torch.float64)


def distance_matrix(x: Tensor) -> Tensor:
    """``(B, B)`` float64 on the CPU: ``||x[a] - x[b]||_2`` for every pair (zero diagonal)."""
    flat = _flat(x)
    dist = torch.cdist(flat.unsqueeze(0), flat.unsqueeze(0)).squeeze(0).to("cpu", torch.float64)
    return dist.fill_diagonal_(0.0)


def local_partners(close: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """``(B,)`` int64: for each row, a partner drawn uniformly among its True columns.

    Args:
        close: ``(B, B)`` bool adjacency (the diagonal must be True, so every row has one).
        generator: CPU generator.
    """
    b = close.shape[0]
    counts = close.sum(dim=1)
    k = torch.floor(rng.uniform((b,), generator=generator) * counts).long().clamp_max(counts - 1)
    rank = close.long().cumsum(dim=1)  # rank[a, j]: True columns up to j
    return (rank <= k.unsqueeze(1)).sum(dim=1)  # the column of the (k + 1)-th True


@register(
    "local_mixup",
    family="linear",
    paper="Preventing Manifold Intrusion with Locality: Local Mixup",
    authors="Baena et al.",
    venue="EUSIPCO 2022",
    year=2022,
    code="https://github.com/raphael-baena/Local-Mixup",
    sources=2,
    summary="Mixup restricted to pairs closer than epsilon in input space; farther pairs are not mixed.",
)
class LocalMixup(MixMethod):
    """Local Mixup: Mixup only between samples within distance ``epsilon`` of each other.

    The paper weights each pair's mixup loss by a locality kernel ``w(||x_i - x_j||)``; with
    its threshold graph, ``w = 1[d <= epsilon]``, so ``epsilon -> 0`` is plain training and
    ``epsilon -> inf`` is Mixup. Here a pair beyond ``epsilon`` is not mixed: the sample keeps
    its own image and label (``lam = 1``), and pairs within it are mixed as Mixup
    (``lam ~ Beta(alpha, alpha)``, the weight of the original sample). Distances are
    Euclidean over the whole sample (``C*H*W`` values) in the input's units, so ``epsilon``
    depends on the input scale and size: the default 35 is the reference code's value for
    normalised CIFAR-10 (its Lipschitz-bound script); distances grow with sqrt(C*H*W).

    Pairing: ``"permutation"`` pairs by a random permutation, as Mixup, and leaves far pairs
    unmixed (where the paper drops their loss term, this trains them on the clean sample);
    ``"local"`` draws each partner uniformly among the rows within ``epsilon`` (the sample
    itself included), like the reference CIFAR notebook, which draws partners with
    probability proportional to a kernel of the distance (there ``exp(-alpha d)``); this costs
    a ``(B, B)`` distance matrix. In ``"batch"`` mode all mixed pairs share one lambda.

    Args:
        alpha: Beta concentration (> 0).
        epsilon: the distance threshold (>= 0; ``math.inf`` gives Mixup).
        pairing: ``"permutation"`` or ``"local"``.
        p: probability of mixing the batch or each sample.
        mode: ``"batch"`` (one lambda) or ``"elem"`` (one lambda per sample).
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> x = torch.cat([torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 100.0)])
        >>> out = mixkit.create("local_mixup", epsilon=1.0, pairing="local")(
        ...     x, torch.tensor([0, 0, 1, 1]), generator=torch.Generator().manual_seed(0))
        >>> bool((out.params.index // 2 == torch.arange(4) // 2).all())  # partners from its own cluster
        True
    """

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        epsilon: float = 35.0,
        pairing: str = "permutation",
        p: float = 1.0,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.alpha = check_alpha(alpha)
        self.epsilon = check_range(epsilon, 0.0, math.inf, "epsilon")
        self.pairing = check_choice(pairing, ("permutation", "local"), "pairing")

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> BlendParams:
        b = x.shape[0]
        if self.pairing == "local":
            index = local_partners(distance_matrix(x) <= self.epsilon, generator=generator)
            near = torch.ones(b, dtype=torch.bool)
        else:
            index = rng.randperm(b, generator=generator)
            near = pair_distances(x, index) <= self.epsilon
        lam = self._per_sample(b, lambda size: rng.beta(size, self.alpha, self.alpha, generator=generator))
        active = self._active(b, generator) & near
        return BlendParams(index=self._partner(index, active), lam=torch.where(active, lam, 1.0))

    def _mix(self, x: Tensor, params: BlendParams) -> Tensor:
        return blend(x, params.index, params.lam)


@dataclass(frozen=True, eq=False, kw_only=True)
class PairingParams(Params):
    """Params of SamplePairing: ``x~ = weight * x + (1 - weight) * x[index]``, label of ``x``.

    Attributes:
        weight: ``(B,)`` float64 pixel weight of each sample: 0.5 when paired, 1 when not.
            ``lam`` (the label weight of the sample) is always 1.
    """

    weight: Tensor


@register(
    "sample_pairing",
    family="linear",
    paper="Data Augmentation by Pairing Samples for Images Classification",
    authors="Inoue",
    venue="arXiv 1801.02929",
    year=2018,
    code="https://arxiv.org/abs/1801.02929",
    sources=1,
    summary="The average of two images, labelled with the first image's label only.",
)
class SamplePairing(MixMethod):
    """SamplePairing: ``x~ = (x + x[perm]) / 2`` with the label of ``x`` alone.

    The paper overlays each training image with another one drawn at random from the
    training set (a pixel-wise average) and keeps the first image's label, so the target has
    one source with weight 1 (``lam = 1``; the pixel weight 0.5 is in ``params.weight``).
    Pairing: a random permutation of the batch. With ``p`` the batch (``"batch"``) or each
    sample (``"elem"``) is paired with that probability.

    The paper switches the method on and off over training, which is the training loop's
    job (set ``p`` to 0 or 1 per epoch): it trains first without SamplePairing (the paper's
    text: the first epoch on ILSVRC, the first 100 epochs on CIFAR), then enables it
    intermittently (on ILSVRC: on for 300,000 images, off for the next 100,000; on CIFAR: on
    for 8 epochs, off for 2), and ends with a fine-tuning phase without it until the loss
    and accuracy settle. (These numbers are recalled from the paper; check your copy.)

    Args:
        p: probability of pairing the batch or each sample.
        mode: ``"batch"`` or ``"elem"``.
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> x = torch.rand(4, 3, 8, 8)
        >>> out = mixkit.create("sample_pairing")(x, torch.tensor([0, 1, 2, 3]),
        ...                                      generator=torch.Generator().manual_seed(0))
        >>> i = out.params.index
        >>> bool(torch.allclose(out.x, (x + x[i]) / 2)), out.target.k, out.target.lam.tolist()
        (True, 1, [1.0, 1.0, 1.0, 1.0])
    """

    def __init__(self, *, p: float = 1.0, mode: str = "batch", num_classes: int | None = None) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> PairingParams:
        b = x.shape[0]
        index = rng.randperm(b, generator=generator)
        active = self._active(b, generator)
        weight = torch.where(active, 0.5, 1.0).to(torch.float64)
        return PairingParams(index=self._partner(index, active), lam=torch.ones(b, dtype=torch.float64), weight=weight)

    def _mix(self, x: Tensor, params: PairingParams) -> Tensor:
        return blend(x, params.index, params.weight)

    def target(self, y: Tensor, params: Params) -> MixTarget:
        return MixTarget.unmixed(y, self.num_classes)

    def __call__(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> MixOutput:
        # lam is always 1 (one label source), so decide from the pixel weight, not lam
        rng.check_generator(generator)
        self.check(x, y)
        params = self.sample(x, y, generator=generator)
        mixed = x.clone() if bool(params.weight.eq(1).all()) else self._mix(x, params)
        return MixOutput(mixed, self.target(y, params), params)
