"""AdaMixup and MetaMixUp: learned lambda, own sub-networks and optimisers, exact state."""

from __future__ import annotations

import copy
import dataclasses
import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixkit
from mixkit.functional.blend import blend
from mixkit.functional.learned_lambda import (
    intrusion_loss,
    lerp_blend,
    policy_region,
    region_lambda,
    truncated_normal,
)
from mixkit.holdout import Holdout
from mixkit.losses import mixup_cross_entropy
from mixkit.methods.label_learned_meta import meta_lambda_gradient
from mixkit.types import MixTarget
from conftest import TinyNet, gen

K = 4


def batch(b=6, seed=0, size=8):
    g = gen(seed)
    return torch.rand(b, 3, size, size, generator=g), torch.randint(0, K, (b,), generator=g)


def net(seed=0):
    torch.manual_seed(seed)
    return TinyNet(3, K)


def bn_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, K))


def holdout(n=8, seed=5):
    x, y = batch(n, seed)
    return Holdout(x, y)


def meta(**kw):
    m = mixkit.create("metamixup", num_classes=K, **kw)
    m.attach_holdout(holdout())
    return m


def train(policy, model, steps, seed=0, lr=0.1):
    """A few engine-like steps: policy step, backward, model SGD step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g, outs = gen(seed), []
    for i in range(steps):
        x, y = batch(seed=100 + i)
        out = policy.train_step(model, x, y, criterion=mixup_cross_entropy, generator=g)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        outs.append(out)
    return outs


# ----------------------------------------------------------------------------- functional
def test_lerp_blend_equals_blend_is_exact_at_the_ends_and_keeps_the_format():
    x, _ = batch()
    idx, lam = torch.randperm(6, generator=gen(1)), torch.rand(6, generator=gen(2))
    torch.testing.assert_close(lerp_blend(x, idx, lam), blend(x, idx, lam.double()))
    assert torch.equal(lerp_blend(x, idx, torch.ones(6)), x) and torch.equal(lerp_blend(x, idx, torch.zeros(6)), x[idx])
    cl = x.contiguous(memory_format=torch.channels_last)
    assert lerp_blend(cl, idx, lam).is_contiguous(memory_format=torch.channels_last)
    assert lerp_blend(x.half(), idx, lam).dtype == torch.float16


def test_gradcheck_of_the_differentiable_pieces():
    g = gen(3)
    x, lam = torch.rand(3, 2, 2, dtype=torch.float64, generator=g), torch.rand(3, dtype=torch.float64, generator=g)
    idx = torch.tensor([2, 0, 1])
    assert torch.autograd.gradcheck(lambda a, b: lerp_blend(a, idx, b), (x.requires_grad_(), lam.requires_grad_()))
    logits, u = torch.randn(4, 3, dtype=torch.float64, generator=g), torch.rand(4, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda s: region_lambda(*policy_region(s), u), (logits.requires_grad_(),))
    d = torch.randn(5, 2, dtype=torch.float64, generator=g).requires_grad_()
    orig, w = torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool), torch.tensor([1.0, 1, 0, 1, 1], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: intrusion_loss(s, orig, w), (d,))


def test_policy_region_lies_in_the_unit_interval_and_lambda_in_the_region():
    s = torch.randn(200, 3, generator=gen(4)) * torch.tensor([1.0, 30.0, 100.0]).repeat_interleave(
        torch.tensor([70, 70, 60])).unsqueeze(1)
    alpha, delta = policy_region(s)
    assert (alpha >= 0).all() and (delta >= 0).all() and (alpha + delta <= 1 + 1e-6).all()
    for u in (torch.zeros(200), torch.ones(200), torch.rand(200, generator=gen(5))):
        lam = region_lambda(alpha, delta, u)
        assert ((lam >= alpha - 1e-7) & (lam <= alpha + delta + 1e-6) & (lam >= 0) & (lam <= 1 + 1e-6)).all()


def test_intrusion_loss_matches_the_binary_cross_entropy_and_truncated_normal_stats():
    d, orig = torch.randn(6, 2, generator=gen(6)), torch.tensor([1, 0, 1, 1, 0, 0], dtype=torch.bool)
    p1 = torch.softmax(d, 1)[:, 1]
    ref = -(orig * p1.log() + (~orig) * (1 - p1).log())
    torch.testing.assert_close(intrusion_loss(d, orig), ref.mean())
    w = torch.tensor([1.0, 0, 1, 2, 0, 1])
    torch.testing.assert_close(intrusion_loss(d, orig, w), (ref * w).sum() / w.sum())
    z = truncated_normal((200_000,), generator=gen(7))
    phi, cdf = math.exp(-2) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(2 / math.sqrt(2)))
    var = 1 - 2 * 2 * phi / (2 * cdf - 1)  # variance of N(0, 1) truncated to [-2, 2]
    assert z.abs().max() <= 2 and abs(float(z.mean())) < 0.01 and abs(float(z.var()) - var) < 0.01


# ------------------------------------------------------------------------------- AdaMixup
def test_adamixup_step_equals_an_independent_reimplementation_of_the_code():
    ada, model = mixkit.create("adamixup", num_classes=K), net()
    x, y = batch(b=7)
    out = ada.train_step(model, x, y, criterion=mixup_cross_entropy, generator=gen(11))
    # replay the draws: the wrapped method's permutation, u, then the gate noise
    g, h = gen(11), 4
    perm = ada.inner.sample(x, y, generator=g).index[:h]
    u = torch.rand(h, generator=g, dtype=torch.float64).float()
    noise = truncated_normal((2, h, 3, 8, 8), generator=g).float()
    nets = ada.nets
    scores = nets["gate"](nets["generator"]((noise[0] * x[:h] + noise[1] * x[perm]) / 2))
    probs = torch.softmax(scores, 1)
    lam = probs[:, 0] + u * probs[:, 1]
    mixed = lam.view(-1, 1, 1, 1) * x[:h] + (1 - lam.view(-1, 1, 1, 1)) * x[perm]
    logp = F.log_softmax(model(torch.cat([mixed, x[:h]])), 1)
    ce = torch.cat([-(lam * logp[:h, y[:h]].diagonal() + (1 - lam) * logp[:h, y[perm]].diagonal()),
                    -logp[h:, y[:h]].diagonal()]).mean()
    feats = model.head[:2](model.layer2(model.layer1(model.stem(torch.cat([mixed, x])))))
    is_orig = torch.arange(h + 7) >= h
    intr = F.cross_entropy(nets["discriminator"](feats), is_orig.long())
    torch.testing.assert_close(out.loss, ce + intr)
    torch.testing.assert_close(torch.tensor(out.logs["lam"]), lam.mean().detach())
    assert out.logits.shape == (2 * h, K) and out.target.index.shape == (2 * h, 2)


def test_adamixup_gradients_reach_the_generator_and_the_head_only_through_their_losses():
    for weight, head_grad in ((1.0, True), (0.0, False)):
        ada, model = mixkit.create("adamixup", num_classes=K, intrusion_weight=weight), net()
        x, y = batch()
        ada.train_step(model, x, y, criterion=mixup_cross_entropy, generator=gen(1)).loss.backward()
        nets = ada.nets
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in nets["gate"].parameters())
        assert nets["generator"].stem.weight.grad.abs().sum() > 0  # through lambda, into the trunk
        assert all((p.grad is not None) == head_grad for p in nets["discriminator"].parameters())
        assert all(p.grad is not None for p in model.parameters())


def test_adamixup_with_policy_lr_zero_is_mixup_with_the_initial_region():
    ada, model = mixkit.create("adamixup", num_classes=K, policy_lr=0.0, weight_decay=0.0), net()
    outs = train(ada, model, 1)
    before = copy.deepcopy(ada.nets.state_dict())
    outs += train(ada, model, 3, seed=1)
    after = ada.nets.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    for o in outs:  # N(0, 1e-3) gate weights: the region starts at about [1/3, 2/3]
        assert abs(o.logs["alpha"] - 1 / 3) < 0.01 and abs(o.logs["delta"] - 1 / 3) < 0.01


def test_adamixup_with_lambda_one_and_no_intrusion_loss_is_plain_cross_entropy():
    ada, model = mixkit.create("adamixup", num_classes=K, intrusion_weight=0.0), net()
    x, y = batch()
    ada.train_step(model, x, y, criterion=mixup_cross_entropy, generator=gen(0))  # builds the nets
    with torch.no_grad():
        ada.nets["gate"][1].bias.copy_(torch.tensor([60.0, 0.0, 0.0]))  # alpha = 1, delta = 0
    out = ada.train_step(model, x, y, criterion=mixup_cross_entropy, generator=gen(2))
    assert out.logs["lam"] == 1.0
    torch.testing.assert_close(out.loss, F.cross_entropy(model(x[:3]), y[:3]))


def _state_round_trip(make, model_fn, seed):
    """Train 2 steps, checkpoint through torch.save, train 2 more; a fresh policy and model
    loaded from the checkpoint must train the same 2 steps to the same numbers."""
    policy, model = make(), model_fn()
    train(policy, model, 2, seed=seed)
    buf = io.BytesIO()
    torch.save({"policy": policy.state_dict(), "model": model.state_dict()}, buf)
    a = train(policy, model, 2, seed=seed + 1)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    policy2, model2 = make(), model_fn()
    model2.load_state_dict(saved["model"])
    policy2.load_state_dict(saved["policy"])  # before the first step: kept until the nets exist
    b = train(policy2, model2, 2, seed=seed + 1)
    assert [float(o.loss.detach()) for o in a] == [float(o.loss.detach()) for o in b]
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))
    return policy, policy2


def test_adamixup_state_round_trips_exactly():
    p1, p2 = _state_round_trip(lambda: mixkit.create("adamixup", num_classes=K), net, 3)
    s1, s2 = p1.state_dict()["policy"], p2.state_dict()["policy"]
    assert all(torch.equal(s1["nets"][k], s2["nets"][k]) for k in s1["nets"])
    assert all(torch.equal(g1, g2) for g1, g2 in zip(s1["grads"], s2["grads"]))  # pending gradients
    with pytest.raises(ValueError, match="keys"):
        p1.load_state_dict({"method": {}, "policy": {"nets": {}}})


def test_adamixup_with_manifold_mixup_small_net_and_refusals():
    inner = mixkit.create("manifold_mixup", layers=("layer1",), num_classes=K)
    ada, model = mixkit.create("adamixup", method=inner, policy_net="small"), net()
    outs = train(ada, model, 3, seed=4)
    assert all(torch.isfinite(o.loss) for o in outs) and 0 < outs[-1].logs["lam"] < 1
    again = train(mixkit.create("adamixup", method=inner, policy_net="small"), net(), 3, seed=4)
    assert [o.logs["alpha"] for o in outs] == [o.logs["alpha"] for o in again]  # deterministic per seed
    assert outs[0].logs["alpha"] != outs[-1].logs["alpha"]  # the policy learns
    for bad in ("cutmix", "fmix"):
        with pytest.raises(mixkit.HyperParameterError, match="differentiable"):
            mixkit.create("adamixup", method=bad)
    with pytest.raises(mixkit.HyperParameterError, match="policy_net"):
        mixkit.create("adamixup", policy_net="big")


# ------------------------------------------------------------------------------ MetaMixUp
def test_meta_gradient_equals_a_finite_difference_of_the_held_out_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, K)).double()
    x, y = (t.double() if t.is_floating_point() else t for t in batch(b=5, size=2))
    hx, hy = (t.double() if t.is_floating_point() else t for t in batch(b=6, seed=9, size=2))
    idx, lr = torch.tensor([3, 0, 4, 1, 2]), 0.7

    def held_loss(lam):  # the published one-step look-ahead, written out by hand
        w, bias = model[1].weight, model[1].bias
        mixed = lam * x + (1 - lam) * x[idx]
        logp = F.log_softmax(mixed.flatten(1) @ w.T + bias, 1)
        loss = -(lam * logp[range(5), y] + (1 - lam) * logp[range(5), y[idx]]).mean()
        gw, gb = torch.autograd.grad(loss, (w, bias))
        return F.cross_entropy(hx.flatten(1) @ (w - lr * gw).T + (bias - lr * gb), hy)

    lam, eps = 0.3, 1e-5
    fd = (held_loss(lam + eps) - held_loss(lam - eps)) / (2 * eps)
    g, lv = meta_lambda_gradient(model, x, y, (hx, hy), lam=torch.tensor(lam, dtype=torch.float64), index=idx,
                                 active=torch.ones(5, dtype=torch.bool), layer="input",
                                 criterion=mixup_cross_entropy, virtual_lr=lr)
    torch.testing.assert_close(g, fd.detach(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(lv, held_loss(lam).detach())


def test_virtual_step_changes_neither_parameters_nor_batch_norm_buffers():
    model = bn_net()
    before = copy.deepcopy(model.state_dict())
    x, y = batch()
    g, _ = meta_lambda_gradient(model, x, y, batch(b=5, seed=2), lam=torch.tensor(0.4), index=torch.randperm(6),
                                active=torch.ones(6, dtype=torch.bool), layer="input",
                                criterion=mixup_cross_entropy, virtual_lr=0.1)
    assert g.abs() > 0 and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_metamixup_steps_lambda_against_the_meta_gradient_within_its_range():
    m, model = meta(meta_optimizer="sgd", meta_lr=0.5, init_lam=0.6), net()
    x, y = batch()
    g = gen(8)
    replay = copy.deepcopy(g)  # the step draws the pairing, then the held-out batch
    index = m.inner.sample(x, y, generator=replay).index
    held = holdout().sample(6, replay)
    ref, _ = meta_lambda_gradient(model, x, y, held, lam=torch.tensor(0.6, dtype=torch.float64), index=index,
                                  active=torch.ones(6, dtype=torch.bool), layer="input",
                                  criterion=mixup_cross_entropy, virtual_lr=0.1)
    out = m.train_step(model, x, y, criterion=mixup_cross_entropy, generator=g)
    assert math.isclose(m.lam, min(max(0.6 - 0.5 * float(ref), 0.0), 1.0), rel_tol=1e-9, abs_tol=1e-12)
    assert out.logs["lam"] == m.lam and out.logs["meta_grad"] == pytest.approx(float(ref))
    big = meta(meta_optimizer="sgd", meta_lr=1e6)
    for o in train(big, net(), 3):
        assert o.logs["lam"] in (0.0, 1.0)


def test_metamixup_training_is_deterministic_and_moves_lambda():
    runs = [[o.logs["lam"] for o in train(meta(meta_lr=0.05), net(), 4, seed=6)] for _ in range(2)]
    assert runs[0] == runs[1] and runs[0][-1] != 0.5 and all(0 <= v <= 1 for v in runs[0])


def test_metamixup_with_meta_lr_zero_is_mixup_at_init_lam_and_at_one_plain_ce():
    m, model = meta(meta_lr=0.0, init_lam=0.3), net()
    x, y = batch()
    index = m.inner.sample(x, y, generator=gen(4)).index
    out = m.train_step(model, x, y, criterion=mixup_cross_entropy, generator=gen(4))
    lam = torch.full((6,), 0.3)
    torch.testing.assert_close(out.loss, mixup_cross_entropy(model(blend(x, index, lam)), MixTarget.pair(y, index, lam)))
    assert m.lam == 0.3
    one = meta(meta_lr=0.0, init_lam=1.0)
    out = one.train_step(model, x, y, criterion=mixup_cross_entropy, generator=gen(4))
    torch.testing.assert_close(out.loss, F.cross_entropy(model(x), y))


def test_metamixup_returned_loss_does_not_reach_lambda():
    m, model = meta(), bn_net()
    x, y = batch()
    out = m.train_step(model, x, y, criterion=mixup_cross_entropy, generator=gen(1))
    out.loss.backward()
    assert m._lam.grad is None and not out.target.weight.requires_grad
    assert all(p.grad is not None for p in model.parameters())


def test_metamixup_state_round_trips_exactly_and_needs_held_out_data():
    p1, p2 = _state_round_trip(lambda: meta(meta_lr=0.05), net, 7)
    assert p1.lam == p2.lam
    fresh = mixkit.create("metamixup")
    fresh.load_state_dict(p1.state_dict())
    assert fresh.lam == p1.lam
    with pytest.raises(RuntimeError, match="held-out"):
        fresh.train_step(net(), *batch(), criterion=mixup_cross_entropy)
    with pytest.raises(mixkit.HyperParameterError, match="differentiable"):
        mixkit.create("metamixup", method="cutmix")
    with pytest.raises(mixkit.HyperParameterError, match="holdout_fraction"):
        mixkit.create("metamixup", holdout_fraction=0.0)


def test_metamixup_with_manifold_mixup_blends_the_hidden_layer():
    inner = mixkit.create("manifold_mixup", layers=("layer2",), num_classes=K)
    m = mixkit.create("metamixup", method=inner, meta_lr=0.05)
    m.attach_holdout(holdout())
    outs = train(m, net(), 2)
    assert all(torch.isfinite(o.loss) for o in outs) and outs[-1].logs["meta_grad"] != 0


# ------------------------------------------------------------------------ engine: resume
@pytest.mark.parametrize("name", ["adamixup", "metamixup"])
def test_engine_resume_equals_an_uninterrupted_run(name, tmp_path):
    from test_train import _strip_times, tiny_config, tiny_data, tiny_model

    from mixkit.train import train as run

    data = tiny_data()
    a = tiny_config(tmp_path / "a", method=name, epochs=3)
    full = run(a, data=data, model=tiny_model())
    b = dataclasses.replace(a, out=str(tmp_path / "b"))

    def kill(epoch, step):
        if epoch == 1 and step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(b, data=data, model=tiny_model(), hooks={"batch_end": kill})
    resumed = run(b, resume=True, data=data, model=tiny_model())
    assert _strip_times(full["epochs"]) == _strip_times(resumed["epochs"]) and full["final"] == resumed["final"]
    assert "lam" in full["epochs"][-1]["method"]
    ca, cb = (torch.load(Path(c.out) / "checkpoint.pt", weights_only=False) for c in (a, b))
    assert str(ca["method"]) == str(cb["method"])
