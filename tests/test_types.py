"""The target type."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mixkit
from mixkit.types import MixTarget


def test_pair_soft_matches_one_hot_formula():
    y = torch.tensor([2, 0, 1])
    t = MixTarget.pair(y, torch.tensor([1, 2, 0]), torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64), 3)
    ref = torch.tensor([[0.75, 0, 0.25], [0.5, 0.5, 0], [0, 1.0, 0]])
    torch.testing.assert_close(t.soft(), ref)
    assert t.k == 2 and t.index[:, 0].tolist() == [0, 1, 2] and t.lam.dtype == torch.float32


def test_k_source_target_and_smoothing():
    y = torch.tensor([0, 1, 2, 3])
    index = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 0], [3, 0, 1]])
    weight = torch.tensor([[0.5, 0.3, 0.2]] * 4)
    t = MixTarget(y, index, weight, 4)
    soft = t.soft()
    assert soft[0].tolist() == pytest.approx([0.5, 0.3, 0.2, 0.0])
    s = 0.1
    smoothed = t.soft(smoothing=s)
    torch.testing.assert_close(smoothed, soft * (1 - s) + s / 4)
    expected = sum(weight[:, k : k + 1] * (F.one_hot(y[index[:, k]], 4) * (1 - s) + s / 4) for k in range(3))
    torch.testing.assert_close(smoothed, expected)


def test_soft_needs_num_classes_for_integer_labels():
    t = MixTarget.unmixed(torch.tensor([0, 1]))
    with pytest.raises(mixkit.LabelError, match="num_classes"):
        t.soft()
    assert t.soft(num_classes=3).shape == (2, 3)
    soft_t = MixTarget.unmixed(torch.rand(2, 5))
    with pytest.raises(mixkit.LabelError, match="disagrees"):
        soft_t.soft(num_classes=4)


def test_weights_float64_for_float64_soft_labels():
    t = MixTarget.unmixed(torch.rand(2, 3, dtype=torch.float64))
    assert t.weight.dtype == torch.float64 and t.soft().dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int16])
def test_narrow_integer_labels_work(dtype):
    y = torch.tensor([0, 2, 1], dtype=dtype)
    out = mixkit.MixUp(num_classes=3)(torch.rand(3, 2), y, generator=torch.Generator().manual_seed(0))
    assert out.target.soft().shape == (3, 3)
    assert mixkit.mixup_cross_entropy(torch.randn(3, 3), out.target).isfinite()


def test_out_of_range_labels_in_a_target():
    t = MixTarget.unmixed(torch.tensor([0, 1, 7]))
    with pytest.raises(mixkit.LabelError, match="outside"):
        t.soft(num_classes=4)
    with pytest.raises(mixkit.LabelError, match="outside"):
        mixkit.mixup_cross_entropy(torch.randn(3, 4), t)
