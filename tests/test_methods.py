"""Method-specific properties, with hand-built params and independent re-implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixkit
from mixkit import functional as MF
from mixkit.types import BlendParams, BoxParams, LayerParams, MaskParams, ResizeParams
from conftest import gen


def distinct_batch(b=4, c=2, h=10, w=12):
    """Values unique per (sample, channel, pixel): any copy is traceable."""
    return torch.arange(b * c * h * w, dtype=torch.float64).view(b, c, h, w)


# --------------------------------------------------------------------------------- Mixup
def test_mixup_matches_formula():
    x, y = torch.randn(6, 3, 5, 5, generator=gen(0)), torch.arange(6) % 3
    out = mixkit.MixUp(mode="elem")(x, y, generator=gen(1))
    lam, j = out.params.lam.float().view(-1, 1, 1, 1), out.params.index
    torch.testing.assert_close(out.x, lam * x + (1 - lam) * x[j])
    assert sorted(j.tolist()) == list(range(6))  # a permutation


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_mixup_lambda_statistics_match_beta(alpha):
    x, y = torch.zeros(40000, 1), torch.zeros(40000, dtype=torch.long)
    lam = mixkit.MixUp(alpha=alpha, mode="elem").sample(x, y, generator=gen(3)).lam
    var = 1.0 / (4 * (2 * alpha + 1))  # Var of Beta(a, a)
    assert abs(float(lam.mean()) - 0.5) < 4 * math.sqrt(var / lam.numel())
    assert abs(float(lam.var()) / var - 1) < 0.05


def test_mixup_probability_per_sample():
    x, y = torch.zeros(20000, 1), torch.zeros(20000, dtype=torch.long)
    lam = mixkit.MixUp(p=0.3, mode="elem").sample(x, y, generator=gen(4)).lam
    assert abs(float((lam < 1).double().mean()) - 0.3) < 0.02


def test_mixup_batch_mode_on_features_2d():
    x, y = torch.randn(5, 7), torch.arange(5)
    out = mixkit.MixUp()(x, y, generator=gen(0))
    lam = float(out.params.lam[0])
    torch.testing.assert_close(out.x, lam * x + (1 - lam) * x[out.params.index])


# ------------------------------------------------------------------------------ BC learning
def test_between_class_pairs_different_classes_and_uniform_ratio():
    y = torch.arange(20000) % 10
    x = torch.zeros(20000, 1)
    params = mixkit.BetweenClass().sample(x, y, generator=gen(0))
    assert (y[params.index] != y).all()
    assert abs(float(params.lam.mean()) - 0.5) < 0.01 and abs(float(params.lam.var()) - 1 / 12) < 0.003


def test_between_class_partner_is_uniform_over_other_classes():
    from mixkit.methods.linear import different_class_partners

    y = torch.tensor([1, 0, 1, 2, 0, 1])
    g = gen(3)
    counts = torch.zeros(6, 6)
    for _ in range(3000):
        counts[torch.arange(6), different_class_partners(y, generator=g)] += 1
    allowed = (y.unsqueeze(0) != y.unsqueeze(1)).double()
    assert torch.equal(counts > 0, allowed > 0)
    expected = allowed / allowed.sum(dim=1, keepdim=True) * 3000
    assert float(((counts - expected).abs() / expected.clamp_min(1))[allowed > 0].max()) < 0.12


def test_between_class_single_class_batch_falls_back_to_other_rows():
    y = torch.zeros(5, dtype=torch.long)
    params = mixkit.BetweenClass().sample(torch.zeros(5, 2), y, generator=gen(0))
    assert (params.index != torch.arange(5)).all()
    one = mixkit.BetweenClass().sample(torch.zeros(1, 2), y[:1], generator=gen(0))
    assert one.index.tolist() == [0]


def test_bc_plus_matches_reference_formula():
    x = torch.randn(4, 3, 6, 6, generator=gen(1), dtype=torch.float64)
    params = BlendParams(index=torch.tensor([1, 2, 3, 0]), lam=torch.tensor([0.3, 0.0, 0.9, 0.5], dtype=torch.float64))
    out = mixkit.BetweenClass(plus=True).apply(x, params)
    for i in range(4):  # the reference code's per-example formula, in numpy
        x1, x2, r = x[i].numpy(), x[int(params.index[i])].numpy(), float(params.lam[i])
        g1, g2 = np.std(x1), np.std(x2)
        p = 0.0 if r == 0 else 1.0 / (1 + g1 / g2 * (1 - r) / r)
        ref = (x1 * p + x2 * (1 - p)) / np.sqrt(p**2 + (1 - p) ** 2)
        np.testing.assert_allclose(out[i].numpy(), ref, rtol=1e-10, atol=1e-12)


def test_between_class_needs_labels_to_sample():
    with pytest.raises(mixkit.LabelError, match="labels"):
        mixkit.BetweenClass().sample(torch.zeros(2, 3))


# -------------------------------------------------------------------------------- CutMix
def test_cutmix_label_weight_equals_pasted_area():
    x = distinct_batch()
    y = torch.arange(4)
    for seed in range(20):
        out = mixkit.CutMix(mode="elem")(x, y, generator=gen(seed))
        from_partner = (out.x != x).all(dim=1).flatten(1).double().mean(dim=1)  # index is checked below
        same_row = out.params.index == torch.arange(4)
        expected = torch.where(same_row, 0.0, 1 - out.params.lam)
        torch.testing.assert_close(from_partner, expected)
        torch.testing.assert_close(out.target.lam, out.params.lam.float())


def test_cutmix_hand_built_box():
    x = distinct_batch()
    params = BoxParams(index=torch.tensor([3, 2, 1, 0]), lam=torch.ones(4), boxes=torch.tensor([[2, 3, 5, 9]]))
    out = mixkit.CutMix().apply(x, params)
    inside = torch.zeros(10, 12, dtype=torch.bool)
    inside[2:5, 3:9] = True
    torch.testing.assert_close(out[:, :, inside], x[[3, 2, 1, 0]][:, :, inside])
    torch.testing.assert_close(out[:, :, ~inside], x[:, :, ~inside])
    # per-sample boxes through the batched mask path
    boxes = torch.tensor([[0, 0, 10, 12], [2, 3, 5, 9], [0, 0, 0, 0], [9, 11, 10, 12]])
    out = mixkit.CutMix().apply(x, BoxParams(index=torch.tensor([3, 2, 1, 0]), lam=torch.ones(4), boxes=boxes))
    assert torch.equal(out[0], x[3]) and torch.equal(out[2], x[2])
    assert torch.equal(out[3, :, 9, 11], x[0, :, 9, 11]) and torch.equal(out[3, :, :9], x[3, :, :9])


def test_cutmix_boxes_follow_the_reference_rule():
    lam = mixkit.rng.beta((5000,), 1.0, 1.0, generator=gen(0))
    boxes = MF.sample_cut_boxes(lam, (32, 40), generator=gen(1))
    h0, w0, h1, w1 = boxes.unbind(1)
    assert ((0 <= h0) & (h0 <= h1) & (h1 <= 32) & (0 <= w0) & (w0 <= w1) & (w1 <= 40)).all()
    side_h = torch.floor(32 * torch.sqrt(1 - lam)).long()
    assert ((h1 - h0) <= 2 * (side_h // 2)).all()  # clipping only shrinks the box
    unclipped = (h0 > 0) & (h1 < 32)
    assert torch.equal((h1 - h0)[unclipped], (2 * (side_h // 2))[unclipped])


@pytest.mark.parametrize("shape", [(3, 2, 50), (3, 2, 6, 7, 8)])
def test_cutmix_1d_and_3d(shape):
    x = torch.arange(math.prod(shape), dtype=torch.float32).view(shape)
    out = mixkit.CutMix(mode="elem")(x, torch.arange(3), generator=gen(0))
    moved = (out.x != x).all(dim=1).flatten(1).double().mean(dim=1)
    same = out.params.index == torch.arange(3)
    torch.testing.assert_close(moved, torch.where(same, 0.0, 1 - out.params.lam))


# ------------------------------------------------------------------------------- ResizeMix
def test_resizemix_pastes_the_resized_partner():
    x = torch.rand(3, 2, 16, 20, generator=gen(0))
    params = ResizeParams(index=torch.tensor([2, 0, 1]), lam=torch.ones(3), boxes=torch.tensor([[4, 5, 12, 15]]))
    out = mixkit.ResizeMix().apply(x, params)
    small = F.interpolate(x[[2, 0, 1]], size=(8, 10), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:, :, 4:12, 5:15], small)
    out[:, :, 4:12, 5:15] = x[:, :, 4:12, 5:15]
    torch.testing.assert_close(out, x)


@pytest.mark.parametrize("shape", [(6, 3, 24, 20), (5, 2, 40), (4, 2, 8, 10, 12)])
def test_resizemix_elem_mode_equals_per_sample_resize(shape):
    x = torch.rand(shape, generator=gen(1))
    out = mixkit.ResizeMix(mode="elem")(x, torch.zeros(shape[0], dtype=torch.long), generator=gen(2))
    p = out.params
    for i in range(shape[0]):
        one = ResizeParams(index=p.index[i : i + 1] * 0, lam=p.lam[i : i + 1], boxes=p.boxes[i : i + 1])
        src = x[p.index[i] : p.index[i] + 1]
        ref = mixkit.ResizeMix().apply(torch.cat([x[i : i + 1], src]), ResizeParams(
            index=torch.tensor([1, 1]), lam=one.lam.expand(2), boxes=one.boxes))[0]
        torch.testing.assert_close(out.x[i], ref, atol=1e-5, rtol=1e-5)


def test_resizemix_patch_inside_and_lambda_range():
    x = torch.rand(2000, 1, 32, 32)
    p = mixkit.ResizeMix(mode="elem").sample(x, generator=gen(3))
    h0, w0, h1, w1 = p.boxes.unbind(1)
    assert ((h0 >= 0) & (w0 >= 0) & (h1 <= 32) & (w1 <= 32)).all()
    torch.testing.assert_close(p.lam, 1 - (h1 - h0).double() * (w1 - w0).double() / 1024)
    assert float(p.lam.min()) >= 1 - 0.8**2 - 1e-9 and float(p.lam.max()) <= 1 - (3 / 32) ** 2 + 1e-9
    assert torch.equal(h1 - h0, w1 - w0)  # one tau for both sides: square patch on a square image


# ----------------------------------------------------------------------------------- FMix
def test_fmix_mask_holds_the_requested_share():
    lam = torch.tensor([0.0, 0.13, 0.5, 0.77, 1.0], dtype=torch.float64)
    noise = MF.fourier_noise(5, (17, 23), 3.0, generator=gen(0))
    mask = MF.binarise_mask(noise, lam, generator=gen(1))
    kept = mask.flatten(1).sum(dim=1)
    n = 17 * 23
    assert all(math.floor(l * n) <= k <= math.ceil(l * n) for l, k in zip(lam.tolist(), kept.tolist()))
    # the kept pixels are the brightest ones
    for i in range(1, 4):
        on, off = noise[i][mask[i] == 1], noise[i][mask[i] == 0]
        assert float(on.min()) > float(off.max())


def test_fmix_soft_mask_keeps_its_mean():
    lam = torch.tensor([0.3, 0.5, 0.05], dtype=torch.float64)
    noise = MF.fourier_noise(3, (32, 32), 3.0, generator=gen(0))
    mask = MF.binarise_mask(noise, lam, max_soft=0.1, generator=gen(1))
    means = mask.flatten(1).mean(dim=1)
    assert all(abs(m - l) <= 1 / 1024 + 1e-12 for m, l in zip(means.tolist(), lam.tolist()))
    assert ((mask > 0) & (mask < 1)).any()


def test_fourier_noise_matches_numpy_reference():
    """The reference construction in numpy, fed the same normal draws."""
    h, w, decay = 12, 9, 3.0
    noise = MF.fourier_noise(2, (h, w), decay, generator=gen(5))
    g = gen(5)
    fx = np.fft.fftfreq(h)[:, None]
    fy = np.fft.fftfreq(w)[: w // 2 + 1]
    freqs = np.sqrt(fx**2 + fy**2)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** decay
    re = torch.randn((2, h, w // 2 + 1), generator=g, dtype=torch.float64).numpy()
    im = torch.randn((2, h, w // 2 + 1), generator=g, dtype=torch.float64).numpy()
    for i in range(2):
        grey = np.real(np.fft.irfftn(scale * (re[i] + 1j * im[i]), (h, w), axes=(0, 1)))
        grey = (grey - grey.min()) / (grey.max() - grey.min())
        np.testing.assert_allclose(noise[i].numpy(), grey, atol=1e-12)


def test_fmix_output_and_lambda():
    x = distinct_batch()
    out = mixkit.FMix(mode="elem")(x, torch.arange(4), generator=gen(2))
    m = out.params.mask
    assert m.dtype == torch.bool and m.shape == (4, 1, 10, 12)
    torch.testing.assert_close(out.x, torch.where(m, x, x[out.params.index]))
    torch.testing.assert_close(out.params.lam, m.flatten(1).double().mean(dim=1))


def test_fmix_reformulate_shifts_lambda():
    x = torch.zeros(3000, 1, 4, 4)
    lam = mixkit.FMix(mode="elem", reformulate=True).sample(x, generator=gen(0)).lam
    assert abs(float(lam.mean()) - 2 / 3) < 0.02  # Beta(2, 1) has mean 2/3


def test_fmix_soft_mask_refuses_uint8():
    with pytest.raises(mixkit.DTypeError, match="max_soft"):
        mixkit.FMix(max_soft=0.1)(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]))


# -------------------------------------------------------------------------- Manifold Mixup
def make_seq():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()


@pytest.mark.parametrize("layer,k", [("input", 0), ("1", 2), ("3", 4)])
def test_manifold_mixup_equals_mixing_by_hand(layer, k):
    net = make_seq()
    x, y = torch.randn(5, 6, dtype=torch.float64, generator=gen(0)), torch.arange(5) % 3
    mm = mixkit.ManifoldMixup(layers=[layer], mode="elem")
    out = mm(x, y, model=net, generator=gen(1))
    h = net[:k](x)
    lam = out.params.lam.view(-1, 1)
    h = lam * h + (1 - lam) * h[out.params.index]
    torch.testing.assert_close(out.logits, net[k:](h))
    torch.testing.assert_close(out.target.soft(3), lam.float() * F.one_hot(y, 3) + (1 - lam.float()) * F.one_hot(y[out.params.index], 3))


def test_manifold_mixup_hooks_are_removed_and_model_untouched(tiny_net):
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    state = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    tiny_net.eval()
    mixkit.ManifoldMixup()(x, y, model=tiny_net, generator=gen(0))
    assert not tiny_net.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny_net.modules())
    assert all(torch.equal(v, tiny_net.state_dict()[k]) for k, v in state.items())


def test_manifold_mixup_layer_choice_is_uniform(tiny_net):
    mm = mixkit.ManifoldMixup()
    x = torch.zeros(2, 3, 8, 8)
    g = gen(0)
    counts = {n: 0 for n in mm.layers}
    for _ in range(600):
        counts[mm.sample(x, generator=g).layer] += 1
    assert all(150 < c < 250 for c in counts.values())


def test_manifold_mixup_gradients_flow_through_the_mix(tiny_net):
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    params = LayerParams(index=torch.tensor([1, 0, 3, 2]), lam=torch.full((4,), 0.5, dtype=torch.float64), layer="layer1")
    mm = mixkit.ManifoldMixup()
    with mm.mixing(tiny_net, params):
        loss = mixkit.mixup_cross_entropy(tiny_net(x), mm.target(y, params))
    loss.backward()
    assert all(p.grad is not None for p in tiny_net.parameters())


def test_manifold_mixup_errors(tiny_net):
    x, y = torch.rand(2, 3, 8, 8), torch.arange(2)
    with pytest.raises(mixkit.ModelError, match="layer1"):
        mixkit.ManifoldMixup(layers=["layr1"])(x, y, model=tiny_net)
    with pytest.raises(mixkit.ModelError, match="did not run"):
        with mixkit.mix_features(tiny_net, "layer1", lambda h: h):
            pass
    relu = nn.ReLU()
    shared = nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu)
    with pytest.raises(mixkit.ModelError, match="more than once"):
        with mixkit.mix_features(shared, "1", lambda h: h):
            shared(torch.zeros(1, 3))
    with pytest.raises(mixkit.HyperParameterError):
        mixkit.ManifoldMixup(layers="layer1")
    with pytest.raises(mixkit.DTypeError):
        mixkit.ManifoldMixup()(x.long(), y, model=tiny_net)


def test_manifold_mixup_hidden_layers_accept_integer_inputs():
    emb = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 3))
    tokens, y = torch.randint(0, 10, (5, 3), generator=gen(0)), torch.arange(5) % 3
    out = mixkit.ManifoldMixup(layers=["0"])(tokens, y, model=emb, generator=gen(1))
    assert out.logits.shape == (5, 3)


def test_mask_params_replay_on_features():
    """A mask drawn for images replays on feature maps of the same size."""
    x, feats = torch.rand(3, 3, 8, 8), torch.rand(3, 16, 8, 8)
    fm = mixkit.FMix()
    out = fm(x, torch.arange(3), generator=gen(0))
    mixed = fm.apply(feats, out.params)
    torch.testing.assert_close(mixed, torch.where(out.params.mask, feats, feats[out.params.index]))
    assert isinstance(out.params, MaskParams)


# ------------------------------------------------------------------ review follow-ups
def test_bc_plus_leaves_a_lone_sample_unchanged():
    x, y = torch.rand(1, 3, 4, 4), torch.tensor([2])
    out = mixkit.BetweenClass(plus=True)(x, y, generator=gen(0))
    assert torch.equal(out.x, x) and out.target.lam.tolist() == [1.0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_blend_uses_float32_weights(dtype):
    x = torch.rand(4, 3, 4, 4, generator=gen(0)).to(dtype)
    params = BlendParams(index=torch.tensor([1, 2, 3, 0]), lam=torch.tensor([0.999, 0.3, 0.5, 0.001], dtype=torch.float64))
    out = mixkit.MixUp().apply(x, params)
    xf = x.float()
    ref = (params.lam.float().view(-1, 1, 1, 1) * xf + (1 - params.lam.float().view(-1, 1, 1, 1)) * xf[params.index]).to(dtype)
    assert torch.equal(out, ref)


def test_apply_checks_params_against_the_tensor():
    x = torch.rand(4, 3, 8, 8)
    for name in ("mixup", "cutmix", "fmix", "resizemix"):
        m = mixkit.create(name, mode="elem")
        params = m.sample(x, torch.arange(4), generator=gen(0))
        with pytest.raises(mixkit.ShapeError, match="batch"):
            m.apply(torch.rand(6, 3, 8, 8), params)
    cut = mixkit.CutMix()
    big = BoxParams(index=torch.arange(4), lam=torch.ones(4, dtype=torch.float64), boxes=torch.tensor([[0, 0, 8, 8]]))
    with pytest.raises(mixkit.ShapeError, match="spatial size"):
        cut.apply(torch.rand(4, 3, 4, 4), big)
    fm = mixkit.FMix()
    params = fm.sample(x, generator=gen(1))
    with pytest.raises(mixkit.ShapeError, match="mask"):
        fm.apply(torch.rand(4, 3, 4, 4), params)


def test_replayed_empty_resize_box_is_a_copy():
    x = torch.rand(3, 2, 8, 8)
    m = mixkit.ResizeMix(p=0.0)
    out = m.apply(x, m.sample(x, generator=gen(0)))
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_manifold_mixup_layer_with_another_batch_axis(tiny_net):
    class SeqFirst(torch.nn.Module):
        def forward(self, h):
            return h.transpose(0, 1)

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), SeqFirst())
    with pytest.raises(mixkit.ShapeError, match="output of layer '2'"):
        mixkit.ManifoldMixup(layers=["2"])(torch.rand(4, 3, 2, 2), torch.arange(4), model=net)


def test_blends_gradcheck():
    x = torch.rand(3, 2, 3, 3, dtype=torch.float64, generator=gen(0), requires_grad=True)
    index = torch.tensor([2, 0, 1])
    lam = torch.tensor([0.2, 0.7, 0.5], dtype=torch.float64)
    soft_mask = torch.rand(3, 1, 3, 3, dtype=torch.float64, generator=gen(1))
    assert torch.autograd.gradcheck(lambda z: MF.blend(z, index, lam), (x,))
    assert torch.autograd.gradcheck(lambda z: MF.bc_plus_blend(z, index, lam), (x,))
    assert torch.autograd.gradcheck(lambda z: MF.mask_blend(z, index, soft_mask), (x,))
    m = soft_mask.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda mm: MF.mask_blend(x.detach(), index, mm), (m,))


def test_fmix_lambda_statistics_match_beta():
    x = torch.zeros(4000, 1, 16, 16)
    lam = mixkit.FMix(mode="elem").sample(x, generator=gen(2)).lam  # Beta(1, 1) = U(0, 1), realised
    assert abs(float(lam.mean()) - 0.5) < 0.015 and abs(float(lam.var()) - 1 / 12) < 0.006


def test_cutmix_realised_lambda_matches_the_reference_rule_in_distribution():
    """An independent numpy simulation of the reference code's box rule, same statistics."""
    n, size = 20000, 32
    lam = mixkit.CutMix(mode="elem").sample(torch.zeros(n, 1, size, size), generator=gen(3)).lam.numpy()
    r = np.random.default_rng(0)
    draw = r.beta(1.0, 1.0, n)
    cut = (size * np.sqrt(1 - draw)).astype(int)
    cx, cy = r.integers(0, size, n), r.integers(0, size, n)
    w = np.clip(cx + cut // 2, 0, size) - np.clip(cx - cut // 2, 0, size)
    h = np.clip(cy + cut // 2, 0, size) - np.clip(cy - cut // 2, 0, size)
    ref = 1 - w * h / size**2
    assert abs(lam.mean() - ref.mean()) < 0.01 and abs(lam.std() - ref.std()) < 0.01
