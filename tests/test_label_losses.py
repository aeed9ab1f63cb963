"""Loss-object label policies: DecoupleMix, MixupE, RegMixup and LUMix."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyNet, gen

import mixkit
from mixkit.methods.label_losses import (
    decoupled_log_softmax,
    decoupled_mixup_loss,
    decoupled_regularizer,
    mixupe_loss,
    mixupe_term,
    regmixup_loss,
)
from mixkit.methods.label_lumix import lumix_loss, lumix_noise, lumix_target
from mixkit.types import MixTarget

POLICIES = ["decouplemix", "mixupe", "regmixup", "lumix"]
K = 5
D = torch.float64


def logits_and_pair(b=6, seed=0, lam=0.7):
    g = gen(seed)
    z = torch.randn(b, K, generator=g, dtype=D)
    y = torch.randint(0, K, (b,), generator=g)
    perm = torch.randperm(b, generator=g)
    return z, y, MixTarget.pair(y, perm, torch.full((b,), lam, dtype=D), K)


def reference_dm(z, dense, eta, eps=1e-6):
    """DecoupleMix by hand, row by row on a dense mixed label (OpenMixup's masking)."""
    out = []
    for row, lab in zip(z, dense):
        loss = -(lab * torch.log_softmax(row, 0)).sum()
        mixed = (lab > eps).nonzero().flatten().tolist()
        if len(mixed) > 1:
            for i in mixed:
                keep = [c for c in range(len(row)) if c == i or c not in mixed]
                loss = loss - eta * torch.log_softmax(row[keep], 0)[keep.index(i)]
        out.append(loss)
    return torch.stack(out).mean()


# --------------------------------------------------------------------------- DecoupleMix
def test_decouple_reduces_to_ce_at_eta_zero_and_without_mixing():
    z, y, t = logits_and_pair()
    assert torch.equal(decoupled_mixup_loss(z, t, eta=0.0), mixkit.mixup_cross_entropy(z, t))
    unmixed = MixTarget.pair(y, torch.roll(torch.arange(6), 1), torch.ones(6, dtype=D), K)  # lam = 1, real partner
    torch.testing.assert_close(decoupled_mixup_loss(z, unmixed, eta=0.5), F.cross_entropy(z, y))
    same = MixTarget.pair(torch.zeros(6, dtype=torch.long), torch.roll(torch.arange(6), 1), torch.full((6,), 0.3), K)
    assert float(decoupled_regularizer(z, same)) == 0.0  # same-class pairs: plain CE


@pytest.mark.parametrize("lam", [0.7, 0.5, 0.2])
def test_decouple_matches_hand_formula(lam):
    z, y, t = logits_and_pair(lam=lam)
    torch.testing.assert_close(decoupled_mixup_loss(z, t, eta=0.3), reference_dm(z, t.soft(K), 0.3))
    # two sources by hand: -log e^{z_a} / sum_{c != b} e^{z_c} (and b's term), weighted lam^1
    a, b = y, y[t.index[:, 1]]
    keep_a = torch.ones_like(z, dtype=torch.bool).scatter(1, b[:, None], False) | (a == b)[:, None]
    keep_b = torch.ones_like(z, dtype=torch.bool).scatter(1, a[:, None], False) | (a == b)[:, None]
    nll_a = -(z.gather(1, a[:, None])[:, 0] - torch.logsumexp(z.masked_fill(~keep_a, -math.inf), 1))
    nll_b = -(z.gather(1, b[:, None])[:, 0] - torch.logsumexp(z.masked_fill(~keep_b, -math.inf), 1))
    hand = torch.where(a != b, lam * nll_a + (1 - lam) * nll_b, torch.zeros_like(nll_a)).mean()
    torch.testing.assert_close(decoupled_regularizer(z, t, lam_power=1.0), hand)


def test_decoupled_term_ignores_the_other_mixed_class():
    z = torch.tensor([[1.0, 2.0, -1.0, 0.5]], dtype=D, requires_grad=True)
    classes, active = torch.tensor([[0, 1]]), torch.tensor([[True, True]])
    log_phi = decoupled_log_softmax(z, classes, active)
    torch.testing.assert_close(log_phi[0, 0], z[0, 0] - torch.logsumexp(z[0, [0, 2, 3]], 0))
    (grad,) = torch.autograd.grad(log_phi[0, 0], z)
    assert grad[0, 1] == 0 and (grad[0, [0, 2, 3]] != 0).all()  # class 1 (the partner) is not in the denominator


def test_decouple_k_sources_and_duplicates():
    z = torch.randn(2, 6, generator=gen(3), dtype=D)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    # row 0 mixes classes 0, 1, 2; row 1 mixes class 3 twice and class 4 (two distinct classes)
    t = MixTarget(y, torch.tensor([[0, 1, 2], [3, 3, 4]]), torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2]], dtype=D))
    dense = t.soft(6)
    torch.testing.assert_close(decoupled_mixup_loss(z, t, eta=0.2), reference_dm(z, dense, 0.2))
    z0 = z[0]
    hand0 = sum(-(z0[i] - torch.logsumexp(z0[[i, 3, 4, 5]], 0)) for i in (0, 1, 2))
    nll_3 = -(z[1, 3] - torch.logsumexp(z[1, [0, 1, 2, 3, 5]], 0))
    nll_4 = -(z[1, 4] - torch.logsumexp(z[1, [0, 1, 2, 4, 5]], 0))
    hand1 = nll_3 + nll_4
    torch.testing.assert_close(decoupled_regularizer(z, t, reduction="none"), torch.stack([hand0, hand1]))
    weighted = decoupled_regularizer(z, t, lam_power=1.0, reduction="none")[1]
    torch.testing.assert_close(weighted, 0.8 * nll_3 + 0.2 * nll_4)


def test_decouple_soft_labels_use_the_argmax():
    z, y, t = logits_and_pair()
    soft = F.one_hot(y, K).to(D) * 0.8 + 0.04
    ts = MixTarget(soft, t.index, t.weight, K)
    torch.testing.assert_close(decoupled_regularizer(z, ts), decoupled_regularizer(z, t))


# --------------------------------------------------------------------------------- MixupE
def test_mixupe_term_matches_hand_formula_and_threshold():
    z, y, _ = logits_and_pair()
    r = (z * (F.one_hot(y, K).to(D) - torch.softmax(z, 1))).sum(1)
    torch.testing.assert_close(mixupe_term(z, y, threshold=math.inf, reduction="none"), r)
    tau = float(r.median())
    torch.testing.assert_close(mixupe_term(z, y, threshold=tau), torch.where(r < tau, r, 0).sum() / 6)


def test_mixupe_loss_value_gradient_and_eta_zero():
    z, y, t = logits_and_pair()
    zc = torch.randn(6, K, generator=gen(9), dtype=D)
    zm, zc = z.clone().requires_grad_(), zc.requires_grad_()
    l_mix = mixkit.mixup_cross_entropy(zm, t)
    assert mixupe_loss(l_mix, zc, y, eta=0.0) is l_mix
    loss = mixupe_loss(l_mix, zc, y, eta=0.5, alpha=2.0, threshold=1.0)
    torch.testing.assert_close(loss, l_mix)  # the rescaling keeps the value of the mixup loss
    r = (zc * (F.one_hot(y, K).to(D) - torch.softmax(zc, 1))).sum(1)
    unscaled = l_mix - 0.5 * (1 - 3 / 5) * torch.where(r.detach() < 1.0, r, 0).mean()
    hand = (l_mix.detach() / unscaled.detach()) * unscaled
    g1 = torch.autograd.grad(loss, (zm, zc), retain_graph=True)
    g2 = torch.autograd.grad(hand, (zm, zc))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_mixupe_alpha_from_the_wrapped_method():
    assert mixkit.create("mixupe", method_args={"alpha": 3.0}).lam_alpha == 3.0
    named = mixkit.create("mixupe", method="cutmix", alpha=0.5)
    assert named.lam_alpha == named.inner.alpha == 0.5 and named.method_args is None
    assert mixkit.create("mixupe", method=mixkit.MixUp(alpha=0.2), alpha=2.0).lam_alpha == 2.0  # lam_bar only
    assert mixkit.create("mixupe", method=mixkit.MixUp(alpha=0.2)).lam_alpha == 0.2
    with pytest.raises(mixkit.HyperParameterError, match="alpha"):
        mixkit.create("mixupe", method=mixkit.create("erm"))


# ------------------------------------------------------------------------------- RegMixup
def test_regmixup_formula_official_code_and_eta_zero():
    z, y, t = logits_and_pair(lam=0.45)
    zc = torch.randn(6, K, generator=gen(5), dtype=D)
    torch.testing.assert_close(regmixup_loss(zc, y, z, t, eta=0.0), F.cross_entropy(zc, y))
    mce = 0.45 * F.cross_entropy(z, y) + 0.55 * F.cross_entropy(z, y[t.index[:, 1]])
    torch.testing.assert_close(regmixup_loss(zc, y, z, t, eta=2.0), (F.cross_entropy(zc, y) + 2 * mce) / 3)
    # the official code: F.cross_entropy (mean) over the concatenated batch with targets (y; y_a), (y; y_b)
    cat = torch.cat([zc, z])
    y_b = t.labels[t.index[:, 1]]
    official = 0.45 * F.cross_entropy(cat, torch.cat([y, y])) + 0.55 * F.cross_entropy(cat, torch.cat([y, y_b]))
    torch.testing.assert_close(regmixup_loss(zc, y, z, t, eta=1.0), official)


def test_regmixup_one_concatenated_forward_and_alpha_defaults():
    rm = mixkit.create("regmixup", num_classes=K)
    assert rm.inner.alpha == 20.0 and rm.method_args is None
    assert mixkit.create("regmixup").hparams == mixkit.method_info("regmixup").defaults
    assert mixkit.create("regmixup", method_args={"alpha": 10.0}).inner.alpha == 10.0
    assert mixkit.create("regmixup", alpha=10.0).inner.alpha == 10.0
    assert mixkit.create("regmixup", method="cutmix").inner.alpha == 1.0
    with pytest.raises(mixkit.HyperParameterError, match="alpha"):
        mixkit.create("regmixup", method=mixkit.MixUp(), alpha=10.0)
    assert mixkit.create("regmixup", method=mixkit.MixUp()).inner.alpha == 1.0
    torch.manual_seed(0)
    net, calls = TinyNet(3, K).double(), []
    net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x, y = torch.rand(4, 3, 8, 8, generator=gen(1), dtype=D), torch.tensor([0, 1, 2, 3])
    out = rm.train_step(net, x, y, criterion=mixkit.mixup_cross_entropy, generator=gen(2))
    assert calls == [8] and out.logits.shape == (8, K) and out.target.index.shape[0] == 8
    mixed = mixkit.create("mixup", alpha=20.0, num_classes=K)(x, y, generator=gen(2))
    hand = regmixup_loss(out.logits[:4], y, out.logits[4:], mixed.target)
    torch.testing.assert_close(out.loss, hand)
    torch.testing.assert_close(out.target.soft()[:4], F.one_hot(y, K).float())


# ---------------------------------------------------------------------------------- LUMix
def test_lumix_hand_formula_and_reductions():
    z, y, t = logits_and_pair(lam=0.6)
    noise = lumix_noise(6, 2, 1.0, generator=gen(3))
    p = torch.softmax(z, 1)
    pa, pb = p.gather(1, y[:, None])[:, 0], p.gather(1, y[t.index[:, 1]][:, None])[:, 0]
    lam = 0.6 * (1 - 0.2 - 0.3) + 0.2 * pa / (pa + pb) + 0.3 * noise[:, 0]
    new = lumix_target(t, p, noise, r_s=0.2, r_r=0.3)
    torch.testing.assert_close(new.weight, torch.stack([lam, 1 - lam], 1), check_dtype=False)
    assert torch.equal(lumix_loss(z, t, noise, r_s=0.0, r_r=0.0), mixkit.mixup_cross_entropy(z, t))
    unmixed = MixTarget.pair(y, torch.roll(torch.arange(6), 1), torch.ones(6, dtype=D), K)
    torch.testing.assert_close(lumix_loss(z, unmixed, noise, r_s=0.4, r_r=0.5), F.cross_entropy(z, y))


def test_lumix_noise_statistics():
    a = 1.0
    draws = lumix_noise(40000, 2, a, generator=gen(0))[:, 0]
    assert abs(float(draws.mean()) - 0.5) < 0.01 and abs(float(draws.var()) - 1 / (4 * (2 * a + 1))) < 0.005


def test_lumix_train_step_is_deterministic_and_k_sources_stay_normalised():
    torch.manual_seed(0)
    net = TinyNet(3, K)
    x, y = torch.rand(6, 3, 8, 8, generator=gen(1)), torch.tensor([0, 1, 2, 3, 4, 0])
    lu = mixkit.create("lumix", method="ricap", num_classes=K, r_s=0.3, r_r=0.3)
    a = lu.train_step(net, x, y, criterion=mixkit.mixup_cross_entropy, generator=gen(4))
    b = lu.train_step(net, x, y, criterion=mixkit.mixup_cross_entropy, generator=gen(4))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.target.weight, b.target.weight)
    torch.testing.assert_close(a.target.weight.sum(1), torch.ones(6))
    assert a.target.k == 4 and not torch.equal(a.target.weight, lu.inner(x, y, generator=gen(4)).target.weight)


# ------------------------------------------------------------------------- all four losses
def test_gradcheck_losses_float64():
    z, y, t = logits_and_pair(b=3)
    zc = torch.randn(3, K, generator=gen(7), dtype=D)
    noise, probs = lumix_noise(3, 2, generator=gen(8)), torch.softmax(torch.randn(3, K, generator=gen(9), dtype=D), 1)
    funcs = [
        lambda a, c: decoupled_mixup_loss(a, t, eta=0.3, lam_power=1.0),
        lambda a, c: mixupe_term(c, y, threshold=math.inf) + mixkit.mixup_cross_entropy(a, t),
        lambda a, c: mixkit.mixup_cross_entropy(a, t) - 0.5 * mixupe_term(c, y, threshold=0.0),  # MixupE, unscaled
        lambda a, c: regmixup_loss(c, y, a, t, eta=1.0),
        lambda a, c: lumix_loss(a, t, noise, r_s=0.3, r_r=0.2, probs=probs),
    ]
    for f in funcs:
        assert torch.autograd.gradcheck(f, (z.clone().requires_grad_(), zc.clone().requires_grad_()))


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("method", ["cutmix", "manifold_mixup"])
def test_policy_trains_with_any_sample_policy(name, method):
    torch.manual_seed(0)
    net = TinyNet(3, K)
    x, y = torch.rand(6, 3, 8, 8, generator=gen(1)), torch.tensor([0, 1, 2, 3, 4, 0])
    policy = mixkit.create(name, method=mixkit.create(method, num_classes=K))
    out = policy.train_step(net, x, y, criterion=mixkit.mixup_cross_entropy, generator=gen(2))
    out.loss.backward()
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert out.logits.shape[0] == out.target.index.shape[0]


@pytest.mark.parametrize("name", POLICIES)
def test_policy_state_round_trip(name):
    policy = mixkit.create(name, method="cutmix", num_classes=K)
    buf = io.BytesIO()
    torch.save(policy.state_dict(), buf)
    buf.seek(0)
    fresh = mixkit.create(name, method="cutmix", num_classes=K)
    fresh.load_state_dict(torch.load(buf))
    assert fresh.state_dict() == policy.state_dict() == {"method": {}, "policy": {}}


@pytest.mark.parametrize("name", POLICIES)
def test_hyper_parameters_are_checked(name):
    key = {"decouplemix": "eta", "mixupe": "eta", "regmixup": "eta", "lumix": "r_s"}[name]
    with pytest.raises(mixkit.HyperParameterError, match=key):
        mixkit.create(name, **{key: -0.1})


@pytest.mark.parametrize("name", POLICIES)
def test_policy_step_is_plain_cross_entropy_without_mixing(name):
    torch.manual_seed(0)
    net = TinyNet(3, K).double()
    x, y = torch.rand(6, 3, 8, 8, generator=gen(1), dtype=D), torch.tensor([0, 1, 2, 3, 4, 0])
    out = mixkit.create(name, p=0.0, num_classes=K).train_step(net, x, y, criterion=mixkit.mixup_cross_entropy)
    torch.testing.assert_close(out.loss, F.cross_entropy(net(x), y))  # MixupE: its rescaling keeps the CE value
