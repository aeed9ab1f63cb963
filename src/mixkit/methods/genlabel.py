"""Generated labels: GenLabel relabels mixed samples with class-conditional densities.

Paper and reference code:
    * Sohn, Shang, Chen, Moon, Papailiopoulos, Lee, "GenLabel: Mixup Relabeling using
      Generative Models", ICML 2022 (github.com/UW-Madison-Lee-Lab/GenLabel_official:
      ``Syn_model.py`` for the two-class relabelling and the loss, ``OpenML/train_test.py``
      for the Gaussian model ``estimate_gm`` on a network's penultimate features).

The densities live on the model's features, read by a forward pre-hook, so no model change
is needed; the functions below are the pure part (moments, fit, log-likelihood, relabel).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError, ModelError
from mixkit.hooks import resolve_layer
from mixkit.label_policy import Criterion, LabelPolicy
from mixkit.registry import register
from mixkit.types import MixTarget, StepOutput
from mixkit.validation import check_choice, check_range

__all__ = ["GenLabel", "class_log_likelihood", "feature_moments", "fit_class_gaussians", "genlabel_target"]

COVARIANCES = ("shared", "full", "diag")


def feature_moments(features: Tensor, classes: Tensor, num_classes: int, covariance: str) -> dict[str, Tensor]:
    """Sufficient statistics of a batch of features per class, in float64.

    Args:
        features: ``(B, D)`` (or ``(B, ...)``, flattened).
        classes: ``(B,)`` int class of each row.
        num_classes: ``K``.
        covariance: ``"shared"`` (second moment ``(D, D)`` over all rows), ``"full"``
            (``(K, D, D)`` per class) or ``"diag"`` (``(K, D)`` per class).

    Returns:
        ``{"count": (K,), "sum": (K, D), "second": ...}``; add two such dicts to merge them.
    """
    z = features.detach().flatten(1).to(torch.float64)
    classes = classes.to(z.device).long()
    onehot = F.one_hot(classes, num_classes).to(torch.float64)
    moments = {"count": onehot.sum(dim=0), "sum": onehot.t() @ z}
    if covariance == "shared":
        moments["second"] = z.t() @ z
    elif covariance == "diag":
        moments["second"] = onehot.t() @ (z * z)
    else:
        second = z.new_zeros(num_classes, z.shape[1], z.shape[1])
        for c in torch.unique(classes).tolist():
            zc = z[classes == c]
            second[c] = zc.t() @ zc
        moments["second"] = second
    return moments


def _cholesky(cov: Tensor, eps: float) -> Tensor:
    """Cholesky factor of ``cov`` (batched), adding jitter until it is positive definite."""
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    jitter = eps
    for _ in range(8):
        chol, info = torch.linalg.cholesky_ex(cov + jitter * eye)
        if not bool(info.any()):
            return chol
        jitter *= 10.0
    raise ValueError("the feature covariance is not positive definite even with jitter; raise eps")


def fit_class_gaussians(moments: dict[str, Tensor], covariance: str, eps: float) -> dict[str, Tensor]:
    """Maximum-likelihood Gaussians per class from :func:`feature_moments`, ridge ``eps * I``.

    Returns:
        ``{"mean": (K, D), "valid": (K,) bool, "scale": ...}`` with ``scale`` the Cholesky
        factor ``(D, D)`` of the pooled within-class covariance (``"shared"``), the factors
        ``(K, D, D)`` per class (``"full"``) or the variances ``(K, D)`` (``"diag"``).
        Classes without samples are invalid.
    """
    count, total, second = moments["count"], moments["sum"], moments["second"]
    n = count.clamp_min(1.0)
    mean = total / n.unsqueeze(1)
    if covariance == "shared":
        scatter = second - (mean * count.unsqueeze(1)).t() @ mean
        scale = _cholesky(scatter / count.sum().clamp_min(1.0), eps)
    elif covariance == "full":
        cov = second / n.view(-1, 1, 1) - mean.unsqueeze(2) * mean.unsqueeze(1)
        scale = _cholesky(cov, eps)
    else:
        scale = (second / n.unsqueeze(1) - mean * mean).clamp_min(0.0) + eps
    return {"mean": mean, "scale": scale, "valid": count > 0}


def class_log_likelihood(features: Tensor, density: dict[str, Tensor], covariance: str) -> Tensor:
    """Class log-densities ``log N(z; mu_c, Sigma_c)`` of features under :func:`fit_class_gaussians`.

    Args:
        features: ``(B, D)`` (or ``(B, ...)``, flattened).
        density: the fitted Gaussians.
        covariance: the kind they were fitted with.

    Returns:
        ``(B, K)`` float64, ``-inf`` for classes without samples.
    """
    z = features.detach().flatten(1).to(torch.float64)
    mean, scale = density["mean"].to(z.device), density["scale"].to(z.device)
    if covariance == "shared":
        zw = torch.linalg.solve_triangular(scale, z.t(), upper=False).t()
        mw = torch.linalg.solve_triangular(scale, mean.t(), upper=False).t()
        maha = (zw * zw).sum(1, keepdim=True) - 2 * zw @ mw.t() + (mw * mw).sum(1)
        logdet = 2 * torch.log(torch.diagonal(scale)).sum()
    elif covariance == "full":
        diff = (z.unsqueeze(0) - mean.unsqueeze(1)).transpose(1, 2)  # (K, D, B)
        maha = torch.linalg.solve_triangular(scale, diff, upper=False).pow(2).sum(dim=1).t()
        logdet = 2 * torch.log(torch.diagonal(scale, dim1=1, dim2=2)).sum(dim=1)
    else:
        inv = 1.0 / scale
        maha = (z * z) @ inv.t() - 2 * z @ (mean * inv).t() + (mean * mean * inv).sum(1)
        logdet = torch.log(scale).sum(dim=1)
    ll = -0.5 * (maha.clamp_min(0.0) + logdet + z.shape[1] * math.log(2 * math.pi))
    return ll.masked_fill(~density["valid"].to(z.device), -math.inf)


def genlabel_target(log_likelihood: Tensor) -> MixTarget:
    """GenLabel's relabelled target: the two most likely classes ``c1, c2`` with
    ``lam_gen = sigmoid(log p(z|c1) - log p(z|c2))`` on ``c1`` (as ``Syn_model.py``).

    Args:
        log_likelihood: ``(B, K)`` class log-densities of the mixed samples (>= 2 finite per row).

    Returns:
        A two-source :class:`MixTarget` over the classes (float32 weights).
    """
    top = log_likelihood.topk(2, dim=1)
    lam = torch.sigmoid(top.values[:, 0] - top.values[:, 1]).to(torch.float32)
    b, dev = log_likelihood.shape[0], log_likelihood.device
    labels = torch.cat([top.indices[:, 0], top.indices[:, 1]])
    rows = torch.arange(b, device=dev)
    return MixTarget(labels, torch.stack([rows, rows + b], dim=1), torch.stack([lam, 1.0 - lam], dim=1),
                     log_likelihood.shape[1])


# ------------------------------------------------------------------------------- hooks
def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def _feature_module(model: nn.Module, name: str | None) -> nn.Module:
    if name is not None:
        return resolve_layer(model, name)
    linears = [m for m in _unwrap(model).modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"GenLabel reads the input of the model's last nn.Linear, and {type(_unwrap(model)).__name__} "
                         "has none: pass feature_layer='<submodule whose input are the features>'")
    return linears[-1]


@contextmanager
def _captured_input(module: nn.Module) -> Iterator[list[Tensor]]:
    """Within the block, ``box[0]`` is the (detached) input of ``module``'s latest call."""
    box: list[Tensor] = []

    def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
        box[:] = [args[0].detach()]

    handle = module.register_forward_pre_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


@contextmanager
def _buffers_kept(model: nn.Module) -> Iterator[None]:
    """Restore every buffer (batch-norm running statistics) after the block."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def _all_reduce(moments: dict[str, Tensor]) -> None:
    import torch.distributed as td

    if td.is_available() and td.is_initialized() and td.get_world_size() > 1:
        for t in moments.values():
            td.all_reduce(t)


@register(
    "genlabel",
    family="label",
    paper="GenLabel: Mixup Relabeling using Generative Models",
    authors="Sohn et al.",
    venue="ICML 2022",
    year=2022,
    code="https://github.com/UW-Madison-Lee-Lab/GenLabel_official",
    sources=2,
    summary="Mixed samples relabelled by class Gaussians fitted to the model's penultimate features each epoch.",
)
class GenLabel(LabelPolicy):
    """GenLabel: relabel each mixed sample by class-conditional densities of the model's features.

    Density model: one Gaussian per class on the features ``z`` of the model (by default the
    input of its last ``nn.Linear``, read by a forward pre-hook, the penultimate features as
    in the code's ``GenLabel_FullyConnected``), by maximum likelihood plus ``eps * I`` (the
    code's ``estimate_gm`` tolerance). ``covariance="shared"`` (the default) pools one
    within-class covariance over all classes, as LDA: it needs ``D`` rather than ``K * D``
    well-estimated directions, so it stays well conditioned when a class has fewer samples
    than feature dimensions (CIFAR-100 at 512 features) and the relabelling weight is a
    smooth (logistic-linear) function of ``z``; ``"full"`` is the code's per-class full
    covariance, ``"diag"`` per-class variances.

    Fitting: every training step runs an extra forward of the clean batch without gradients
    (batch-norm buffers restored after it, so running statistics see only the training
    forward) and accumulates per-class moments; :meth:`epoch_end` fits the Gaussians on that
    epoch's features and resets the moments. The code instead fits once, after a vanilla
    warm-up, and freezes the feature extractor; here the features keep training, so the
    density is refitted every epoch. Until the first fit the loss is the engine's criterion
    (plain mixup cross-entropy).

    Relabelling, as ``Syn_model.py``: for the mixed sample's features ``z~`` (from the wrapped
    method's own forward, so any sample policy works), the two classes with the largest
    log-likelihood ``c1, c2`` and ``lam_gen = sigmoid(log p(z~|c1) - log p(z~|c2))``; the loss is
    ``(1 - gamma) * criterion(target) + gamma * criterion(relabelled target)``. (The OpenML
    code instead softmaxes the log-likelihoods of all classes.) ``gamma = 0`` is plain mixup
    cross-entropy (and skips the clean forward). The README's runs use ``gamma`` 1 or 0.8
    (the OpenML runs cross-validate it); 0.8 keeps part of the mixup target while the
    feature density is still moving. Cost: one gradient-free forward per step; the
    ``"full"`` density costs ``K`` triangular solves per step.

    Args:
        method: the sample policy (registry name or object), Mixup by default.
        method_args: its hyper-parameters when given by name.
        p: probability of mixing, passed to ``method`` by name.
        mode: ``"batch"`` or ``"elem"``, passed to ``method`` by name.
        num_classes: number of classes, if known.
        gamma: weight of the relabelled loss, in [0, 1].
        covariance: ``"shared"``, ``"full"`` or ``"diag"``.
        feature_layer: dotted name of the submodule whose INPUT are the features
            (None: the model's last ``nn.Linear``).
        eps: ridge added to the covariance (> 0).

    Example:
        >>> import torch, mixkit
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4), torch.nn.ReLU(),
        ...                           torch.nn.Linear(4, 3))
        >>> gl, g = mixkit.create("genlabel"), torch.Generator().manual_seed(0)
        >>> x, y = torch.rand(6, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
        >>> _ = gl.train_step(net, x, y, criterion=mixkit.mixup_cross_entropy, generator=g)
        >>> gl.epoch_end(net)["genlabel_classes"], gl.density["mean"].shape
        (3.0, torch.Size([3, 4]))
        >>> step = gl.train_step(net, x, y, criterion=mixkit.mixup_cross_entropy, generator=g)
        >>> sorted(step.logs)
        ['genlabel_lam']
    """

    def __init__(
        self,
        *,
        method: MixMethod | str = "mixup",
        method_args: dict[str, Any] | None = None,
        p: float | None = None,
        mode: str | None = None,
        num_classes: int | None = None,
        gamma: float = 0.8,
        covariance: str = "shared",
        feature_layer: str | None = None,
        eps: float = 1e-4,
    ) -> None:
        super().__init__(method=method, method_args=method_args, p=p, mode=mode, num_classes=num_classes)
        self.gamma = check_range(gamma, 0.0, 1.0, "gamma")
        self.covariance = check_choice(covariance, COVARIANCES, "covariance")
        if feature_layer is not None and not isinstance(feature_layer, str):
            raise HyperParameterError(f"feature_layer must be a submodule name or None, got {feature_layer!r}")
        self.feature_layer = feature_layer
        self.eps = check_range(eps, 0.0, math.inf, "eps")
        if self.eps == 0:
            raise HyperParameterError("eps must be > 0")
        #: the fitted class Gaussians (see :func:`fit_class_gaussians`); None before the first fit.
        self.density: dict[str, Tensor] | None = None
        self._moments: dict[str, Tensor] | None = None

    def accumulate(self, features: Tensor, y: Tensor, num_classes: int) -> None:
        """Add a batch of clean features (labels ``y``, integer or soft) to this epoch's moments."""
        classes = y.argmax(dim=1) if y.ndim == 2 else y
        batch = feature_moments(features, classes, num_classes, self.covariance)
        self._moments = batch if self._moments is None else {k: v + batch[k] for k, v in self._moments.items()}

    def relabel(self, features: Tensor) -> MixTarget:
        """The relabelled target of mixed samples with these features (after a fit)."""
        if self.density is None:
            raise RuntimeError("GenLabel has no fitted density yet: call epoch_end() after some training steps")
        return genlabel_target(class_log_likelihood(features, self.density, self.covariance))

    def train_step(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        criterion: Criterion,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """Clean features into the moments, then the wrapped method's step with the GenLabel loss."""
        if self.gamma == 0:  # nothing to relabel: the wrapped method's step, without the clean forward
            return self.inner.train_step(model, x, y, criterion=criterion, generator=generator)
        layer = _feature_module(model, self.feature_layer)
        with torch.no_grad(), _buffers_kept(model), _captured_input(layer) as clean:
            width = model(x).shape[1]
        if not clean:
            raise ModelError("the feature layer did not run in the model's forward; name another feature_layer")
        self.accumulate(clean[0], y, self.num_classes or width)
        logs: dict[str, float] = {}

        def genlabel_criterion(logits: Tensor, target: MixTarget) -> Tensor:
            base = criterion(logits, target)
            if self.density is None:
                return base
            relabelled = self.relabel(mixed[0])
            logs["genlabel_lam"] = float(relabelled.lam.mean())
            return (1.0 - self.gamma) * base + self.gamma * criterion(logits, relabelled)

        with _captured_input(layer) as mixed:
            out = self.inner.train_step(model, x, y, criterion=genlabel_criterion, generator=generator)
        return StepOutput(loss=out.loss, logits=out.logits, target=out.target, logs={**out.logs, **logs})

    def epoch_end(self, model: nn.Module) -> dict[str, float]:
        """Fit the class Gaussians on this epoch's clean features (at least two classes seen)."""
        logs = dict(self.inner.epoch_end(model))
        moments, self._moments = self._moments, None
        if moments is not None:
            _all_reduce(moments)
            if int((moments["count"] > 0).sum()) >= 2:
                self.density = fit_class_gaussians(moments, self.covariance, self.eps)
        if self.density is not None:
            logs["genlabel_classes"] = float(self.density["valid"].sum())
        return logs

    def policy_state(self) -> dict[str, Any]:
        return {"density": None if self.density is None else {k: v.clone() for k, v in self.density.items()}}

    def load_policy_state(self, state: dict[str, Any]) -> None:
        unknown = set(state) - {"density"}
        if unknown:
            raise ValueError(f"GenLabel state has unknown keys {sorted(unknown)}")
        density = state.get("density")
        if density is not None and set(density) != {"mean", "scale", "valid"}:
            raise ValueError(f"GenLabel density needs keys mean, scale, valid; got {sorted(density)}")
        self.density = None if density is None else {k: torch.as_tensor(v).clone() for k, v in density.items()}
        self._moments = None
