"""GenLabel: the Gaussian fit, the relabelling weight against a hand computation, the loss."""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import MultivariateNormal

import mixkit
from mixkit.losses import mixup_cross_entropy
from mixkit.methods.genlabel import (
    COVARIANCES,
    GenLabel,
    class_log_likelihood,
    feature_moments,
    fit_class_gaussians,
    genlabel_target,
)
from conftest import TinyNet, gen


def _net(k: int = 4, bn: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    net = TinyNet(3, k)
    if bn:
        net.layer1 = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    return net


def _batch(b: int = 8, k: int = 4, seed: int = 0):
    g = gen(seed)
    return torch.rand(b, 3, 8, 8, generator=g), torch.arange(b) % k


def _fitted(policy: GenLabel, net, x, y) -> GenLabel:
    policy.train_step(net, x, y, criterion=mixup_cross_entropy, generator=gen(0))
    policy.epoch_end(net)
    assert policy.density is not None
    return policy


# ------------------------------------------------------------------------------ the density
@pytest.mark.parametrize("covariance", COVARIANCES)
def test_gaussian_fit_recovers_known_means_and_covariance(covariance):
    g = gen(0)
    means = torch.tensor([[0.0, 0.0, 0.0], [3.0, -1.0, 2.0], [-2.0, 4.0, 1.0]], dtype=torch.float64)
    chol = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [-0.3, 0.2, 0.6]], dtype=torch.float64)
    n = 3000
    classes = torch.arange(3).repeat_interleave(n)
    z = means[classes] + torch.randn(3 * n, 3, generator=g, dtype=torch.float64) @ chol.t()
    half = 3 * n // 2  # two batches merged by adding their moments
    m1, m2 = (feature_moments(z[s], classes[s], 3, covariance) for s in (slice(0, half), slice(half, None)))
    fit = fit_class_gaussians({k: m1[k] + m2[k] for k in m1}, covariance, 1e-4)
    torch.testing.assert_close(fit["mean"], means, atol=0.08, rtol=0)
    cov = chol @ chol.t()
    if covariance == "shared":
        torch.testing.assert_close(fit["scale"] @ fit["scale"].t(), cov, atol=0.08, rtol=0)
    elif covariance == "full":
        torch.testing.assert_close(fit["scale"] @ fit["scale"].transpose(1, 2), cov.expand(3, 3, 3), atol=0.08, rtol=0)
    else:
        torch.testing.assert_close(fit["scale"], cov.diagonal().expand(3, 3), atol=0.08, rtol=0)


def test_fit_equals_the_maximum_likelihood_estimate_on_a_small_set():
    g = gen(1)
    z, classes = torch.randn(12, 4, generator=g, dtype=torch.float64), torch.arange(12) % 3
    full = fit_class_gaussians(feature_moments(z, classes, 4, "full"), "full", 1e-4)
    for c in range(3):
        zc = z[classes == c]
        cov = torch.cov(zc.t(), correction=0) + 1e-4 * torch.eye(4, dtype=torch.float64)
        torch.testing.assert_close(full["scale"][c] @ full["scale"][c].t(), cov)
    assert full["valid"].tolist() == [True, True, True, False]  # class 3 never seen
    shared = fit_class_gaussians(feature_moments(z, classes, 4, "shared"), "shared", 1e-4)
    pooled = sum((z[classes == c] - z[classes == c].mean(0)).t() @ (z[classes == c] - z[classes == c].mean(0))
                 for c in range(3)) / 12 + 1e-4 * torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(shared["scale"] @ shared["scale"].t(), pooled)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_log_likelihood_equals_torch_distributions(covariance):
    g = gen(2)
    z, classes = torch.randn(40, 3, generator=g, dtype=torch.float64), torch.arange(40) % 4
    fit = fit_class_gaussians(feature_moments(z, classes, 4, covariance), covariance, 1e-3)
    query = torch.randn(5, 3, generator=g, dtype=torch.float64)
    ll = class_log_likelihood(query, fit, covariance)
    for c in range(4):
        if covariance == "shared":
            dist = MultivariateNormal(fit["mean"][c], scale_tril=fit["scale"])
        elif covariance == "full":
            dist = MultivariateNormal(fit["mean"][c], scale_tril=fit["scale"][c])
        else:
            dist = MultivariateNormal(fit["mean"][c], covariance_matrix=torch.diag(fit["scale"][c]))
        torch.testing.assert_close(ll[:, c], dist.log_prob(query))


def test_relabelled_lambda_is_the_sigmoid_of_the_log_likelihood_difference():
    means = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    chol = torch.tensor([[1.0, 0.0], [0.3, 0.7]], dtype=torch.float64)
    density = {"mean": means, "scale": chol, "valid": torch.tensor([True, True, True])}
    z = torch.tensor([[1.2, 0.1], [0.1, 1.4], [-1.0, -1.0]], dtype=torch.float64)
    target = genlabel_target(class_log_likelihood(z, density, "shared"))
    for b in range(3):
        ll = [float(MultivariateNormal(means[c], scale_tril=chol).log_prob(z[b])) for c in range(3)]
        c1, c2 = sorted(range(3), key=lambda c: -ll[c])[:2]
        lam = 1 / (1 + math.exp(ll[c2] - ll[c1]))
        assert target.labels[target.index[b]].tolist() == [c1, c2]
        assert math.isclose(float(target.weight[b, 0]), lam, rel_tol=1e-6)
        assert math.isclose(float(target.weight[b].sum()), 1.0, rel_tol=1e-6)


def test_invalid_classes_are_never_chosen():
    density = {"mean": torch.zeros(3, 2, dtype=torch.float64), "scale": torch.ones(3, 2, dtype=torch.float64),
               "valid": torch.tensor([True, False, True])}
    density["mean"][2] = 1.0
    target = genlabel_target(class_log_likelihood(torch.zeros(4, 2), density, "diag"))
    assert set(target.labels.tolist()) == {0, 2}


# ------------------------------------------------------------------------------ the policy
def test_before_the_first_fit_and_with_gamma_zero_it_is_mixup_cross_entropy():
    net, (x, y) = _net(), _batch()
    plain = mixkit.create("mixup").train_step(net, x, y, criterion=mixup_cross_entropy, generator=gen(3))
    fresh = GenLabel().train_step(net, x, y, criterion=mixup_cross_entropy, generator=gen(3))
    torch.testing.assert_close(fresh.loss, plain.loss)
    fitted = _fitted(GenLabel(), net, x, y).state_dict()
    for p, expected in ((None, plain.loss), (0.0, F.cross_entropy(net(x), y))):  # p = 0: no mixing either
        zero = GenLabel(gamma=0.0, p=p)
        zero.load_state_dict(fitted)
        torch.testing.assert_close(zero.train_step(net, x, y, criterion=mixup_cross_entropy, generator=gen(3)).loss,
                                   expected)


def test_fitted_loss_is_the_gamma_mix_of_mixup_and_relabelled_cross_entropy():
    net, (x, y) = _net(), _batch(b=12)
    policy = _fitted(GenLabel(gamma=0.7, covariance="diag"), net, x, y)
    step = policy.train_step(net, x, y, criterion=mixup_cross_entropy, generator=gen(4))
    out = mixkit.create("mixup")(x, y, generator=gen(4))  # the same draws
    feats = []
    handle = net.head[2].register_forward_pre_hook(lambda m, a: feats.append(a[0]))
    logits = net(out.x)
    handle.remove()
    relabelled = genlabel_target(class_log_likelihood(feats[0], policy.density, "diag"))
    expected = 0.3 * mixup_cross_entropy(logits, out.target) + 0.7 * mixup_cross_entropy(logits, relabelled)
    torch.testing.assert_close(step.loss, expected)
    assert 0.5 <= step.logs["genlabel_lam"] <= 1.0


def test_genlabel_loss_gradcheck():
    g = gen(5)
    logits = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    target = mixkit.MixTarget.pair(torch.tensor([0, 1, 2, 0]), torch.tensor([1, 0, 0, 2]),
                                   torch.tensor([0.3, 0.6, 0.9, 0.5], dtype=torch.float64))
    relabelled = genlabel_target(torch.randn(4, 3, generator=g, dtype=torch.float64))

    def loss(lg):
        return 0.2 * mixup_cross_entropy(lg, target) + 0.8 * mixup_cross_entropy(lg, relabelled)

    assert torch.autograd.gradcheck(loss, (logits,))


def test_clean_forward_leaves_batch_norm_buffers_as_plain_mixup_does():
    x, y = _batch()
    net_a, net_b = _net(bn=True), _net(bn=True)
    mixkit.create("mixup").train_step(net_a, x, y, criterion=mixup_cross_entropy, generator=gen(6))
    GenLabel().train_step(net_b, x, y, criterion=mixup_cross_entropy, generator=gen(6))
    for (name, a), (_, b) in zip(net_a.named_buffers(), net_b.named_buffers(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("method", ["cutmix", "manifold_mixup"])
def test_genlabel_combines_with_other_sample_policies(method):
    net, (x, y) = _net(), _batch(b=12)
    args = {"layers": ("input", "layer1")} if method == "manifold_mixup" else {}
    policy = _fitted(GenLabel(method=method, method_args=args, feature_layer="head.2"), net, x, y)
    step = policy.train_step(net, x, y, criterion=mixup_cross_entropy, generator=gen(7))
    step.loss.backward()
    assert torch.isfinite(step.loss) and "genlabel_lam" in step.logs


def test_state_round_trips_and_bad_settings_are_refused():
    net, (x, y) = _net(), _batch()
    policy = _fitted(GenLabel(covariance="full"), net, x, y)
    buf = io.BytesIO()
    torch.save(policy.state_dict(), buf)
    buf.seek(0)
    again = GenLabel(covariance="full")
    again.load_state_dict(torch.load(buf, weights_only=False))
    a = policy.train_step(net, x, y, criterion=mixup_cross_entropy, generator=gen(8)).loss
    b = again.train_step(net, x, y, criterion=mixup_cross_entropy, generator=gen(8)).loss
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="unknown keys"):
        again.load_policy_state({"moments": None})
    with pytest.raises(mixkit.HyperParameterError):
        GenLabel(covariance="tied")
    with pytest.raises(mixkit.ModelError, match=r"nn\.Linear"):
        GenLabel().train_step(torch.nn.Flatten(), x, y, criterion=mixup_cross_entropy)
    with pytest.raises(mixkit.ModelError, match="no submodule"):
        GenLabel(feature_layer="fc").train_step(net, x, y, criterion=mixup_cross_entropy)


def test_genlabel_trains_in_the_engine_and_resumes_exactly(tmp_path):
    from mixkit.train import engine
    from test_train import tiny_config, tiny_data, tiny_model

    data = tiny_data()
    a = tiny_config(tmp_path / "a", method="cutmix", label_policy="genlabel", epochs=3)
    full = engine.train(a, data=data, model=tiny_model())
    assert all(e["method"]["genlabel_classes"] == 4.0 for e in full["epochs"])
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
