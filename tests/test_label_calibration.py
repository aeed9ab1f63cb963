"""RankMixup and CAMixup: the ranking losses against hand formulas, the per-class switch."""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mixkit
from mixkit.holdout import Holdout
from mixkit.losses import mixup_cross_entropy
from mixkit.methods.label_calibration import (
    CAMixup,
    RankMixup,
    _mixed_rows,
    class_calibration_gap,
    mixup_ndcg,
    mixup_ranking_loss,
)
from mixkit.types import MixTarget
from conftest import TinyNet, gen


def _net(k: int = 4) -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(3, k)


def _batch(b: int = 8, k: int = 4, seed: int = 0):
    g = gen(seed)
    return torch.rand(b, 3, 8, 8, generator=g), torch.arange(b) % k


# ------------------------------------------------------------------------------- RankMixup
def test_mrl_matches_the_hand_formula():
    clean = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, 1.0, 0.0]])
    mixed = torch.tensor([[1.5, 0.0, 0.0], [-2.0, 0.0, 0.5], [4.0, 0.0, 0.0]])
    mask = torch.tensor([True, True, False])
    margin = 1.0
    # by hand: row 0: max(0, 1.5 - 2 + 1) = 0.5; row 1: max(0, 0.5 - 3 + 1) = 0; row 2 masked
    expected = (0.5 + 0.0 + 0.0) / 3
    assert math.isclose(float(mixup_ranking_loss(clean, mixed, mask, margin=margin)), expected, rel_tol=1e-6)


def test_mrl_is_zero_when_the_mixed_max_is_below_clean_minus_margin():
    clean = torch.tensor([[5.0, 0.0], [0.0, 6.0]])
    mixed = torch.tensor([[2.9, 1.0], [3.9, 0.0]])  # both max logits below clean max - 2
    assert float(mixup_ranking_loss(clean, mixed, torch.ones(2, dtype=torch.bool), margin=2.0)) == 0.0
    assert float(mixup_ranking_loss(clean, mixed, torch.ones(2, dtype=torch.bool), margin=2.2)) > 0.0


def test_same_class_pairs_and_unmixed_rows_are_masked():
    y = torch.tensor([0, 0, 1, 2])
    target = MixTarget.pair(y, torch.tensor([1, 0, 3, 2]), torch.tensor([0.6, 1.0, 0.7, 0.4]))
    # row 0 pairs with the same class, row 1 has lam = 1, rows 2 and 3 mix two classes
    assert _mixed_rows(target, y, 3).tolist() == [False, False, True, True]
    net, (x, _) = _net(4), _batch()
    policy = RankMixup(num_classes=4, margin=100.0)  # a huge margin: every mixed row would count
    out = policy.train_step(net, x, torch.zeros(8, dtype=torch.long), criterion=mixup_cross_entropy, generator=gen(1))
    assert out.logs["rank"] == 0.0  # one class only: every pair is masked


def test_mrl_and_ndcg_gradcheck():
    g = gen(3)
    clean = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    mixed = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: mixup_ranking_loss(a, b, mask, margin=2.0), (clean, mixed))
    mixed3 = torch.randn(3, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    rel = torch.tensor([[0.9, 0.6, 0.7, 0.55], [0.5, 0.8, 0.95, 0.7], [0.7, 0.7, 0.6, 0.9]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: mixup_ndcg(a, b, rel), (clean, mixed3))


def _ndcg_by_hand(clean, mixed, rel):
    out = []
    for b in range(clean.shape[0]):
        items = sorted(((float(rel[m, b]), float(torch.softmax(mixed[m, b], 0).max())) for m in range(mixed.shape[0])),
                       key=lambda t: -t[0])
        gains = [float(torch.softmax(clean[b], 0).max())] + [g for _, g in items]
        rels = [1.0] + [r for r, _ in items]
        dcg = sum(gk / math.log2(k + 2) for k, gk in enumerate(gains))
        idcg = sum(rk / math.log2(k + 2) for k, rk in enumerate(rels))
        out.append(dcg / idcg if idcg > dcg else idcg / dcg)
    return torch.tensor(out)


def test_ndcg_matches_the_hand_formula_lies_in_unit_interval_and_is_one_when_perfect():
    g = gen(4)
    clean, mixed = torch.randn(6, 5, generator=g) * 3, torch.randn(3, 6, 5, generator=g) * 3
    rel = 0.5 + 0.5 * torch.rand(3, 6, generator=g)
    ndcg = mixup_ndcg(clean, mixed, rel)
    torch.testing.assert_close(ndcg, _ndcg_by_hand(clean, mixed, rel))
    assert ((ndcg > 0) & (ndcg <= 1)).all()
    # perfect: clean confidence 1, each mixed confidence equal to its relevance
    r = torch.tensor([[0.9], [0.6], [0.75]])
    perfect_mixed = torch.stack([torch.log(r), torch.log(1 - r)], dim=2)  # softmax max = r
    perfect = mixup_ndcg(torch.tensor([[60.0, 0.0]]), perfect_mixed, r)
    torch.testing.assert_close(perfect, torch.ones(1))


def test_rankmixup_reduces_to_clean_cross_entropy():
    net, (x, y) = _net(4), _batch()
    ce = F.cross_entropy(net(x), y)
    for policy in (RankMixup(weight=0.0), RankMixup(p=0.0), RankMixup(method="cutmix", p=0.0)):
        out = policy.train_step(net, x, y, criterion=mixup_cross_entropy, generator=gen(2))
        torch.testing.assert_close(out.loss, ce)
        assert torch.equal(out.target.lam, torch.ones(8))


def test_rankmixup_loss_is_clean_ce_plus_weighted_term_and_ndcg_uses_num_mixed_forwards():
    net, (x, y) = _net(4), _batch()
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))
    out = RankMixup(ranking="mndcg", num_mixed=3, weight=0.5).train_step(
        net, x, y, criterion=mixup_cross_entropy, generator=gen(5))
    assert len(calls) == 4  # one clean forward and three mixed ones
    torch.testing.assert_close(out.loss, torch.tensor(out.logs["ce"] + 0.5 * out.logs["rank"]))
    assert 0.0 <= out.logs["rank"] <= 1.0


@pytest.mark.parametrize("ranking", ["mrl", "mndcg"])
@pytest.mark.parametrize("method", ["cutmix", "manifold_mixup"])
def test_rankmixup_combines_with_other_sample_policies(method, ranking):
    net, (x, y) = _net(4), _batch()
    args = {"layers": ("input", "layer1")} if method == "manifold_mixup" else {}
    # per-sample boxes: with one box per batch an 8x8 image may get an empty box (lambda near 1)
    policy = RankMixup(method=method, method_args=args, ranking=ranking, margin=50.0, num_classes=4, mode="elem")
    out = policy.train_step(net, x, y, criterion=mixup_cross_entropy, generator=gen(6))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.logs["rank"] > 0
    assert all(p.grad is not None for p in net.parameters())


def test_rankmixup_state_round_trips():
    policy = RankMixup(ranking="mndcg", num_mixed=2)
    buf = io.BytesIO()
    torch.save(policy.state_dict(), buf)
    buf.seek(0)
    again = mixkit.create("rankmixup", **policy.hparams)
    again.load_state_dict(torch.load(buf, weights_only=False))
    assert again.hparams == policy.hparams and policy.state_dict() == {"method": {}, "policy": {}}
    with pytest.raises(ValueError):
        RankMixup(ranking="ndcg")


# -------------------------------------------------------------------------------- CAMixup
def _stub_holdout(logits: torch.Tensor, labels: torch.Tensor) -> Holdout:
    """Held-out 'images' that a Flatten model turns into exactly these logits."""
    return Holdout(logits.view(*logits.shape, 1, 1), labels)


def test_calibration_gap_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [3.0, 0.0, 0.0]])
    gap = class_calibration_gap(logits, torch.tensor([0, 0, 1]), 3)
    p = torch.softmax(logits.double(), 1).amax(1)
    torch.testing.assert_close(gap[:2], torch.tensor([0.5 - (p[0] + p[1]) / 2, 0.0 - p[2]], dtype=torch.float64))
    assert math.isnan(float(gap[2]))


def test_camixup_alphas_switch_with_the_sign_of_the_gap():
    cam = CAMixup(method_args={"alpha": 0.4})
    # class 0: right and not sure (under-confident); class 1: wrong and sure; class 2: absent
    logits = torch.tensor([[0.3, 0.0, 0.0], [0.4, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    cam.attach_holdout(_stub_holdout(logits, torch.tensor([0, 0, 1, 1])))
    model = torch.nn.Flatten()
    logs = cam.epoch_end(model)
    assert cam.class_alpha.tolist() == [0.0, 0.4, 0.4] and logs["camixup_mixing_classes"] == 2.0
    assert model.training  # the eval-mode measurement restores the mode
    # class 0 turns over-confident, class 1 under-confident, class 2 stays unmeasured
    cam.attach_holdout(_stub_holdout(torch.tensor([[0.0, 4.0, 0.0], [0.0, 2.0, 0.0]]), torch.tensor([0, 1])))
    cam.class_alpha[2] = 0.0
    cam.epoch_end(model)
    assert cam.class_alpha.tolist() == [0.4, 0.0, 0.0]


def test_camixup_is_plain_mixup_until_measured_and_refuses_other_methods():
    x, y = _batch(b=6)
    a = CAMixup(num_classes=4)(x, y, generator=gen(3))
    b = mixkit.create("mixup", num_classes=4)(x, y, generator=gen(3))
    assert torch.equal(a.x, b.x) and torch.equal(a.target.weight, b.target.weight)
    for method in ("cutmix", "manifold_mixup"):
        with pytest.raises(mixkit.HyperParameterError, match="wraps only 'mixup'"):
            CAMixup(method=method)
    with pytest.raises(mixkit.HyperParameterError, match="holdout_fraction"):
        CAMixup(holdout_fraction=0.0)


def test_camixup_per_class_lambdas():
    cam = CAMixup()
    cam.load_state_dict({"method": {}, "policy": {"class_alpha": torch.tensor([0.0, 1.0, 0.3])}})
    b = 3000
    x, y = torch.rand(b, 2, 1, 1, generator=gen(0)), torch.arange(b) % 3
    out = cam(x, y, generator=gen(1))
    lam = out.params.lam
    assert (lam >= 0.5).all() and torch.equal(out.params.index, torch.arange(b - 1, -1, -1))
    off = y == 0
    assert (lam[off] == 1).all() and torch.equal(out.x[off], x[off])  # class 0 is not mixed
    # E[max(U, 1 - U)] = 3/4 for alpha 1 (uniform); alpha 0.3 sits closer to 1
    assert abs(float(lam[y == 1].mean()) - 0.75) < 0.02 and float(lam[y == 2].mean()) > 0.8
    w = lam.float().view(-1, 1, 1, 1)
    torch.testing.assert_close(out.x, w * x + (1 - w) * x.flip(0))
    torch.testing.assert_close(out.target.soft(3), lam.float().unsqueeze(1) * F.one_hot(y, 3) +
                               (1 - lam.float()).unsqueeze(1) * F.one_hot(y.flip(0), 3))


def test_camixup_train_step_reduces_to_cross_entropy_when_every_class_is_off():
    net, (x, y) = _net(4), _batch()
    cam = CAMixup(num_classes=4)
    cam.load_policy_state({"class_alpha": torch.zeros(4)})
    out = cam.train_step(net, x, y, criterion=mixup_cross_entropy, generator=gen(2))
    torch.testing.assert_close(out.loss, F.cross_entropy(net(x), y))
    cam.load_policy_state({"class_alpha": torch.full((4,), 1.0)})
    out = cam.train_step(net, x, y, criterion=mixup_cross_entropy, generator=gen(2))
    assert (out.target.lam >= 0.5).all() and (out.target.lam < 1).any()


def test_camixup_state_round_trips_through_torch_save():
    cam = CAMixup(num_classes=3)
    assert cam.state_dict()["policy"] == {"class_alpha": None}
    cam.load_policy_state({"class_alpha": torch.tensor([0.0, 1.0, 1.0])})
    buf = io.BytesIO()
    torch.save(cam.state_dict(), buf)
    buf.seek(0)
    again = CAMixup(num_classes=3)
    again.load_state_dict(torch.load(buf, weights_only=False))
    assert torch.equal(again.class_alpha, cam.class_alpha)
    x, y = _batch(b=6, k=3)
    assert torch.equal(again(x, y, generator=gen(0)).x, cam(x, y, generator=gen(0)).x)
    with pytest.raises(ValueError, match="unknown keys"):
        again.load_policy_state({"alphas": None})


def test_camixup_trains_in_the_engine_and_resumes_exactly(tmp_path):
    from mixkit.train import engine
    from test_train import tiny_config, tiny_data, tiny_model

    data = tiny_data()
    a = tiny_config(tmp_path / "a", method="mixup", label_policy="camixup",
                    label_policy_args={"holdout_fraction": 0.25}, epochs=3)
    full = engine.train(a, data=data, model=tiny_model())
    assert all("camixup_mixing_classes" in e["method"] for e in full["epochs"])
    b = dataclasses.replace(a, out=str(tmp_path / "b"))

    def kill(epoch, step):
        if epoch == 1 and step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.train(b, data=data, model=tiny_model(), hooks={"batch_end": kill})
    engine.train(b, resume=True, data=data, model=tiny_model())
    wa = torch.load(Path(a.out) / "checkpoint.pt", weights_only=False)
    wb = torch.load(Path(b.out) / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])
    assert torch.equal(wa["method"]["policy"]["class_alpha"], wb["method"]["policy"]["class_alpha"])
