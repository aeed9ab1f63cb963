"""AugMix: its operations against independent references, its draws, its mixture and its loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mixkit
from conftest import TinyNet, gen
from mixkit.functional.augment_ops import (
    ALL_OPS,
    AUGMIX_OPS,
    ChainDraws,
    apply_chains,
    apply_op,
    apply_ops,
    augment_chains,
    random_ops,
    sample_chains,
    sample_ops,
)
from mixkit.methods.augmix import AugMix, augmix_jsd


def levels_image(b=3, c=3, h=9, w=11, seed=0):
    """Float pixels that are exact uint8 levels, and the levels."""
    q = torch.randint(0, 256, (b, c, h, w), generator=gen(seed))
    return q.double() / 255, q


def zeros(b):
    return torch.zeros(b, dtype=torch.float64)


# ------------------------------------------------------------- operations vs references
def test_posterize_masks_low_bits():
    x, q = levels_image()
    bits = torch.tensor([1.0, 3.0, 4.0])
    out = apply_op(x, "posterize", bits)
    for i, nb in enumerate([1, 3, 4]):
        mask = (0xFF << (8 - nb)) & 0xFF
        torch.testing.assert_close(out[i], (q[i] & mask).double() / 255)


def test_solarize_inverts_levels_at_or_above_threshold():
    x, q = levels_image()
    thr = torch.tensor([0.0, 128.0, 256.0])
    out = apply_op(x, "solarize", thr)
    for i, t in enumerate([0, 128, 256]):
        ref = torch.where(q[i] >= t, 255 - q[i], q[i]).double() / 255
        torch.testing.assert_close(out[i], ref)


def test_autocontrast_stretches_each_channel_from_min_to_max():
    x = torch.rand(2, 3, 6, 7, generator=gen(1), dtype=torch.float64) * 0.5 + 0.2
    x[1, 2] = 0.4  # a flat channel stays as it is
    out = apply_op(x, "autocontrast", zeros(2))
    for i in range(2):
        for c in range(3):
            ch = x[i, c]
            ref = ch if ch.max() == ch.min() else (ch - ch.min()) / (ch.max() - ch.min())
            torch.testing.assert_close(out[i, c], ref)
    # the ends exactly, in every dtype (PixMix's multiplicative rounds clip a partner's darkest
    # pixel at 5e-38: a leftover 1e-8 there changed its pixels by up to 0.45)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = (torch.rand(16, 3, 8, 8, generator=gen(2)) * 0.6 + 0.2).to(dtype)
        out = apply_op(x, "autocontrast", zeros(16)).flatten(2)
        assert bool((out.amin(2) == 0).all()) and bool((out.amax(2) == 1).all()), dtype


def np_equalize(ch: np.ndarray) -> np.ndarray:
    """PIL's ImageOps.equalize of one uint8 channel, written with a Python loop."""
    h = np.bincount(ch.ravel(), minlength=256)
    present = h[h > 0]
    if len(present) <= 1:
        return ch
    step = (int(present.sum()) - int(present[-1])) // 255
    if step == 0:
        return ch
    lut, n = np.zeros(256, dtype=np.int64), step // 2
    for i in range(256):
        lut[i] = min(255, n // step)
        n += int(h[i])
    return lut[ch]


def test_equalize_matches_numpy_histogram_equalisation():
    q = torch.randint(0, 256, (3, 3, 17, 19), generator=gen(2))
    q[0, 1] = q[0, 1] // 8 + 100  # a narrow histogram
    q[1, 0] = 7  # one level only
    q[2, 2] = torch.where(q[2, 2] > 128, 200, 30)  # two levels
    out = apply_op(q.double() / 255, "equalize", zeros(3))
    ref = np.stack([[np_equalize(q[i, c].numpy()) for c in range(3)] for i in range(3)])
    torch.testing.assert_close(out, torch.from_numpy(ref).double() / 255)


@pytest.mark.parametrize("shift", [3, -2])
def test_translation_by_whole_pixels_is_a_roll_with_zero_fill(shift):
    x = torch.rand(2, 3, 8, 10, generator=gen(3), dtype=torch.float64)
    mag = torch.full((2,), float(shift), dtype=torch.float64)
    for op, dim in (("translate_x", 3), ("translate_y", 2)):
        ref = torch.roll(x, -shift, dims=dim)  # PIL: output pixel (x) reads input (x + shift)
        n = x.shape[dim]
        lost = torch.arange(n - shift, n) if shift > 0 else torch.arange(0, -shift)
        ref.index_fill_(dim, lost, 0.0)
        torch.testing.assert_close(apply_op(x, op, mag), ref)


def test_shear_and_rotation_by_zero_are_identities_and_rotation_keeps_the_centre():
    x = torch.rand(2, 1, 9, 9, generator=gen(4), dtype=torch.float64)
    for op in ("rotate", "shear_x", "shear_y"):
        torch.testing.assert_close(apply_op(x, op, zeros(2)), x)
    r = apply_op(x, "rotate", torch.tensor([90.0, -90.0], dtype=torch.float64))
    torch.testing.assert_close(r[0, 0], torch.rot90(x[0, 0], 1), atol=1e-9, rtol=0)  # counter-clockwise
    torch.testing.assert_close(r[1, 0], torch.rot90(x[1, 0], -1), atol=1e-9, rtol=0)


@pytest.mark.parametrize("op,mag", [("rotate", 13.0), ("shear_x", 0.21), ("shear_y", -0.17), ("translate_x", 4.0),
                                    ("translate_x", 2.5), ("translate_x", -1.5), ("translate_y", 0.5),
                                    ("shear_x", 1.0), ("shear_y", -0.5),
                                    ("autocontrast", 0.0), ("equalize", 0.0), ("posterize", 3.0),
                                    ("solarize", 180.0), ("color", 0.4), ("contrast", 1.6),
                                    ("brightness", 0.7), ("sharpness", 1.8)])
def test_operations_agree_with_pil_within_rounding(op, mag):
    pil = pytest.importorskip("PIL.Image")
    from PIL import ImageEnhance, ImageOps

    img = np.random.default_rng(0).integers(0, 256, (12, 14, 3), dtype=np.uint8)
    im, (w, h) = pil.fromarray(img), (14, 12)
    affine = {"shear_x": (1, mag, 0, 0, 1, 0), "shear_y": (1, 0, 0, mag, 1, 0), "translate_x": (1, 0, mag, 0, 1, 0),
              "translate_y": (1, 0, 0, 0, 1, mag)}
    ref = {
        "rotate": lambda: im.rotate(mag, resample=pil.BILINEAR),
        "autocontrast": lambda: ImageOps.autocontrast(im), "equalize": lambda: ImageOps.equalize(im),
        "posterize": lambda: ImageOps.posterize(im, int(mag)), "solarize": lambda: ImageOps.solarize(im, int(mag)),
        "color": lambda: ImageEnhance.Color(im).enhance(mag),
        "contrast": lambda: ImageEnhance.Contrast(im).enhance(mag),
        "brightness": lambda: ImageEnhance.Brightness(im).enhance(mag),
        "sharpness": lambda: ImageEnhance.Sharpness(im).enhance(mag),
    }.get(op, lambda: im.transform((w, h), pil.AFFINE, affine[op], resample=pil.BILINEAR))()
    expected = torch.from_numpy(np.array(ref)).permute(2, 0, 1).double()
    x = torch.from_numpy(img.copy()).permute(2, 0, 1).unsqueeze(0).double() / 255
    ours = apply_op(x, op, torch.tensor([mag], dtype=torch.float64))[0] * 255
    # PIL truncates or rounds each result (and its grey or smoothed image) to uint8
    tol = {"autocontrast": 2.0, "color": 1.5, "sharpness": 1.5}.get(op, 1.0)
    assert float((ours - expected).abs().max()) <= tol + 1e-6


def test_grouped_batch_equals_each_sample_alone():
    x = torch.rand(26, 3, 10, 12, generator=gen(5))
    op_index, mag = sample_ops((26,), (10, 12), severity=10, ops=ALL_OPS, generator=gen(6))
    op_index[0] = -1
    out = apply_ops(x, op_index, mag, ALL_OPS)
    assert torch.equal(out[0], x[0])
    for b in range(1, 26):
        alone = apply_op(x[b : b + 1], ALL_OPS[int(op_index[b])], mag[b : b + 1])
        torch.testing.assert_close(out[b : b + 1], alone, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------- draws
def test_ops_are_drawn_uniformly_and_independently_across_samples():
    n, k = 6000, len(AUGMIX_OPS)
    op_index, _ = sample_ops((n, 2), (32, 32), generator=gen(7))
    joint = torch.bincount(op_index[:, 0] * k + op_index[:, 1], minlength=k * k).double()
    expected = n / (k * k)
    chi2 = float(((joint - expected) ** 2 / expected).sum())
    assert chi2 < 80 + 4 * math.sqrt(2 * 80)  # 80 degrees of freedom: far above means dependence


def test_magnitudes_follow_the_reference_mapping_at_severity_3():
    op_index, mag = sample_ops((20000,), (32, 32), severity=3, generator=gen(8))
    by = {name: mag[op_index == k] for k, name in enumerate(AUGMIX_OPS)}
    assert set(by["posterize"].unique().tolist()) == {3.0, 4.0}  # 4 - int(U(.1, 3) * 4 / 10)
    assert by["solarize"].min() >= 256 - 76 and by["solarize"].max() <= 256 - 2
    assert by["rotate"].abs().max() <= 8 and torch.equal(by["rotate"], by["rotate"].round())
    assert by["shear_x"].abs().max() < 0.09 and by["shear_x"].abs().min() >= 0.003
    assert by["translate_y"].abs().max() <= 3  # int(U(.1, 3) * (32 / 3) / 10)
    for name in ("rotate", "shear_x", "translate_x"):
        nonzero = by[name][by[name] != 0]
        assert abs(float((nonzero < 0).double().mean()) - 0.5) < 0.04  # the random sign
    assert (by["autocontrast"] == 0).all()


def test_chain_draw_statistics():
    d = sample_chains(20000, (8, 8), width=3, depth=-1, alpha=1.0, generator=gen(9))
    torch.testing.assert_close(d.weights.sum(dim=1), torch.ones(20000, dtype=torch.float64))
    torch.testing.assert_close(d.weights.mean(dim=0), torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.01, rtol=0)
    assert abs(float(d.weights[:, 0].var()) - 2 / 36) < 0.004  # Dirichlet(1,1,1): a(a0-a)/(a0^2 (a0+1))
    assert abs(float(d.m.mean()) - 0.5) < 0.01 and abs(float(d.m.var()) - 1 / 12) < 0.004  # Beta(1, 1)
    depth = (d.ops >= 0).sum(dim=2)
    rates = torch.bincount(depth.flatten(), minlength=4)[1:].double() / depth.numel()
    torch.testing.assert_close(rates, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.01, rtol=0)
    assert ((d.ops >= 0).long().diff(dim=2) <= 0).all()  # chains are prefixes: no gap before the end
    beta = sample_chains(20000, (8, 8), alpha=0.5, generator=gen(10)).m
    assert abs(float(beta.var()) - 0.125) < 0.005  # Beta(a, a): 1 / (4 (2a + 1))


def test_apply_chains_is_the_published_mixture():
    x = torch.rand(2, 3, 6, 6, generator=gen(11), dtype=torch.float64)
    ops = torch.tensor([[[7, -1], [2, 7]], [[-1, -1], [4, -1]]])  # translate_x, posterize, solarize
    mag = torch.tensor([[[1.0, 0.0], [4.0, -2.0]], [[0.0, 0.0], [128.0, 0.0]]], dtype=torch.float64)
    w = torch.tensor([[0.3, 0.7], [0.6, 0.4]], dtype=torch.float64)
    m = torch.tensor([0.25, 0.8], dtype=torch.float64)
    out = apply_chains(x, ChainDraws(ops, mag, w, m))
    c00 = apply_op(x[:1], "translate_x", torch.tensor([1.0]))
    c01 = apply_op(apply_op(x[:1], "posterize", torch.tensor([4.0])), "translate_x", torch.tensor([-2.0]))
    c11 = apply_op(x[1:], "solarize", torch.tensor([128.0]))
    torch.testing.assert_close(out[:1], 0.25 * x[:1] + 0.75 * (0.3 * c00 + 0.7 * c01))
    torch.testing.assert_close(out[1:], 0.8 * x[1:] + 0.2 * (0.6 * x[1:] + 0.4 * c11))


def test_random_ops_and_chains_stay_in_range_and_reproduce():
    x = torch.rand(5, 3, 12, 12, generator=gen(12))
    a = augment_chains(x, ops=ALL_OPS, severity=10, generator=gen(13))
    assert torch.equal(a, augment_chains(x, ops=ALL_OPS, severity=10, generator=gen(13)))
    r = random_ops(x, generator=gen(14))
    assert ((a >= 0) & (a <= 1)).all() and ((r >= 0) & (r <= 1)).all() and not torch.equal(r, x)
    with pytest.raises(mixkit.HyperParameterError, match="unknown operations"):
        random_ops(x, ops=("blur",))
    with pytest.raises(mixkit.DTypeError):
        random_ops((x * 255).to(torch.uint8))


# ------------------------------------------------------------------------------ method
def test_method_replays_the_functional_mixture_on_active_samples_only():
    x, y = torch.rand(16, 3, 10, 10, generator=gen(15)), torch.arange(16) % 5
    m = AugMix(p=0.5, mode="elem")
    out = m(x, y, generator=gen(16))
    act = out.params.active
    assert 0 < int(act.sum()) < 16 and (out.params.lam == 1).all() and out.target.k == 1
    assert torch.equal(out.x[~act], x[~act])
    ref = apply_chains(x[act], out.params.chains.take(act.nonzero().squeeze(1)))
    torch.testing.assert_close(out.x[act], ref)


def test_normalised_path_equals_the_pixel_path():
    x, y = torch.rand(6, 3, 12, 12, generator=gen(17), dtype=torch.float64), torch.arange(6) % 5
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    plain, normed = AugMix(all_ops=True), AugMix(all_ops=True)
    normed.set_input_normalization(mean.flatten().tolist(), std.flatten().tolist())
    params = plain.sample(x, y, generator=gen(18))
    via_norm = normed.apply((x - mean) / std, params) * std + mean
    torch.testing.assert_close(via_norm, plain.apply(x, params))


# -------------------------------------------------------------------------------- loss
def test_jsd_is_zero_for_equal_logits_and_matches_the_entropy_formula():
    z = torch.randn(5, 7, generator=gen(19), dtype=torch.float64)
    assert abs(float(augmix_jsd(z, z + 3.0, z))) < 1e-12  # softmax is shift-invariant
    a, b = torch.randn(5, 7, generator=gen(20), dtype=torch.float64), torch.randn(5, 7, generator=gen(21),
                                                                                     dtype=torch.float64)
    ps = [torch.softmax(v, dim=1) for v in (z, a, b)]
    mix = sum(ps) / 3

    def entropy(p):
        return -(p * p.log()).sum(dim=1)

    ref = (entropy(mix) - sum(entropy(p) for p in ps) / 3).mean()
    torch.testing.assert_close(augmix_jsd(z, a, b), ref)
    assert float(augmix_jsd(z, a, b)) <= math.log(3)


def test_jsd_gradcheck():
    logits = [torch.randn(3, 4, generator=gen(22 + i), dtype=torch.float64, requires_grad=True) for i in range(3)]
    assert torch.autograd.gradcheck(augmix_jsd, logits)


def test_train_step_jsd_loss_and_decreasing_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = TinyNet(3, 5)
    y = torch.arange(10) % 5
    x = torch.rand(10, 3, 12, 12, generator=gen(23)) * 0.4 + 0.15 * y.view(-1, 1, 1, 1)  # learnable: brightness
    method = AugMix(num_classes=5)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    losses = []
    for _ in range(15):
        out = method.train_step(model, x, y, criterion=mixkit.mixup_cross_entropy, generator=gen(24))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert out.logits.shape == (10, 5) and out.target.k == 1 and out.logs["jsd"] >= 0
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])
    with torch.no_grad():
        ce = mixkit.mixup_cross_entropy(model(x), y)
        step = method.train_step(model, x, y, criterion=mixkit.mixup_cross_entropy, generator=gen(25))
    assert float(step.loss) >= float(ce) - 1e-6 and float(step.loss) - float(ce) == pytest.approx(
        12 * step.logs["jsd"], rel=1e-4, abs=1e-6)
    single = AugMix(jsd=False).train_step(model, x, y, criterion=mixkit.mixup_cross_entropy, generator=gen(26))
    assert "jsd" not in single.logs and single.logits.shape == (10, 5)


# ------------------------------------------------------------------ batched fast paths
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_whole_pixel_translation_copies_equal_the_resampling_warp(dtype):
    from mixkit.functional.augment_geometry import affine_matrices, translate, warp

    x = torch.rand(5, 3, 9, 12, generator=gen(11), dtype=dtype)
    shift = torch.tensor([0.0, 3.0, -4.0, 11.0, -13.0], dtype=torch.float64)  # past the edge too
    for op, axis in (("translate_x", 3), ("translate_y", 2)):
        warped = warp(x, affine_matrices((op,), (5,), shift, 9, 12))
        out = torch.empty_like(x)
        translate(x, shift, axis, out)
        torch.testing.assert_close(out, warped, atol=1e-5, rtol=0)
    half = torch.full((5,), 1.5, dtype=torch.float64)  # fractional shifts still resample
    warped = warp(x, affine_matrices(("translate_x",), (5,), half, 9, 12))
    torch.testing.assert_close(apply_op(x, "translate_x", half), warped)


def test_translations_grouped_by_shift_equal_each_row_alone():
    x = torch.rand(40, 2, 7, 10, generator=gen(21))
    op_index = torch.randint(7, 9, (40,), generator=gen(22))  # translate_x and translate_y
    shift = torch.randint(-12, 13, (40,), generator=gen(23)).double()  # many runs, in no order
    out = apply_ops(x, op_index, shift)
    for r in range(40):
        assert torch.equal(out[r : r + 1], apply_op(x[r : r + 1], AUGMIX_OPS[int(op_index[r])], shift[r : r + 1]))


def test_apply_ops_with_source_rows_equals_gathering_the_rows_first():
    x = torch.rand(4, 3, 10, 12, generator=gen(12))
    source = torch.tensor([3, 0, 0, 2, 3, 1, 1])
    op_index, mag = sample_ops((7,), (10, 12), severity=10, ops=ALL_OPS, generator=gen(13))
    op_index[2] = -1
    out = apply_ops(x, op_index, mag, ALL_OPS, source=source)
    assert torch.equal(out, apply_ops(x[source], op_index, mag, ALL_OPS))
    from mixkit.errors import ShapeError

    with pytest.raises(ShapeError):
        apply_ops(x, op_index, mag, ALL_OPS, source=torch.tensor([0, 1, 2, 3, 4, 0, 0]))


def test_grouped_results_are_each_rows_own():
    from mixkit.errors import ShapeError
    from mixkit.functional.augment_ops import apply_ops_grouped

    x = torch.rand(12, 3, 8, 8, generator=gen(14))
    op_index, mag = sample_ops((12,), (8, 8), severity=10, ops=ALL_OPS, generator=gen(15))
    op_index[::3] = -1  # rows left alone are copied
    source = torch.tensor([3, 0, 0, 2, 3, 1, 1, 5, 11, 10, 4, 4])
    out = torch.empty_like(x)
    order = apply_ops_grouped(x, source, op_index, mag, out, ALL_OPS)
    assert sorted(order.tolist()) == list(range(12))
    for j, r in enumerate(order.tolist()):
        s = int(source[r])
        assert torch.equal(out[j], apply_ops(x[s : s + 1], op_index[r : r + 1], mag[r : r + 1], ALL_OPS)[0])
    with pytest.raises(ShapeError):
        apply_ops_grouped(x, source, op_index, mag, out[:5], ALL_OPS)
    with pytest.raises(ShapeError):
        apply_ops_grouped(x.contiguous(memory_format=torch.channels_last), source, op_index, mag, out, ALL_OPS)


def test_apply_chains_equals_each_sample_chain_by_hand():
    x = torch.rand(5, 3, 8, 9, generator=gen(16))
    draws = sample_chains(5, (8, 9), width=3, depth=-1, severity=10, ops=ALL_OPS, generator=gen(17))
    out = apply_chains(x, draws, ALL_OPS)
    for b in range(5):
        mix = torch.zeros_like(x[b : b + 1])
        for i in range(3):
            img = x[b : b + 1]
            for step in range(draws.ops.shape[2]):
                if int(draws.ops[b, i, step]) >= 0:
                    img = apply_op(img, ALL_OPS[int(draws.ops[b, i, step])], draws.magnitude[b, i, step : step + 1])
            mix += float(draws.weights[b, i]) * img
        want = float(draws.m[b]) * x[b : b + 1] + (1 - float(draws.m[b])) * mix
        torch.testing.assert_close(out[b : b + 1], want, atol=1e-5, rtol=0)


def test_apply_chains_refuses_inputs_or_statistics_that_require_grad():
    from mixkit.functional.augment_chains import apply_chains, sample_chains

    x = torch.rand(2, 3, 8, 8, generator=gen(3))
    draws = sample_chains(2, (8, 8), generator=gen(4))
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    with pytest.raises(ValueError, match="x requires grad"):
        apply_chains(x.requires_grad_(), draws)
    x = x.detach()
    with pytest.raises(ValueError, match=r"normalization \(mean, std\) requires grad"):
        apply_chains((x - 0.5) / 0.25, draws, normalization=(mean.requires_grad_(), std))
    with torch.no_grad():  # fine without autograd: the same values as with plain statistics
        got = apply_chains((x - 0.5) / 0.25, draws, normalization=(mean, std))
    assert torch.equal(got, apply_chains((x - 0.5) / 0.25, draws, normalization=(mean.detach(), std)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_rows_embedding_bag_and_gathers_agree(dtype, monkeypatch):
    from mixkit.functional import augment_chains

    g = torch.Generator().manual_seed(0)
    table = torch.rand(20, 48, generator=g, dtype=dtype)
    sources = torch.randint(0, 20, (6, 4), generator=g)
    weights = torch.rand(6, 4, generator=g, dtype=dtype)
    want = sum(weights[:, j : j + 1] * table[sources[:, j]] for j in range(4))
    fast = augment_chains.weighted_rows(table, sources, weights)
    monkeypatch.setattr(augment_chains, "_CHAIN_KEEP_BYTES", 0)  # the gathers, as for a large table
    slow = augment_chains.weighted_rows(table, sources, weights)
    torch.testing.assert_close(fast, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-7)  # summed in the same order (equal here)
