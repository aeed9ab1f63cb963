"""Learnable mixup: SAMix, online (a Mixer trained with the classifier) and pre-trained (SAMix^P).

Papers and reference code:
    * Li et al., "Boosting Discriminative Visual Representation Learning with Scenario-Agnostic
      Mixup", arXiv 2111.15454, 2021 (SAMix).
    * OpenMixup (github.com/Westlake-AI/openmixup), the authors' code:
      ``openmixup/models/heads/pmix_block.py`` (``PixelMixBlock``, the Mixer),
      ``openmixup/models/necks/conv_necks.py`` (``ConvNeck``, its value network),
      ``openmixup/models/classifiers/automix.py`` (``AutoMixup``, the training step) and the
      config ``configs/classification/cifar100/samix/basic/r18_l2_a2_bili_val_dp0_mul_x_cat_L1_var_01_mlr5e_2.py``
      (the defaults used here: CIFAR).

The training step, EMA encoder and schedules are shared with AutoMix: :mod:`mixkit.learnable`.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixkit import rng
from mixkit._device import upload
from mixkit.errors import HyperParameterError
from mixkit.learnable import LearnableMixMethod, MomentumEncoder, cosine_value, load_mixer, resolve_stage
from mixkit.registry import register
from mixkit.types import StepOutput
from mixkit.validation import check_choice, check_range

__all__ = ["SAMixMixer", "SAMix", "SAMixP", "lam_rescale", "eta_balanced_loss", "mask_prior_loss"]

_UPSAMPLING = ("bilinear", "nearest")


def lam_rescale(lam: Tensor, k: float) -> Tensor:
    """SAMix's lambda re-mapping (paper Eq. 7, code ``rescale_lam_mult``).

    ``(4/3 lam^3 - 2 lam^2 + (k+1) lam) / ((k+1) - 2/3)`` for ``k >= 0`` (fixes 0, 1/2, 1 and
    bends lambda towards 1/2); the identity for ``k < 0``.
    """
    if k < 0:
        return lam
    return (4.0 / 3.0 * lam**3 - 2.0 * lam**2 + (k + 1.0) * lam) / ((k + 1.0) - 2.0 / 3.0)


class SAMixMixer(nn.Module):
    """The SAMix Mixer: features of a pair and lambda in, the mixing mask out (algorithms.md 1.4).

    With ``z (B, C, h, w)``, ``z_i = z``, ``z_j = z[index]`` and ``l = lam_rescale(lam, k)``:
    ``z_i' = (1 + l) z_i``, ``z_j' = (2 - l) z_j`` (adaptive lambda encoding);
    ``u = cat(z_i', z_j') (B, 2C, h, w)``, ``q = W_q u``, ``k = W_k u`` (1x1 convs 2C -> C/r);
    ``P = softmax_row(q^T k / sqrt(C/r)) (B, hw, hw)`` (mixing attention);
    ``v = Conv(C/r -> 1)(ELU(BN(Conv(C -> C/r)(z_j')))) (B, 1, h, w)`` (non-linear content);
    ``M_j = sigmoid(Upsample(P v))`` at the input size, and the returned mask is the weight of
    each row's OWN sample, ``M_i = 1 - M_j`` (code: ``mask_mode="none_v_"`` of the SAMix configs).

    Args:
        in_channels: channels ``C`` of the features.
        reduction: ``r`` of the attention and value widths (2).
        lam_mul_k: ``k`` of :func:`lam_rescale` (CIFAR 0.25, ImageNet -1 = identity).
        dropout: dropout on the value map (CIFAR 0, ImageNet 0.1; torch's global RNG).
        upsampling: ``"bilinear"`` (SAMix) or ``"nearest"``.
    """

    def __init__(self, in_channels: int, *, reduction: int = 2, lam_mul_k: float = 0.25, dropout: float = 0.0,
                 upsampling: str = "bilinear") -> None:
        super().__init__()
        self.in_channels, self.reduction, self.lam_mul_k = int(in_channels), int(reduction), float(lam_mul_k)
        self.upsampling = check_choice(upsampling, _UPSAMPLING, "upsampling")
        self.inter_channels = max(self.in_channels // self.reduction, 1)
        c, ci = self.in_channels, self.inter_channels
        self.query = nn.Conv2d(2 * c, ci, 1)
        self.key = nn.Conv2d(2 * c, ci, 1)
        self.value = nn.Sequential(nn.Conv2d(c, ci, 1, bias=False), nn.BatchNorm2d(ci), nn.ELU(),
                                   nn.Conv2d(ci, 1, 1, bias=False))
        self.dropout = nn.Dropout(check_range(dropout, 0.0, 1.0, "dropout"))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The code's init: convs ``normal(0, 0.01)``, biases 0, BN weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(rng.normal(tuple(m.weight.shape), generator=generator) * 0.01)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def mask_logits(self, z: Tensor, index: Tensor, lam: Tensor) -> Tensor:
        """``(B, 1, h, w)`` logits of the partner's mask ``M_j`` at feature resolution."""
        n, _, h, w = z.shape
        rl = lam_rescale(lam.to(z.dtype).view(-1, 1, 1, 1), self.lam_mul_k)
        zi, zj = z * (1.0 + rl), z.index_select(0, index) * (2.0 - rl)
        u = torch.cat([zi, zj], dim=1)
        q = self.query(u).flatten(2).transpose(1, 2)  # (B, hw, C/r)
        k = self.key(u).flatten(2)  # (B, C/r, hw)
        attn = torch.softmax(q @ k / math.sqrt(self.inter_channels), dim=-1)  # (B, hw, hw)
        v = self.dropout(self.value(zj)).flatten(2).transpose(1, 2)  # (B, hw, 1)
        return (attn @ v).transpose(1, 2).reshape(n, 1, h, w)

    def forward(self, z: Tensor, index: Tensor, lam: Tensor, size: tuple[int, ...]) -> Tensor:
        """The own-sample mask ``M_i (B, 1, *size)`` in (0, 1).

        Args:
            z: ``(B, C, h, w)`` features of the batch.
            index: ``(B,)`` partner rows.
            lam: ``(B,)`` lambda (weight of the own sample) of each row.
            size: the input's spatial size ``(H, W)``; the logits are upsampled before the sigmoid.
        """
        logits = self.mask_logits(z, upload(index, z.device), upload(lam, z.device))
        extra = {"align_corners": False} if self.upsampling == "bilinear" else {}
        up = F.interpolate(logits, size=tuple(size), mode=self.upsampling, **extra)
        return torch.sigmoid(-up)  # 1 - sigmoid(up)


def _dense(y: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    return y.to(dtype) if y.ndim == 2 else F.one_hot(y.long(), k).to(dtype)


def eta_balanced_loss(logits: Tensor, y: Tensor, index: Tensor, lam: Tensor, *, eta: float) -> Tensor:
    """SAMix-C's eta-balanced generation loss ``l_+^pBCE + eta * l_-^CE`` (batch mean).

    The local term is a two-way softmax between the mixed classes with soft target
    ``(lam, 1 - lam)``: with ``p_a = sum_c y_a[c] softmax(s)_c`` (``e^{s_a}/Z`` for a one-hot
    label) ``l_+ = -lam log(p_i / (p_i + p_j)) - (1 - lam) log(p_j / (p_i + p_j))``; the global
    term is mixup CE over all K classes, ``-sum_c (lam y_i + (1 - lam) y_j)_c log softmax(s)_c``.

    Args:
        logits: ``(B, K)`` logits of the mixed batch.
        y: integer ``(B,)`` or soft ``(B, K)`` labels.
        index: ``(B,)`` partner rows.
        lam: ``(B,)`` weight of each row's own sample.
        eta: weight of the global term (CIFAR 0.5, ImageNet 1).
    """
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logp = torch.log_softmax(logits.to(dtype), dim=1)
    yi = _dense(y, logits.shape[1], dtype)
    yj = yi.index_select(0, upload(index, yi.device))
    lam = upload(lam, logp.device, dtype)
    la, lb = torch.logsumexp(logp + yi.log(), dim=1), torch.logsumexp(logp + yj.log(), dim=1)
    norm = torch.logaddexp(la, lb)
    local = -(lam * (la - norm) + (1.0 - lam) * (lb - norm))
    mixed = lam.unsqueeze(1) * yi + (1.0 - lam.unsqueeze(1)) * yj
    global_ = -(mixed * logp).sum(dim=1)
    return (local + eta * global_).mean()


def mask_prior_loss(mask: Tensor, lam: Tensor, *, margin: float = 0.1, variance: bool = True) -> Tensor:
    """SAMix's mask priors (code ``PixelMixBlock.mask_loss``, ``"L1+Variance"``; algorithms.md 1.5).

    ``l_mu = max(|mean(M_i) - mean(lam)| - margin, 0)`` with the mean over the whole batch and
    every pixel (equal to the code's ``|1 - mean(M_j) - lam|``); ``l_sigma = -2 mean((M - mean(M))^2)``
    (maximising the variance pushes masks towards 0/1). ``mean(lam)`` is the batch's lambda
    (one value in ``"batch"`` mode, as in the code; the average of the rows' in ``"elem"`` mode).

    Args:
        mask: ``(B, 1, H, W)`` own-sample mask ``M_i``.
        lam: ``(B,)`` lambda of each row.
        margin: ``epsilon`` (0.1).
        variance: add ``l_sigma`` (SAMix) or not (AutoMix's ``"L1"``).
    """
    mean = mask.mean()
    loss = torch.clamp((mean - lam.to(device=mask.device, dtype=mask.dtype).mean()).abs() - margin, min=0.0)
    if variance:
        loss = loss - 2.0 * (mask - mean).pow(2).mean()
    return loss


_INFO = dict(
    family="learnable",
    paper="Boosting Discriminative Visual Representation Learning with Scenario-Agnostic Mixup",
    authors="Li et al.",
    venue="arXiv 2111.15454",
    year=2021,
    code="https://github.com/Westlake-AI/openmixup",
    sources=2,
    needs=("model", "mixer"),
)


@register("samix", summary="A Mixer (attention over EMA-encoder features) learns masks online with the classifier.", **_INFO)
class SAMix(LearnableMixMethod):
    """SAMix: a Mixer learns the mixing masks while the classifier trains (online SAMix-C).

    Per step (:class:`~mixkit.learnable.LearnableMixMethod`): the :class:`SAMixMixer` reads the
    EMA encoder's features at ``stage`` (the papers' 3rd stage); the classifier trains on the
    detached Mixer batch ``M_i * x + (1 - M_i) * x[perm]`` with label weight the SAMPLED
    ``lam ~ Beta(alpha, alpha)`` (plain Mixup when ``lam`` is within ``lam_margin`` of 0 or 1),
    plus CE on the clean batch; the Mixer trains, through the frozen EMA model, on
    :func:`eta_balanced_loss` + ``beta_t`` :func:`mask_prior_loss` with an independent
    ``(lam, perm)``. Pairing: a random permutation; lambda is the weight of the original sample.

    Follows the CIFAR config of the official code (see the module docstring) except for the
    Mixer's loss: the shipped SL configs use softmax soft-CE with ``neg_weight = eta``, which
    makes eta inert (the loss is plain mixup CE); here the paper's eta-balanced loss (pBCE over
    the two mixed classes + eta x mixup CE) is used (algorithms.md 1.3, reconstructed).
    The code's optional ``mask_adjust`` (800-epoch config) is not implemented.

    Args:
        alpha: Beta concentration of lambda (2).
        stage: the stage the Mixer reads (``"auto"``: ``layer3``, else the deepest ``layerN``).
        eta: weight of the global CE term of the generation loss (CIFAR 0.5, ImageNet 1).
        lam_mul_k: the Mixer's lambda re-mapping ``k`` (CIFAR 0.25, ImageNet -1).
        reduction: the Mixer's channel reduction (2).
        dropout: dropout on the Mixer's value map (CIFAR 0, ImageNet 0.1).
        upsampling: ``"bilinear"`` or ``"nearest"``.
        mask_loss_weight: ``beta_0`` of the mask priors (0.1).
        mask_loss_margin: ``epsilon`` of the mean prior (0.1).
        mask_loss_schedule: ``"constant"`` (CIFAR) or ``"cosine"`` to 0 over ``total_steps`` (ImageNet).
        momentum, momentum_end, lam_margin, mixer_lr, mixer_min_lr, mixer_momentum,
            mixer_weight_decay, clean_weight, total_steps, p, mode, num_classes: see
            :class:`~mixkit.learnable.LearnableMixMethod`.

    Example:
        >>> import torch, mixkit
        >>> net = torch.nn.Sequential()
        >>> net.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        >>> net.layer1 = torch.nn.Conv2d(4, 8, 3, padding=1, stride=2)
        >>> net.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
        >>> samix = mixkit.create("samix", num_classes=3)
        >>> x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
        >>> out = samix.train_step(net, x, y, criterion=mixkit.mixup_cross_entropy)
        >>> out.logits.shape, out.loss.ndim, "mixer_loss" in out.logs
        (torch.Size([4, 3]), 0, True)
    """

    name = "samix"

    def __init__(self, *, alpha: float = 2.0, stage: str = "auto", eta: float = 0.5, lam_mul_k: float = 0.25,
                 reduction: int = 2, dropout: float = 0.0, upsampling: str = "bilinear", mask_loss_weight: float = 0.1,
                 mask_loss_margin: float = 0.1, mask_loss_schedule: str = "constant", momentum: float = 0.999,
                 momentum_end: float = 0.999999, lam_margin: float = 0.08, mixer_lr: float = 0.1,
                 mixer_min_lr: float = 0.05, mixer_momentum: float = 0.9, mixer_weight_decay: float = 1e-4,
                 clean_weight: float = 1.0, total_steps: int | None = None, p: float = 1.0, mode: str = "batch",
                 num_classes: int | None = None) -> None:
        super().__init__(alpha=alpha, stage=stage, momentum=momentum, momentum_end=momentum_end, lam_margin=lam_margin,
                         mixer_lr=mixer_lr, mixer_min_lr=mixer_min_lr, mixer_momentum=mixer_momentum,
                         mixer_weight_decay=mixer_weight_decay, clean_weight=clean_weight, total_steps=total_steps,
                         p=p, mode=mode, num_classes=num_classes)
        self.eta = check_range(eta, 0.0, math.inf, "eta")
        self.lam_mul_k = float(lam_mul_k)
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise HyperParameterError(f"reduction must be a positive int, got {reduction!r}")
        self.reduction = reduction
        self.dropout = check_range(dropout, 0.0, 1.0, "dropout")
        self.upsampling = check_choice(upsampling, _UPSAMPLING, "upsampling")
        self.mask_loss_weight = check_range(mask_loss_weight, 0.0, math.inf, "mask_loss_weight")
        self.mask_loss_margin = check_range(mask_loss_margin, 0.0, 1.0, "mask_loss_margin")
        self.mask_loss_schedule = check_choice(mask_loss_schedule, ("constant", "cosine"), "mask_loss_schedule")

    def mixer_config(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "lam_mul_k": self.lam_mul_k, "dropout": self.dropout,
                "upsampling": self.upsampling}

    def build_mixer(self, channels: int, generator: torch.Generator | None) -> nn.Module:
        mixer = SAMixMixer(channels, **self.mixer_config())
        mixer.reset_parameters(generator)
        return mixer

    def generate_mask(self, feats: Tensor, index: Tensor, lam: Tensor, *, size: tuple[int, int]) -> Tensor:
        return self.mixer(feats, index, lam, size)

    @property
    def mask_weight(self) -> float:
        """``beta_t`` of the mask priors at the current step."""
        if self.mask_loss_schedule == "constant":
            return self.mask_loss_weight
        return cosine_value(self.step, self.total_steps, self.mask_loss_weight, 0.0)

    def mixer_loss(self, logits: Tensor, y: Tensor, index: Tensor, lam: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
        gen = eta_balanced_loss(logits, y, index, lam, eta=self.eta)
        prior = mask_prior_loss(mask, lam, margin=self.mask_loss_margin, variance=True)
        logs = {"mask_mean": float(mask.detach().mean()), "mask_lam": float(lam.mean()),
                "generation_loss": float(gen.detach()), "mask_prior_loss": float(prior.detach())}
        return gen + self.mask_weight * prior.to(gen.dtype), logs


@register("samix_p", summary="SAMix^P: a new classifier trained with the masks of a frozen pre-trained SAMix Mixer.", **_INFO)
class SAMixP(LearnableMixMethod):
    """SAMix^P: train a new classifier with a Mixer pre-trained by :class:`SAMix`, kept frozen.

    ``mixer`` is a file written by ``SAMix.save_mixer`` (CLI ``--save-mixer``): the Mixer and the
    EMA encoder it was trained on. The Mixer needs features from THAT encoder (its input
    distribution; the new model is untrained), so the frozen pre-trained encoder is loaded into
    a copy of the new model's architecture (they must match) and only read: no EMA update, no
    Mixer training, no optimiser. Both frozen parts run in eval mode. Per step:
    ``M_i = Mixer(f_k(x), lam, perm)`` without gradient (plain Mixup within ``lam_margin``),
    ``x~ = M_i x + (1 - M_i) x[perm]``, loss = criterion on the sampled ``lam`` (no clean-batch
    term: OpenMixup's ``MixUpClassification`` with ``pretrained_k`` and ``momentum_k=-1``, whose
    ``_mixblock`` is a stub there; algorithms.md 1.9). Lambda is the weight of the original sample.

    Without ``mixer`` (None) the Mixer is a freshly initialised one (from the first call's
    generator) reading a frozen copy of the model at its first call: an untrained baseline for
    tests only.

    Args:
        mixer: path of the saved Mixer (or None, see above).
        alpha: Beta concentration of lambda (2).
        lam_margin: plain Mixup when ``lam <= margin`` or ``>= 1 - margin`` (0.08).
        p, mode, num_classes: as every method.

    Example:
        >>> import torch, mixkit
        >>> net = torch.nn.Sequential()
        >>> net.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        >>> net.layer1 = torch.nn.Conv2d(4, 8, 3, padding=1, stride=2)
        >>> net.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
        >>> out = mixkit.create("samix_p")(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]), model=net)
        >>> out.logits.shape, out.params.mask.shape
        (torch.Size([4, 3]), torch.Size([4, 1, 8, 8]))
    """

    name = "samix_p"

    def __init__(self, *, mixer: str | None = None, alpha: float = 2.0, lam_margin: float = 0.08, p: float = 1.0,
                 mode: str = "batch", num_classes: int | None = None) -> None:
        super().__init__(alpha=alpha, stage="auto", momentum=1.0, momentum_end=1.0, lam_margin=lam_margin,
                         mixer_lr=0.0, mixer_min_lr=0.0, mixer_momentum=0.0, mixer_weight_decay=0.0,
                         clean_weight=0.0, total_steps=None, p=p, mode=mode, num_classes=num_classes)
        if mixer is not None and not (isinstance(mixer, (str, os.PathLike)) and os.path.isfile(mixer)):
            raise HyperParameterError(f"mixer must be the path of a file written by save_mixer, got {mixer!r}")
        self.mixer_path = mixer
        self._saved: dict[str, Any] | None = None

    @property
    def hparams(self) -> dict[str, Any]:
        """The constructor arguments (``mixer`` is the file's path; ``self.mixer`` is the module)."""
        return {"mixer": self.mixer_path, "alpha": self.alpha, "lam_margin": self.lam_margin, "p": self.p,
                "mode": self.mode, "num_classes": self.num_classes}

    def _file(self) -> dict[str, Any] | None:
        if self.mixer_path is not None and self._saved is None:
            self._saved = load_mixer(self.mixer_path)
        return self._saved

    def mixer_config(self) -> dict[str, Any]:
        saved = self._file()
        return dict(saved["config"]) if saved else SAMix().mixer_config()

    def build_mixer(self, channels: int, generator: torch.Generator | None) -> nn.Module:
        saved = self._file()
        mixer = SAMixMixer(channels, **self.mixer_config())
        if saved is None:
            mixer.reset_parameters(generator)
        elif int(saved["channels"]) != channels:
            raise HyperParameterError(f"the saved Mixer reads {saved['channels']}-channel features, the encoder gives {channels}")
        else:
            mixer.load_state_dict(saved["mixer"])
        return mixer.requires_grad_(False)

    def _make_encoder(self, model: nn.Module, x: Tensor) -> MomentumEncoder:
        saved = self._file()
        stage = str(saved["stage"]) if saved else resolve_stage(model, "auto")
        encoder = MomentumEncoder(model, stage).to(x.device)
        if saved is not None:
            try:
                encoder.model.load_state_dict(saved["encoder"])
            except RuntimeError as err:
                raise HyperParameterError(
                    f"the Mixer file's encoder does not fit {type(model).__name__}: SAMix^P loads it into a copy of "
                    f"the model, so train with the architecture the Mixer was trained with ({err})") from None
        return encoder

    def _make_optimizer(self) -> None:
        self.optimizer = None

    def _sync_mode(self, model: nn.Module) -> None:
        self.mixer.eval()
        self.encoder.eval()

    def generate_mask(self, feats: Tensor, index: Tensor, lam: Tensor, *, size: tuple[int, int]) -> Tensor:
        return self.mixer(feats, index, lam, size)

    def train_step(self, model: nn.Module, x: Tensor, y: Tensor, *, criterion: Any,  # type: ignore[override]
                   generator: torch.Generator | None = None) -> StepOutput:
        """Mix with the frozen Mixer, run the model, return the loss (nothing else trains)."""
        out = self(x, y, model=model, generator=generator)
        self.step += 1
        return StepOutput(loss=criterion(out.logits, out.target), logits=out.logits, target=out.target)
