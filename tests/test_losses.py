"""Mixup losses: equal to soft-target CE/BCE, reduce to plain CE/BCE when nothing is mixed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mixkit
from mixkit.types import MixTarget
from conftest import gen

K = 4


def soft_ce(logits, dense):
    return -(dense * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def mixed_target(y, seed=0):
    x = torch.rand(y.shape[0], 1, 4, 4)
    return mixkit.MixUp(mode="elem", num_classes=K)(x, y, generator=gen(seed)).target


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixup_ce_equals_soft_target_ce(smoothing):
    y = torch.tensor([0, 3, 1, 1, 2])
    logits = torch.randn(5, K, generator=gen(1))
    t = mixed_target(y)
    torch.testing.assert_close(mixkit.mixup_cross_entropy(logits, t, smoothing=smoothing), soft_ce(logits, t.soft(smoothing=smoothing)))


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_mixup_ce_soft_labels(smoothing):
    y = torch.softmax(torch.randn(5, K, generator=gen(2)), dim=1)
    logits = torch.randn(5, K, generator=gen(3))
    t = mixkit.MixUp(mode="elem")(torch.rand(5, 2), y, generator=gen(4)).target
    torch.testing.assert_close(mixkit.mixup_cross_entropy(logits, t, smoothing=smoothing), soft_ce(logits, t.soft(smoothing=smoothing)))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixup_ce_reduces_to_plain_ce(smoothing):
    y = torch.tensor([0, 3, 1, 2])
    logits = torch.randn(4, K, generator=gen(5))
    ref = F.cross_entropy(logits, y, label_smoothing=smoothing)
    torch.testing.assert_close(mixkit.mixup_cross_entropy(logits, y, smoothing=smoothing), ref)
    torch.testing.assert_close(mixkit.mixup_cross_entropy(logits, MixTarget.unmixed(y, K), smoothing=smoothing), ref)
    unmixed = mixkit.MixUp(p=0.0)(torch.rand(4, 2), y).target  # lambda = 1
    torch.testing.assert_close(mixkit.mixup_cross_entropy(logits, unmixed, smoothing=smoothing), ref)


def test_mixup_ce_reductions():
    y = torch.tensor([0, 3, 1])
    logits = torch.randn(3, K, generator=gen(6))
    t = mixed_target(y)
    per = mixkit.mixup_cross_entropy(logits, t, reduction="none")
    assert per.shape == (3,)
    torch.testing.assert_close(mixkit.mixup_cross_entropy(logits, t, reduction="sum"), per.sum())


def test_losses_gradcheck():
    y = torch.tensor([0, 3, 1])
    t = mixed_target(y)
    t64 = MixTarget(t.labels, t.index, t.weight.double(), K)
    logits = torch.randn(3, K, dtype=torch.float64, generator=gen(7), requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: mixkit.mixup_cross_entropy(z, t64, smoothing=0.1), (logits,))
    assert torch.autograd.gradcheck(lambda z: mixkit.mixup_binary_cross_entropy(z, t64, smoothing=0.1), (logits,))


def test_bce_reduces_to_plain_bce_and_matches_dense():
    y = torch.tensor([0, 3, 1, 2])
    logits = torch.randn(4, K, generator=gen(8))
    ref = F.binary_cross_entropy_with_logits(logits, F.one_hot(y, K).float())
    torch.testing.assert_close(mixkit.mixup_binary_cross_entropy(logits, y), ref)
    t = mixed_target(y)
    dense = t.soft(smoothing=0.1)
    torch.testing.assert_close(mixkit.mixup_binary_cross_entropy(logits, t, smoothing=0.1),
                               F.binary_cross_entropy_with_logits(logits, dense))
    thr = mixkit.mixup_binary_cross_entropy(logits, t, target_threshold=0.2)
    torch.testing.assert_close(thr, F.binary_cross_entropy_with_logits(logits, (t.soft() > 0.2).float()))
    assert mixkit.mixup_binary_cross_entropy(logits, t, reduction="none").shape == (4,)


def test_bfloat16_logits():
    y = torch.tensor([0, 3, 1])
    logits = torch.randn(3, K, generator=gen(9))
    loss = mixkit.mixup_cross_entropy(logits.bfloat16(), y)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(logits.bfloat16().float(), y))


def test_loss_errors():
    logits = torch.randn(3, K)
    with pytest.raises(mixkit.LabelError, match="outside"):
        mixkit.mixup_cross_entropy(logits, torch.tensor([0, 1, K]))
    with pytest.raises(mixkit.ShapeError, match="batch size"):
        mixkit.mixup_cross_entropy(logits, torch.tensor([0, 1]))
    with pytest.raises(mixkit.ShapeError, match="logits"):
        mixkit.mixup_cross_entropy(logits[0], torch.tensor([0]))
    with pytest.raises(mixkit.LabelError, match="classes"):
        mixkit.mixup_cross_entropy(logits, mixed_target(torch.tensor([0, 1, 2])).__class__(
            torch.rand(3, K + 1), torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1)))
    with pytest.raises(mixkit.HyperParameterError, match="reduction"):
        mixkit.mixup_cross_entropy(logits, torch.tensor([0, 1, 2]), reduction="avg")
