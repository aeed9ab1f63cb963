"""Metrics: top-k counts, NLL, ECE (against a loop re-implementation), the streaming meter."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import mixkit
from mixkit.metrics import ClassificationMeter, expected_calibration_error, median_of_last, topk_correct


def loop_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    """Guo et al. (2017), written as in their reference code: bins (lo, hi], a loop over bins."""
    conf, pred = probs.double().max(dim=1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    ece = 0.0
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        in_bin = [i for i, c in enumerate(conf.tolist()) if lo < c <= hi]
        if in_bin:
            share = len(in_bin) / len(conf)
            ece += share * abs(float(correct[in_bin].mean()) - float(conf[in_bin].mean()))
    return ece


def random_case(seed: int, n: int = 300, k: int = 10, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * scale
    labels = torch.randint(0, k, (n,), generator=g)
    return logits, labels


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_bins", [15, 10, 1])
def test_ece_matches_loop_reference(seed, n_bins):
    logits, labels = random_case(seed)
    probs = logits.softmax(dim=1)
    expected = loop_ece(probs, labels, n_bins)
    assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(expected, abs=1e-12)


def test_ece_zero_when_calibrated():
    # 10 samples at confidence 0.8 with 8 right, 5 at 0.6 with 3 right, 4 at 1.0 all right.
    probs = torch.tensor([[0.8, 0.2]] * 10 + [[0.4, 0.6]] * 5 + [[1.0, 0.0]] * 4, dtype=torch.float64)
    labels = torch.tensor([0] * 8 + [1] * 2 + [1] * 3 + [0] * 2 + [0] * 4)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_hand_case():
    # Bin (0.8667, 0.9333]: 3 samples, conf 0.9, 1 right -> |1/3 - 0.9| * 3/5;
    # bin (0.6, 0.6667]: 2 samples, conf 0.65, 2 right -> |1 - 0.65| * 2/5.
    probs = torch.tensor([[0.9, 0.1]] * 3 + [[0.35, 0.65]] * 2)
    labels = torch.tensor([0, 1, 1, 1, 1])
    expected = (0.9 - 1 / 3) * 3 / 5 + 0.35 * 2 / 5
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-7)


def test_topk_hand_cases():
    logits = torch.tensor(
        [
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 0: top-1
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 4: top-5 only
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 5: neither
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # label 3: top-3
        ]
    )
    labels = torch.tensor([0, 4, 5, 3])
    assert topk_correct(logits, labels) == {1: 1, 5: 3}
    assert topk_correct(logits, labels, ks=(1, 2, 3, 6)) == {1: 1, 2: 1, 3: 2, 6: 4}


def test_topk_capped_at_num_classes():
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    assert topk_correct(logits, torch.tensor([0, 1])) == {1: 0, 5: 2}
    meter = ClassificationMeter()
    meter.update(logits, torch.tensor([0, 1]))
    assert meter.compute()["top5"] == 100.0


def test_meter_nll_and_accuracy_match_one_shot():
    logits, labels = random_case(0)
    meter = ClassificationMeter(num_classes=10)
    meter.update(logits, labels)
    result = meter.compute()
    assert result["nll"] == pytest.approx(float(F.cross_entropy(logits.double(), labels)), rel=1e-12)
    assert result["nll"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    counts = topk_correct(logits, labels)
    assert result["top1"] == pytest.approx(100 * counts[1] / 300)
    assert result["top5"] == pytest.approx(100 * counts[5] / 300)
    assert result["ece"] == pytest.approx(loop_ece(logits.double().softmax(1), labels, 15), abs=1e-12)
    assert result["count"] == 300


def test_streaming_equals_one_shot():
    logits, labels = random_case(1)
    whole = ClassificationMeter()
    whole.update(logits, labels)
    chunked = ClassificationMeter()
    for chunk in torch.split(torch.arange(300), [1, 2, 97, 0, 200]):
        chunked.update(logits[chunk], labels[chunk])
    a, b = whole.compute(), chunked.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-12, abs=1e-12)


def test_merge_and_state_sum_equal_one_meter():
    logits, labels = random_case(2)
    whole, left, right = ClassificationMeter(), ClassificationMeter(), ClassificationMeter()
    whole.update(logits, labels)
    left.update(logits[:123], labels[:123])
    right.update(logits[123:], labels[123:])
    summed = ClassificationMeter()
    summed.load_state_tensor(left.state_tensor() + right.state_tensor())  # what all_reduce does
    right_before = right.state_tensor()
    left.merge(right)
    for meter in (left, summed):
        for key, value in whole.compute().items():
            assert meter.compute()[key] == pytest.approx(value, rel=1e-12, abs=1e-12)
    assert torch.equal(right.state_tensor(), right_before)


def test_reliability_bins():
    logits, labels = random_case(3)
    meter = ClassificationMeter(n_bins=15)
    meter.update(logits, labels)
    rel = meter.reliability()
    assert all(rel[key].shape == (15,) for key in ("lower", "upper", "confidence", "accuracy", "count"))
    assert int(rel["count"].sum()) == meter.compute()["count"] == 300
    filled = rel["count"] > 0
    assert torch.isnan(rel["confidence"][~filled]).all() and torch.isnan(rel["accuracy"][~filled]).all()
    conf = rel["confidence"][filled]
    assert (conf > rel["lower"][filled]).all() and (conf <= rel["upper"][filled]).all()
    assert ((rel["accuracy"][filled] >= 0) & (rel["accuracy"][filled] <= 1)).all()
    ece = float((rel["count"][filled] * (rel["accuracy"][filled] - conf).abs()).sum()) / 300
    assert ece == pytest.approx(meter.compute()["ece"], abs=1e-12)


def test_empty_meter_and_reset():
    meter = ClassificationMeter()
    result = meter.compute()
    assert result["count"] == 0 and all(math.isnan(result[k]) for k in ("top1", "top5", "nll", "ece"))
    meter.update(*random_case(0, n=8))
    meter.reset()
    assert meter.compute()["count"] == 0


def test_low_precision_logits():
    logits, labels = random_case(4, n=64)
    meter = ClassificationMeter()
    meter.update(logits.to(torch.bfloat16), labels)
    assert meter.compute()["nll"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=2e-2)


def test_median_of_last():
    assert median_of_last([1.0, 50.0, 70.0, 60.0, 80.0], 3) == 70.0
    assert median_of_last([1.0, 50.0, 70.0, 60.0], 2) == 65.0
    assert median_of_last([3.0], 1) == 3.0
    assert math.isnan(median_of_last([1.0, float("nan")], 2))
    with pytest.raises(mixkit.HyperParameterError, match="at least n=5"):
        median_of_last([1.0, 2.0], 5)
    with pytest.raises(mixkit.HyperParameterError, match="n must be a positive integer"):
        median_of_last([1.0, 2.0], 0)


def test_validation_errors():
    logits, labels = random_case(0, n=6, k=4)
    with pytest.raises(mixkit.ShapeError, match="labels have batch size 5 but logits have 6"):
        topk_correct(logits, labels[:5])
    with pytest.raises(mixkit.LabelError, match=r"outside \[0, 4\)"):
        topk_correct(logits, torch.tensor([0, 1, 2, 3, 4, 0]))
    with pytest.raises(mixkit.LabelError, match="outside"):
        ClassificationMeter().update(logits, torch.tensor([0, -1, 2, 3, 0, 0]))
    with pytest.raises(mixkit.DTypeError, match="integer class indices"):
        topk_correct(logits, labels.float())
    with pytest.raises(mixkit.ShapeError, match=r"logits must have shape \(B, K\)"):
        topk_correct(logits[0], labels[:1])
    with pytest.raises(mixkit.ShapeError, match=r"labels must have shape \(B,\)"):
        ClassificationMeter().update(logits, F.one_hot(labels, 4).float())
    with pytest.raises(mixkit.HyperParameterError, match="each k in ks"):
        topk_correct(logits, labels, ks=(1, 0))
    meter = ClassificationMeter(num_classes=4)
    with pytest.raises(mixkit.ShapeError, match="logits have 5 classes but the meter counts 4"):
        meter.update(torch.zeros(2, 5), torch.tensor([0, 1]))


def test_ece_input_errors():
    logits, labels = random_case(0, n=6, k=4)
    with pytest.raises(ValueError, match="pass logits.softmax"):
        expected_calibration_error(logits, labels)
    with pytest.raises(mixkit.HyperParameterError, match="n_bins"):
        expected_calibration_error(logits.softmax(1), labels, n_bins=0)
    assert math.isnan(expected_calibration_error(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)))


def test_state_and_merge_errors():
    with pytest.raises(mixkit.ShapeError, match=r"state must have shape \(49,\)"):
        ClassificationMeter().load_state_tensor(torch.zeros(10))
    with pytest.raises(mixkit.HyperParameterError, match="n_bins=15 and 10"):
        ClassificationMeter().merge(ClassificationMeter(n_bins=10))
    with pytest.raises(mixkit.ShapeError, match="over 3 and 4 classes"):
        ClassificationMeter(3).merge(ClassificationMeter(4))
    with pytest.raises(TypeError, match="ClassificationMeter"):
        ClassificationMeter().merge({})  # type: ignore[arg-type]
