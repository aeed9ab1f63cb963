"""Local Mixup, SamplePairing and the mixed-example variants: properties with hand-built params."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import mixkit
from mixkit.functional.mixed_example import (
    BLENDING_VARIANTS,
    MIXED_EXAMPLE_VARIANTS,
    sample_mixed_example,
    shifted_mask_mix,
)
from mixkit.methods.linear_more import distance_matrix, local_partners, pair_distances
from mixkit.methods.mixed_example import MixedExampleParams


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------- Local Mixup
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_pair_distances_match_a_direct_loop(dtype):
    x = torch.randn(6, 3, 5, 4, generator=gen(0)).to(dtype)
    index = torch.randperm(6, generator=gen(1))
    got = pair_distances(x, index)
    ref = torch.tensor([math.sqrt(sum(float(v) ** 2 for v in (x[b].double() - x[index[b]].double()).flatten()))
                        for b in range(6)], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    mat = distance_matrix(x)
    for a in range(6):
        for b in range(6):
            d = float(torch.linalg.vector_norm(x[a].double() - x[b].double()))
            assert abs(float(mat[a, b]) - d) <= 1e-3 * max(1.0, d)


def two_clusters(b: int = 8):
    g = gen(2)
    centre = torch.where(torch.arange(b) % 2 == 0, 0.0, 10.0).view(b, 1, 1, 1)
    return centre + 0.1 * torch.rand(b, 2, 3, 3, generator=g), torch.arange(b) % 3


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_local_mixup_leaves_far_pairs_unmixed(mode):
    x, y = two_clusters()
    eps = 2.0
    for seed in range(6):
        out = mixkit.create("local_mixup", epsilon=eps, mode=mode)(x, y, generator=gen(seed))
        perm = torch.randperm(8, generator=gen(seed))  # the method's first draw
        near = torch.tensor([float(torch.linalg.vector_norm(x[b] - x[perm[b]])) <= eps for b in range(8)])
        own = torch.arange(8)
        assert torch.equal(out.params.index, torch.where(near, perm, own))
        assert (out.params.lam[~near] == 1).all() and (out.params.lam[near] < 1).all()
        assert torch.equal(out.x[~near], x[~near])  # far pairs: the clean sample
        lam = out.params.lam.float().view(-1, 1, 1, 1)
        torch.testing.assert_close(out.x, lam * x + (1 - lam) * x[out.params.index])
        soft = out.target.soft(3)
        torch.testing.assert_close(soft[~near], F.one_hot(y[~near], 3).double().to(soft.dtype))


def test_local_mixup_limits_are_mixup_and_erm():
    x, y = torch.rand(6, 3, 4, 4, generator=gen(3)), torch.arange(6)
    a = mixkit.create("local_mixup", epsilon=math.inf, mode="elem")(x, y, generator=gen(4))
    b = mixkit.create("mixup", mode="elem")(x, y, generator=gen(4))
    assert torch.equal(a.x, b.x) and torch.equal(a.params.lam, b.params.lam)
    c = mixkit.create("local_mixup", epsilon=0.0)(x, y, generator=gen(4))
    assert torch.equal(c.x, x) and (c.params.lam == 1).all()


def test_local_pairing_draws_uniformly_among_close_rows():
    close = torch.tensor([[1, 1, 0, 1], [0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    draws = torch.stack([local_partners(close, generator=g) for g in [gen(5)] for _ in range(3000)])
    for row in range(4):
        freq = torch.bincount(draws[:, row], minlength=4).double() / 3000
        expected = close[row].double() / close[row].sum()
        assert (freq[~close[row]] == 0).all()
        assert float((freq - expected).abs().max()) < 0.04
    x, y = two_clusters()
    out = mixkit.create("local_mixup", epsilon=2.0, pairing="local")(x, y, generator=gen(6))
    assert torch.equal(out.params.index % 2, torch.arange(8) % 2)  # partners from the own cluster


# ---------------------------------------------------------------------------------- SamplePairing
def test_sample_pairing_averages_and_keeps_the_first_label():
    x, y = torch.rand(5, 3, 4, 4, generator=gen(7)), torch.tensor([0, 1, 2, 3, 4])
    out = mixkit.create("sample_pairing", num_classes=5)(x, y, generator=gen(8))
    i = out.params.index
    assert torch.equal(i, torch.randperm(5, generator=gen(8)))
    torch.testing.assert_close(out.x, (x + x[i]) / 2)
    assert out.target.k == 1 and (out.params.lam == 1).all() and (out.params.weight == 0.5).all()
    torch.testing.assert_close(out.target.soft(), F.one_hot(y, 5).float())


def test_sample_pairing_probability_per_sample():
    x, y = torch.rand(400, 1, 2, 2, generator=gen(9)), torch.zeros(400, dtype=torch.long)
    m = mixkit.create("sample_pairing", p=0.5, mode="elem")
    out = m(x, y, generator=gen(10))
    paired = out.params.weight == 0.5
    assert 0.4 < float(paired.double().mean()) < 0.6
    assert torch.equal(out.x[~paired], x[~paired]) and torch.equal(out.params.index[~paired], torch.arange(400)[~paired])
    assert torch.equal(m.apply(x, out.params), out.x)
    off = mixkit.create("sample_pairing", p=0.0)(x, y, generator=gen(10))
    assert torch.equal(off.x, x) and off.x.data_ptr() != x.data_ptr()


# --------------------------------------------------------------------------------- Mixed example
SIZE = (3, 12, 10)  # C, H, W: not square, to catch swapped axes


def coded_batch(b: int = 5) -> torch.Tensor:
    """Every value unique: sample id and position are readable from the value."""
    return torch.arange(b * math.prod(SIZE), dtype=torch.float64).view(b, *SIZE)


def mixed(variant, x, seed, **kw):
    b = x.shape[0]
    m = mixkit.create("mixed_example", variant=variant, **kw)
    params = m.sample(x, generator=gen(seed))
    derangement = (torch.arange(b) + 1) % b  # no sample paired with itself
    params = dataclasses.replace(params, index=derangement)
    return m.apply(x, params), params


@pytest.mark.parametrize("variant", MIXED_EXAMPLE_VARIANTS)
def test_label_weight_is_the_share_of_the_sample(variant):
    x = coded_batch()
    for seed in range(4):
        out, params = mixed(variant, x, seed)
        if variant in BLENDING_VARIANTS:
            mask = params.mask.double()
            partner = x[params.index]
            torch.testing.assert_close(out, mask * x + (1 - mask) * partner)
            share = mask.flatten(1).mean(dim=1)
            tol = 0.02 if variant == "noisy_mixup" else 1e-6  # noisy: label = drawn coefficient
            assert float((share - params.lam).abs().max()) < tol
        else:
            realised = (out == x).flatten(1).double().mean(dim=1)  # own pixels are never equal otherwise
            torch.testing.assert_close(realised, params.lam)
            torch.testing.assert_close(params.mask.flatten(1).double().mean(dim=1), params.lam)


def brute(mask: torch.Tensor, candidates) -> bool:
    return any(torch.equal(mask, m) for m in candidates)


@pytest.mark.parametrize("variant", ["vertical_concat", "horizontal_concat", "mixed_concat", "random_2x2"])
def test_split_masks_have_the_documented_structure(variant):
    _, h, w = SIZE
    i, j = torch.arange(h).view(h, 1), torch.arange(w).view(1, w)
    mask, lam, rows, cols = sample_mixed_example(variant, 40, SIZE, generator=gen(11))
    assert mask.shape == (40, 1, h, w) and mask.dtype == torch.bool and rows is None and cols is None
    hb, wb = round(h / 4), round(w / 4)
    for m in mask[:, 0]:
        if variant == "vertical_concat":
            ok = brute(m, [(i < r).expand(h, w) for r in range(h)])
        elif variant == "horizontal_concat":
            ok = brute(m, [(j < c).expand(h, w) for c in range(w)])
        elif variant == "mixed_concat":
            ok = brute(m, [(i < r) == (j < c) for r in range(h) for c in range(w)])
        else:  # four quadrants, each wholly kept or replaced, split away from the borders
            quads = [((i >= r).long() * 2 + (j >= c).long(), r, c) for r in range(hb, h - hb) for c in range(wb, w - wb)]
            ok = any(all(m[q == k].unique().numel() == 1 for k in range(4)) for q, _, _ in quads)
        assert ok


def test_lines_pixels_and_elements_masks():
    _, h, w = SIZE
    rows, _, _, _ = sample_mixed_example("random_rows", 30, SIZE, generator=gen(12))
    assert (rows == rows[..., :1]).all()  # constant along each row
    cols, _, _, _ = sample_mixed_example("random_cols", 30, SIZE, generator=gen(12))
    assert (cols == cols[..., :1, :]).all()  # constant along each column
    pixels, _, _, _ = sample_mixed_example("random_pixels", 30, SIZE, generator=gen(12))
    elems, _, _, _ = sample_mixed_example("random_elements", 30, SIZE, generator=gen(12))
    assert pixels.shape == (30, 1, h, w) and elems.shape == (30, *SIZE)
    assert not (elems == elems[:, :1]).all()  # channels differ


def test_interval_and_square_variants_match_the_reference_slicing():
    """An independent re-implementation of the code's slicing, from the drawn params."""
    x = coded_batch()
    for seed in range(6):
        out, p = mixed("random_col_interval", x, seed)
        for b in range(5):
            gone = (~p.mask[b, 0, 0]).nonzero().flatten()
            i1, i2 = (int(gone[0]), int(gone[-1]) + 1) if gone.numel() else (0, 0)
            i3 = int(p.cols[b, i1]) if gone.numel() else 0
            ref = torch.cat([x[b][:, :, :i1], x[p.index[b]][:, :, i3:i3 + i2 - i1], x[b][:, :, i2:]], dim=2)
            assert torch.equal(out[b], ref) and gone.numel() == i2 - i1
        out, p = mixed("random_row_interval", x, seed)
        for b in range(5):
            gone = (~p.mask[b, 0, :, 0]).nonzero().flatten()
            i1, i2 = (int(gone[0]), int(gone[-1]) + 1) if gone.numel() else (0, 0)
            i3 = int(p.rows[b, i1]) if gone.numel() else 0
            ref = torch.cat([x[b][:, :i1], x[p.index[b]][:, i3:i3 + i2 - i1], x[b][:, i2:]], dim=1)
            assert torch.equal(out[b], ref)
        out, p = mixed("random_square", x, seed)
        for b in range(5):
            box = (~p.mask[b, 0]).nonzero()
            r1, c1 = box.min(dim=0).values.tolist()
            r2, c2 = (box.max(dim=0).values + 1).tolist()
            assert box.shape[0] == (r2 - r1) * (c2 - c1) and max(r2 - r1, c2 - c1) <= 5  # side round(0.5 * 10)
            sr, sc = int(p.rows[b, r1]), int(p.cols[b, c1])
            ref = x[b].clone()
            ref[:, r1:r2, c1:c2] = x[p.index[b]][:, sr:sr + r2 - r1, sc:sc + c2 - c1]
            assert torch.equal(out[b], ref)


def test_lambda_statistics_against_closed_forms():
    _, h, w = SIZE
    n = 4000
    _, lam, _, _ = sample_mixed_example("vertical_concat", n, SIZE, generator=gen(13))
    assert abs(float(lam.mean()) - (h - 1) / (2 * h)) < 0.015  # r ~ U{0..H-1}
    for variant in ("random_2x2", "random_pixels", "random_rows"):  # q ~ U(0, 1) per pair
        _, lam, _, _ = sample_mixed_example(variant, n, SIZE, generator=gen(14))
        assert abs(float(lam.mean()) - 0.5) < 0.02, variant
    _, lam, _, _ = sample_mixed_example("vh_mixup", n, SIZE, generator=gen(14))
    assert abs(float(lam.mean()) - ((h - 1) / (4 * h) + (w - 1) / (4 * w))) < 0.015  # E[m r/H + (1-m) c/W]
    mask, lam, _, _ = sample_mixed_example("noisy_mixup", 200, SIZE, generator=gen(15))
    inner = (lam > 0.2) & (lam < 0.8)  # away from the clipping
    dev = (mask[inner].double() - lam[inner].view(-1, 1, 1, 1))
    assert abs(float(dev.std()) - 0.025) < 0.002
    mask, lam, _, _ = sample_mixed_example("vh_mixup", 10, SIZE, generator=gen(16))
    assert all(m.unique().numel() <= 4 for m in mask)  # values in {0, m, 1 - m, 1}


@pytest.mark.parametrize("variant", MIXED_EXAMPLE_VARIANTS)
def test_mixed_example_dtypes_batch_mode_and_probability(variant):
    x = torch.rand(3, 3, 6, 5, generator=gen(17))
    y = torch.tensor([0, 1, 2])
    m = mixkit.create("mixed_example", variant=variant, mode="batch")
    out = m(x, y, generator=gen(18))
    assert out.params.mask.shape[0] == 1 and out.params.lam.unique().numel() == 1
    xu = (x * 255).to(torch.uint8)
    if variant in BLENDING_VARIANTS:
        with pytest.raises(mixkit.DTypeError, match="floating point"):
            m(xu, y)
    else:
        ou = m(xu, y, generator=gen(18))
        assert ou.x.dtype == torch.uint8 and torch.equal(ou.x, m.apply(xu.double(), ou.params).to(torch.uint8))
    one = mixkit.create("mixed_example", variant=variant)(x[:1], y[:1], generator=gen(19))
    if one.params.rows is None and one.params.cols is None:
        assert torch.equal(one.x, x[:1])  # a batch of one pairs the sample with itself
    torch.testing.assert_close(one.target.soft(3), F.one_hot(y[:1], 3).float())
    half = mixkit.create("mixed_example", variant=variant, p=0.5)
    for seed in range(3):
        o = half(x, y, generator=gen(seed))
        off = o.params.lam == 1
        assert torch.equal(o.x[off & (o.params.index == torch.arange(3))], x[off & (o.params.index == torch.arange(3))])


def test_params_are_checked_and_channels_last_kept():
    x = torch.rand(2, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    m = mixkit.create("mixed_example", variant="random_square")
    out = m(x, torch.tensor([0, 1]), generator=gen(20))
    assert out.x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(mixkit.ShapeError):
        m.apply(torch.rand(2, 3, 7, 6), out.params)
    bad = dataclasses.replace(out.params, rows=out.params.rows[:, :3])
    with pytest.raises(mixkit.ShapeError):
        m.apply(x, bad)
    with pytest.raises(mixkit.HyperParameterError):
        mixkit.create("mixed_example", variant="random_squares")


def test_shifted_mix_gradcheck():
    x = torch.rand(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    rows = torch.tensor([[2, 0, 1], [0, 1, 2]])

    def fn(t):
        return shifted_mask_mix(t, torch.tensor([1, 0]), mask, rows, None)

    assert torch.autograd.gradcheck(fn, (x,))
    p = MixedExampleParams(index=torch.tensor([1, 0]), lam=torch.zeros(2, dtype=torch.float64), mask=mask > 2, rows=rows)
    out = mixkit.create("mixed_example").apply(x.detach(), p)  # all from the partner, rows moved
    assert torch.equal(out[0], x.detach()[1][:, rows[0]]) and torch.equal(out[1], x.detach()[0][:, rows[1]])
