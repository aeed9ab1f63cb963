"""AdAutoMix: the N-sample generator against the published formula, its losses and its step."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from conftest import TinyNet, gen
from test_automix import engine_resume_matches

import mixkit
from mixkit.learnable import load_mixer
from mixkit.losses import mixup_cross_entropy
from mixkit.methods.adautomix import (
    AdaptiveMaskGenerator,
    AdAutoMix,
    adversarial_generator_loss,
    blend_sources,
    cosine_consistency,
)


def randomise(module, seed, std=0.5):
    with torch.no_grad():
        for prm in module.parameters():
            prm.normal_(0, std, generator=gen(seed))
    return module


def reference_masks(g: AdaptiveMaskGenerator, z, sources, weights, size):
    """The generator's formula with explicit loops: A_n = softmax(sum_{m != n} q_n^T k_m)."""
    b, n = sources.shape
    c, h, w = z.shape[1:]
    conv = {name: (m.weight.view(m.out_channels, -1), m.bias) for name, m in
            (("q", g.query), ("k", g.key), ("v", g.value))}
    logits = torch.empty(b, n, h, w, dtype=z.dtype)
    for i in range(b):
        feats = [torch.cat([z[sources[i, s]], torch.full((1, h, w), float(weights[i, s]), dtype=z.dtype)]).view(c + 1, -1)
                 for s in range(n)]
        emb = {key: [wt @ f + bs[:, None] for f in feats] for key, (wt, bs) in conv.items()}
        for s in range(n):
            scores = sum(emb["q"][s].T @ emb["k"][m] for m in range(n) if m != s) / math.sqrt(g.inter_channels)
            logits[i, s] = (torch.softmax(scores, dim=1) @ emb["v"][s][0]).view(h, w)
    return torch.softmax(F.interpolate(logits, size=size, mode="bilinear", align_corners=False), dim=1)


def test_generator_matches_the_formula_for_two_and_three_sources():
    g = randomise(AdaptiveMaskGenerator(6, generator=gen(0)).double(), 1)
    z = torch.randn(4, 6, 2, 2, generator=gen(2), dtype=torch.float64)
    for sources in (torch.tensor([[0, 1], [1, 0], [2, 3], [3, 2]]), torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 0], [3, 0, 1]])):
        weights = torch.softmax(torch.randn(sources.shape, generator=gen(3), dtype=torch.float64), dim=1)
        got = g(z, sources, weights, (4, 4))
        torch.testing.assert_close(got, reference_masks(g, z, sources, weights, (4, 4)))
        torch.testing.assert_close(got.sum(dim=1), torch.ones(4, 4, 4, dtype=torch.float64))


def test_generator_gradcheck():
    g = randomise(AdaptiveMaskGenerator(4, generator=gen(0)).double(), 1, std=0.3)
    sources = torch.tensor([[0, 1, 2], [1, 2, 0], [2, 0, 1]])
    weights = torch.tensor([[0.5, 0.3, 0.2]] * 3, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 4, 2, 2, generator=gen(2), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, wt: g(t, sources, wt, (4, 4)), (z, weights))


def test_losses_match_loops_and_gradcheck():
    mix = torch.randn(3, 5, generator=gen(0), dtype=torch.float64, requires_grad=True)
    src = torch.randn(3, 2, 5, generator=gen(1), dtype=torch.float64)
    w = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)
    with torch.no_grad():
        loop = sum(float(w[b, n] * F.cosine_similarity(mix[b], src[b, n], dim=0)) for b in range(3) for n in range(2)) / 3
        assert abs(float(cosine_consistency(mix, src, w)) - loop) < 1e-12
    y = torch.tensor([0, 1, 2])
    target = mixkit.MixTarget(y, torch.tensor([[0, 1], [1, 2], [2, 0]]), w)

    def adv(t):
        return adversarial_generator_loss(mixup_cross_entropy(t, target), cosine_consistency(t, src, w), 0.3)

    assert torch.autograd.gradcheck(adv, (mix,))
    # the paper's signs: a descent step on the loss raises both the teacher's CE and the similarity
    grad = torch.autograd.grad(adv(mix), mix)[0]
    stepped = (mix - 1e-3 * grad).detach()
    assert mixup_cross_entropy(stepped, target) > mixup_cross_entropy(mix.detach(), target)
    assert cosine_consistency(stepped, src, w) > cosine_consistency(mix.detach(), src, w)


def test_ratios_and_sources():
    x, y = torch.rand(16, 3, 4, 4), torch.arange(16) % 5
    m = AdAutoMix(mode="elem")
    params = m.sample(x, y, generator=gen(0))
    assert params.sources.shape == (16, 3) and torch.equal(params.sources[:, 0], torch.arange(16))
    assert (params.sources.sort(dim=1).values.diff(dim=1) > 0).all()  # distinct sources
    torch.testing.assert_close(params.weights.sum(dim=1), torch.ones(16, dtype=torch.float64))
    # normalised i.i.d. Beta(1, 1) ratios: exchangeable, so each has mean 1/k
    draws = torch.cat([m._ratios(500, gen(s)) for s in range(4)])
    torch.testing.assert_close(draws.mean(dim=0), torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.02, rtol=0)


def test_constant_masks_are_the_linear_mix_and_labels_follow():
    torch.manual_seed(0)
    model, m = TinyNet(), AdAutoMix(lam_margin=0.5)
    x, y = torch.rand(5, 3, 8, 8, generator=gen(0)), torch.tensor([0, 1, 2, 3, 4])
    out = m(x, y, model=model, generator=gen(1))
    p = out.params
    linear = sum(p.weights[:, n].float().view(-1, 1, 1, 1) * x[p.sources[:, n]] for n in range(3))
    torch.testing.assert_close(m.apply(x, p), linear)
    dense = F.one_hot(y, 5).double()
    expect = sum(p.weights[:, n : n + 1] * dense[p.sources[:, n]] for n in range(3))
    torch.testing.assert_close(out.target.soft(5).double(), expect)
    constant = p.weights.float().view(5, 3, 1, 1).expand(5, 3, 8, 8)
    assert torch.equal(blend_sources(x, p.sources, constant), m.apply(x, p))


def make_step(method, model, seed, b=6, size=8):
    g = gen(seed)
    x, y = torch.rand(b, 3, size, size, generator=g), torch.randint(0, 5, (b,), generator=g)
    return method.train_step(model, x, y, criterion=mixup_cross_entropy, generator=gen(seed + 100))


def test_one_teacher_forward_gives_every_source_prediction():
    torch.manual_seed(0)
    model, m = TinyNet(), AdAutoMix()
    make_step(m, model, 0)
    x = torch.rand(6, 3, 8, 8, generator=gen(3))
    _, logits = m._teacher(x)
    perm = torch.randperm(6, generator=gen(4))
    with torch.no_grad():
        torch.testing.assert_close(m.encoder(x[perm]), logits[perm])


def test_adversarial_steps_alternate_and_no_gradient_leaks():
    torch.manual_seed(0)
    model, m = TinyNet(), AdAutoMix(lam_margin=0.0)
    outs = [make_step(m, model, s) for s in range(3)]
    assert [o.logs["adversarial"] for o in outs] == [1.0, 0.0, 1.0] and "cosine" in outs[0].logs
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in m.mixer.parameters())
    grads = torch.autograd.grad(outs[-1].loss, list(m.mixer.parameters()), allow_unused=True)
    assert all(g is None for g in grads)
    outs[-1].loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(p.grad is None for p in m.encoder.parameters())


def test_state_round_trip_and_saved_mixer(tmp_path):
    torch.manual_seed(0)
    model, m = TinyNet(), AdAutoMix()
    for seed in range(3):
        make_step(m, model, seed)
    resumed, model2 = AdAutoMix(), copy.deepcopy(model)
    resumed.load_state_dict(copy.deepcopy(m.state_dict()))
    a, b = make_step(m, model, 9), make_step(resumed, model2, 9)
    assert torch.equal(a.loss, b.loss) and a.logs == b.logs and a.logs["adversarial"] == 0.0
    for pa, pb in zip(m.mixer.parameters(), resumed.mixer.parameters()):
        assert torch.equal(pa, pb)
    m.save_mixer(str(tmp_path / "gen.pt"))
    data = load_mixer(str(tmp_path / "gen.pt"))
    g = AdaptiveMaskGenerator(data["channels"], **data["config"])
    g.load_state_dict(data["mixer"])
    z, sources = torch.randn(3, data["channels"], 2, 2), torch.tensor([[0, 1, 2], [1, 2, 0], [2, 0, 1]])
    w = torch.full((3, 3), 1 / 3)
    assert torch.equal(m.mixer(z, sources, w, (8, 8)), g(z, sources, w, (8, 8)))


def test_two_source_variant_and_metadata():
    torch.manual_seed(0)
    model, m = TinyNet(), AdAutoMix(k=2)
    out = make_step(m, model, 0)
    assert out.target.k == 2
    info = mixkit.method_info("adautomix")
    assert info.family == "learnable" and info.sources == "k" and info.defaults["k"] == 3


def test_engine_kill_and_resume_is_exact(tmp_path):
    engine_resume_matches("adautomix", tmp_path)
