"""RecursiveMix: history bookkeeping, area-weighted recursive targets, RoI consistency loss."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyNet, gen

import mixkit
from mixkit.methods.recursivemix import (
    RecursiveMix,
    RecursiveParams,
    extend_target,
    history_consistency,
    paste_history,
    roi_average,
)

K = 5


def data(b=4, size=16, seed=0, c=3):
    g = gen(seed)
    return torch.rand(b, c, size, size, generator=g), torch.randint(0, K, (b,), generator=g)


def area(boxes, size):
    sides = (boxes[:, 2:] - boxes[:, :2]).clamp_min(0)
    return sides.prod(dim=1).double() / size**2


# ------------------------------------------------------------------------------- mixing
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_history_label_weight_is_the_box_area_and_pixels_are_the_resized_history(mode):
    m = RecursiveMix(mode=mode, alpha=1.0, num_classes=K)
    x1, y1 = data(seed=1)
    first = m(x1, y1, generator=gen(1))
    x2, y2 = data(seed=2)
    out = m(x2, y2, generator=gen(2))
    a = area(out.params.boxes, 16).expand(4)
    torch.testing.assert_close(out.target.weight[:, 1:].sum(dim=1).double(), a, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.params.lam, 1 - a)
    torch.testing.assert_close(out.target.weight[:, 0].double(), 1 - a, atol=1e-6, rtol=0)
    boxes = out.params.boxes.expand(4, 4)
    for b in range(4):  # inside: the previous output, resized as F.interpolate does; outside: x2
        t, l, bo, r = boxes[b].tolist()
        inside = torch.zeros(16, 16, dtype=torch.bool)
        inside[t:bo, l:r] = True
        assert torch.equal(out.x[b][:, ~inside], x2[b][:, ~inside])
        if bo > t and r > l:
            ref = F.interpolate(first.x[b : b + 1], size=(bo - t, r - l), mode="nearest")[0]
            assert torch.equal(out.x[b, :, t:bo, l:r], ref)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_per_sample_paste_equals_interpolate(interpolation):
    x, _ = data(b=3, size=12, seed=3)
    hist, _ = data(b=3, size=12, seed=4)
    box = torch.tensor([[2, 1, 9, 11]])
    one = paste_history(x, hist, box, interpolation)
    each = paste_history(x, hist, box.expand(3, 4), interpolation)
    if interpolation == "nearest":
        assert torch.equal(one, each)
    else:
        torch.testing.assert_close(one, each, atol=1e-6, rtol=0)


def test_first_call_uses_the_batch_as_its_own_history():
    x, y = data()
    out = RecursiveMix(num_classes=K)(x, y, generator=gen(5))
    assert (out.params.lam < 1).all() and out.params.history is None
    torch.testing.assert_close(out.target.soft(), F.one_hot(y, K).float())
    assert torch.equal(out.target.index, torch.arange(4).unsqueeze(1).expand(4, 2))


def test_area_share_statistics_match_the_reference_rule():
    """E[realised area] for r ~ U(0, alpha), side floor(S sqrt(r)), uniform centre, clipped."""
    s, alpha, n = 32, 0.5, 20000
    x = torch.zeros(1, 1, s, s).expand(n, 1, s, s)
    got = float((1 - RecursiveMix(mode="elem", alpha=alpha).sample(x, generator=gen(6)).lam).mean())

    def mean_len(side):  # E over the centre c of the clipped length
        c = torch.arange(s)
        return float(((c + side // 2).clamp(max=s) - (c - side // 2).clamp(min=0)).double().mean())

    expected = 0.0
    for k in range(s + 1):  # side = k for r in [k^2/s^2, (k+1)^2/s^2) within [0, alpha)
        lo, hi = min(k * k / s**2, alpha), min((k + 1) ** 2 / s**2, alpha)
        expected += (hi - lo) / alpha * (mean_len(k) / s) ** 2
    assert abs(got - expected) < 0.004


# ----------------------------------------------------------------------------- targets
def test_two_step_bookkeeping_by_hand():
    y0, y1 = torch.tensor([0, 1]), torch.tensor([2, 3])
    hist = extend_target(y0, torch.tensor([0.75, 0.5]), None, K)  # self history: y0 only
    torch.testing.assert_close(hist.soft(), F.one_hot(y0, K).float())
    t = extend_target(y1, torch.tensor([0.9, 0.6]), hist, K)
    expected = torch.tensor([[0.1, 0, 0.9, 0, 0], [0, 0.4, 0, 0.6, 0]])
    torch.testing.assert_close(t.soft(), expected)
    assert torch.equal(t.labels[:2], y1) and torch.equal(t.index[:, 0], torch.arange(2))
    t2 = extend_target(torch.tensor([4, 4]), torch.tensor([0.5, 0.8]), t, K)
    torch.testing.assert_close(t2.soft(), torch.tensor([[0.5], [0.8]]) * F.one_hot(torch.tensor([4, 4]), K)
                               + torch.tensor([[0.5], [0.2]]) * expected)


def test_recursive_targets_through_calls_match_dense_recursion():
    m = RecursiveMix(alpha=1.0, mode="elem", num_classes=K)
    dense = None
    for step in range(6):
        x, y = data(seed=10 + step)
        out = m(x, y, generator=gen(step))
        lam = out.params.lam.float().unsqueeze(1)
        own = F.one_hot(y, K).float()
        dense = own if dense is None else lam * own + (1 - lam) * dense
        torch.testing.assert_close(out.target.soft(), dense)
        torch.testing.assert_close(out.target.weight.sum(dim=1), torch.ones(4))
    assert out.target.k > 2


def test_soft_labels_and_source_cap():
    m = RecursiveMix(alpha=1.0, num_classes=K)
    m.max_sources = 3
    dense = None
    for step in range(8):
        x, _ = data(seed=step)
        y = torch.softmax(torch.randn(4, K, generator=gen(50 + step)), dim=1)
        out = m(x, y, generator=gen(step))
        lam = out.params.lam.float().unsqueeze(1)
        dense = y if dense is None else lam * y + (1 - lam) * dense
        assert out.target.k <= 3 and out.target.labels.shape[0] <= 12
        torch.testing.assert_close(out.target.weight.sum(dim=1), torch.ones(4))
    folded = (out.target.soft() - dense).abs().max()
    assert folded <= 2 * float(out.target.weight[:, -1].max())  # the error is within the folded column


def test_p_zero_drops_the_history_sources():
    m = RecursiveMix(p=0.0, num_classes=K)
    for seed in range(2):
        x, y = data(seed=seed)
        out = m(x, y, generator=gen(seed))
        assert torch.equal(out.x, x) and out.target.k == 1 and torch.equal(out.target.labels, y)


# ------------------------------------------------------------------------------ history
def test_state_dict_round_trip_is_bit_exact_through_torch_save():
    m = RecursiveMix(mode="elem", num_classes=K)
    for seed in range(3):
        m(*data(seed=seed), generator=gen(seed))
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = RecursiveMix(mode="elem", num_classes=K)
    m2.load_state_dict(torch.load(buf, weights_only=True))
    for k, v in m.state_dict().items():
        assert (v is None and m2.state_dict()[k] is None) or torch.equal(v, m2.state_dict()[k])
    x, y = data(seed=9)
    a, b = m(x, y, generator=gen(9)), m2(x, y, generator=gen(9))
    assert torch.equal(a.x, b.x) and torch.equal(a.target.weight, b.target.weight)
    assert torch.equal(a.target.index, b.target.index) and torch.equal(a.target.labels, b.target.labels)
    m2.load_state_dict({})
    assert m2.state_dict() == {}
    with pytest.raises(ValueError, match="keys"):
        m2.load_state_dict({"images": x})


def test_history_resets_on_shape_or_growth_and_is_sliced_for_a_smaller_batch():
    m = RecursiveMix(num_classes=K)
    first = m(*data(b=4, size=16), generator=gen(0))
    x, y = data(b=2, size=16, seed=1)
    small = m(x, y, generator=gen(1))  # the first two rows of the history, as old[:bs]
    t, l, bo, r = small.params.boxes[0].tolist()
    assert torch.equal(small.params.history, first.x[:2])
    assert torch.equal(small.x[:, :, t:bo, l:r], F.interpolate(first.x[:2], size=(bo - t, r - l), mode="nearest"))
    for b, size in ((2, 8), (3, 8)):  # a new image size, then a larger batch: start anew
        x, y = data(b=b, size=size, seed=b)
        out = m(x, y, generator=gen(b))
        assert out.params.history is None and (out.target.index < b).all()
    x, y = data(b=3, size=8)
    assert m(x, torch.rand(3, K), generator=gen(0)).params.history is None  # label kind changed


def test_no_mutation_of_inputs_or_of_the_stored_history():
    m = RecursiveMix(mode="elem", num_classes=K)
    m(*data(seed=0), generator=gen(0))
    before = {k: v.clone() for k, v in m.state_dict().items() if v is not None}
    kept = m.state_dict()
    x, y = data(seed=1)
    x0, y0 = x.clone(), y.clone()
    out = m(x, y, generator=gen(1))
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert all(torch.equal(kept[k], v) for k, v in before.items())  # old state untouched
    now = {k: v.clone() for k, v in m.state_dict().items() if v is not None}
    out.x.zero_()
    out.target.weight.zero_()
    assert all(torch.equal(m.state_dict()[k], v) for k, v in now.items())  # caller edits don't leak


def test_apply_replays_the_history_and_refuses_other_shapes():
    m = RecursiveMix(mode="elem")
    m(*data(seed=0), generator=gen(0))
    x, y = data(seed=1)
    out = m(x, y, generator=gen(1))
    assert isinstance(out.params, RecursiveParams) and torch.equal(m.apply(x, out.params), out.x)
    with pytest.raises(mixkit.ShapeError):
        m.apply(torch.rand(4, 6, 16, 16), out.params)


# ------------------------------------------------------------------------ RoI and loss
def _bilinear(f, y, x):  # torchvision roi_align's rule, written out
    h, w = f.shape[1:]
    if y < -1 or y > h or x < -1 or x > w:
        return torch.zeros(f.shape[0], dtype=f.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * f[:, y0, x0] + (1 - ly) * lx * f[:, y0, x1]
            + ly * (1 - lx) * f[:, y1, x0] + ly * lx * f[:, y1, x1])


def roi_align_loop(feat, box, image_size):
    """roi_align(output_size=1, sampling_ratio=-1, aligned=True) of one box, by loops."""
    h, w = feat.shape[1:]
    t, l, b, r = (float(v) for v in box)
    sy, sx = h / image_size[0], w / image_size[1]
    rh, rw = (b - t) * sy, (r - l) * sx
    gh, gw = math.ceil(rh), math.ceil(rw)
    acc = torch.zeros(feat.shape[0], dtype=feat.dtype)
    for iy in range(gh):
        for ix in range(gw):
            acc = acc + _bilinear(feat, t * sy - 0.5 + (iy + 0.5) * rh / gh, l * sx - 0.5 + (ix + 0.5) * rw / gw)
    return acc / max(gh * gw, 1)


def test_roi_average_matches_roi_align_formula():
    feats = torch.randn(5, 3, 7, 9, generator=gen(0), dtype=torch.float64)
    boxes = torch.tensor([[0, 0, 28, 36], [3, 5, 17, 30], [10, 2, 11, 3], [27, 30, 28, 36], [4, 4, 4, 9]])
    got = roi_average(feats, boxes, (28, 36))
    ref = torch.stack([roi_align_loop(feats[b], boxes[b], (28, 36)) for b in range(5)])
    torch.testing.assert_close(got, ref)
    one = roi_average(feats, boxes[1:2], (28, 36))  # one box for the batch
    torch.testing.assert_close(one, torch.stack([roi_align_loop(f, boxes[1], (28, 36)) for f in feats]))


def test_gradcheck_roi_average_and_consistency():
    feats = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[1, 2, 7, 8], [0, 0, 5, 3]])
    assert torch.autograd.gradcheck(lambda f: roi_average(f, boxes, (8, 8)), (feats,))
    roi = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    hist, w = torch.randn(3, 4, dtype=torch.float64), torch.tensor([0.1, 0.0, 0.3], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda r: history_consistency(r, hist, w), (roi,))
    p = torch.softmax(hist, 1)
    hand = (w * (p * (p.log() - torch.log_softmax(roi, 1))).sum(1)).mean()
    torch.testing.assert_close(history_consistency(roi, hist, w), hand)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_train_step_consistency_loss_equals_a_hand_computation(mode):
    torch.manual_seed(0)
    model = TinyNet(3, K)
    m = RecursiveMix(mode=mode, omega=0.5, feature_layer="layer2", num_classes=K)
    crit = mixkit.mixup_cross_entropy
    first = m.train_step(model, *data(seed=0), criterion=crit, generator=gen(0))
    assert "consistency_loss" not in first.logs  # no logits yet: mixing only, as the reference's t = 0
    state = m.state_dict()
    torch.testing.assert_close(state["logits"], first.logits.detach())
    x, y = data(seed=1)
    step = m.train_step(model, x, y, criterion=crit, generator=gen(1))
    replay = RecursiveMix(mode=mode, num_classes=K)
    replay.load_state_dict(state)
    out = replay(x, y, generator=gen(1))  # the same draws and history
    feats = model.layer2(model.layer1(model.stem(out.x)))
    pooled = torch.stack([roi_align_loop(feats[b], out.params.boxes.expand(4, 4)[b], (16, 16)) for b in range(4)])
    q = torch.log_softmax(model.head[2](pooled), 1)
    p = torch.softmax(state["logits"], 1)
    kl = (p * (p.log() - q)).sum(1)
    hand_cons = (0.5 * (1 - out.params.lam.float()) * kl).mean()
    hand = crit(model(out.x), out.target) + hand_cons
    torch.testing.assert_close(step.loss, hand)
    assert abs(step.logs["consistency_loss"] - float(hand_cons.detach())) < 1e-5
    step.loss.backward()
    assert model.stem.weight.grad is not None


def test_train_step_without_feature_layer_is_the_mixed_loss_and_errors():
    torch.manual_seed(0)
    model, m = TinyNet(3, K), RecursiveMix(num_classes=K)
    crit = mixkit.mixup_cross_entropy
    for seed in range(2):
        step = m.train_step(model, *data(seed=seed), criterion=crit, generator=gen(seed))
    assert step.logs == {} and m.state_dict()["logits"] is not None
    with pytest.raises(mixkit.HyperParameterError):
        RecursiveMix(head="fc")
    with pytest.raises(mixkit.HyperParameterError):
        RecursiveMix(alpha=0.0)
    with pytest.raises(mixkit.ModelError):
        RecursiveMix(feature_layer="nope").train_step(model, *data(), criterion=crit)


def test_interrupted_training_run_resumes_exactly(tmp_path):
    """The history (images, target, logits) rides in the checkpoint across the epoch boundary."""
    import dataclasses

    from test_train import tiny_config, tiny_data, tiny_model

    from mixkit.train import train

    data = tiny_data()
    args = {"mode": "elem", "feature_layer": "layer2", "head": "head.2", "epoch_reset": False}
    a = tiny_config(tmp_path / "a", method="recursivemix", epochs=2, method_args=args)
    train(a, data=data, model=tiny_model())
    b = dataclasses.replace(a, out=str(tmp_path / "b"))

    def kill(epoch, step):
        if epoch == 1 and step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(b, data=data, model=tiny_model(), hooks={"batch_end": kill})
    saved = torch.load(Path(b.out) / "checkpoint.pt", weights_only=False)
    assert saved["epoch"] == 1 and saved["method"]["logits"] is not None
    train(b, resume=True, data=data, model=tiny_model())
    wa = torch.load(Path(a.out) / "checkpoint.pt", weights_only=False)
    wb = torch.load(Path(b.out) / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])
    assert all(torch.equal(wa["method"][k], wb["method"][k]) for k in wa["method"])


def test_extend_target_keeps_a_learned_lambdas_gradient():
    lam = torch.tensor([0.75, 0.5], requires_grad=True)
    t = extend_target(torch.tensor([1, 2]), lam, None, 4)
    assert t.weight.requires_grad
    (t.weight[:, 0] * torch.tensor([1.0, 2.0])).sum().backward()  # column 0: the sample itself, weight lam
    assert torch.equal(lam.grad, torch.tensor([1.0, 2.0]))
