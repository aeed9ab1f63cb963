"""Properties of the k-sample family (RICAP, Mosaic, DCutMix, Cut-Thumbnail, k-Mixup), on
hand-built params and against small independent re-implementations of the published rules."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mixkit
from mixkit.functional.multi import (
    chain_sources,
    layer_map,
    linear_assignment,
    match_clouds,
    nested_shares,
    paste_nested,
    paste_thumbnails,
    quadrant_cells,
    quadrant_shares,
    sample_nested_boxes,
    tile_quadrants,
)
from mixkit.methods.multi import TileParams


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def labelled(b: int, h: int, w: int) -> torch.Tensor:
    """Images whose every pixel encodes (row of the batch, y, x), so crops can be traced."""
    rows = torch.arange(b).view(b, 1, 1, 1) * 10_000
    ys = torch.arange(h).view(1, 1, h, 1) * 100
    xs = torch.arange(w).view(1, 1, 1, w)
    return (rows + ys + xs).expand(b, 2, h, w).double().contiguous()


# ----------------------------------------------------------------------------------- sources
@pytest.mark.parametrize("b, k", [(1, 4), (3, 4), (4, 4), (9, 5)])
def test_chain_sources_are_permutations_with_self_first(b, k):
    src = chain_sources(b, k, generator=gen(0))
    assert src.shape == (b, k) and torch.equal(src[:, 0], torch.arange(b))
    for j in range(k):
        assert torch.equal(src[:, j].sort().values, torch.arange(b))
    if b >= k:
        assert all(len(set(row)) == k for row in src.tolist())


# ------------------------------------------------------------------------------------- RICAP
def reference_tiles(x, params):
    """Per-sample loop over the four cells, written from the RICAP description."""
    out = torch.empty_like(x)
    h, w = x.shape[2:]
    for b in range(x.shape[0]):
        g = 0 if params.centre.shape[0] == 1 else b
        cy, cx = params.centre[g].tolist()
        cells = [(0, 0, cy, cx), (0, cx, cy, w), (cy, 0, h, cx), (cy, cx, h, w)]
        for k, (t, l, bo, r) in enumerate(cells):
            sy, sx = params.offsets[g, k].tolist()
            src = x[int(params.sources[b, k])]
            out[b, :, t:bo, l:r] = src[:, sy : sy + bo - t, sx : sx + r - l]
    return out


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_ricap_quadrants_are_crops_of_their_sources_and_weights_are_areas(mode):
    x = labelled(6, 12, 10)
    m = mixkit.create("ricap", mode=mode, beta=1.0)
    for seed in range(5):
        out = m(x, torch.arange(6), generator=gen(seed))
        p = out.params
        torch.testing.assert_close(out.x, reference_tiles(x, p), rtol=0, atol=0)
        cells = quadrant_cells(p.centre, (12, 10))
        areas = ((cells[..., 2] - cells[..., 0]) * (cells[..., 3] - cells[..., 1])).double() / 120
        torch.testing.assert_close(p.weights, areas.expand(6, 4))
        torch.testing.assert_close(p.weights.sum(1), torch.ones(6, dtype=torch.float64))
        torch.testing.assert_close(p.lam, p.weights[:, 0])  # 6 >= 4: the own sample only in TL
        sides = cells[..., 2:] - cells[..., :2]
        assert bool((p.offsets >= 0).all()) and bool((p.offsets + sides <= torch.tensor([12, 10])).all())


def test_ricap_hand_built_params_and_uint8():
    x = (labelled(4, 6, 6) % 251).to(torch.uint8)
    src = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0], [2, 3, 0, 1], [3, 0, 1, 2]])
    w = quadrant_shares(torch.tensor([[2, 5]]), (6, 6)).expand(4, 4)
    params = TileParams(index=src[:, 1], lam=w[:, 0].clone(), sources=src, weights=w,
                        centre=torch.tensor([[2, 5]]), offsets=torch.tensor([[[4, 1], [0, 0], [1, 0], [0, 5]]]))
    out = mixkit.create("ricap").apply(x, params)
    assert out.dtype == torch.uint8
    assert torch.equal(out[:, :, :2, :5], x[src[:, 0]][:, :, 4:6, 1:6])
    assert torch.equal(out[:, :, :2, 5:], x[src[:, 1]][:, :, 0:2, 0:1])
    assert torch.equal(out[:, :, 2:, :5], x[src[:, 2]][:, :, 1:5, 0:5])
    assert torch.equal(out[:, :, 2:, 5:], x[src[:, 3]][:, :, 0:4, 5:6])
    assert torch.equal(out, reference_tiles(x, params))
    bad = TileParams(index=params.index, lam=params.lam, sources=src, weights=w,
                     centre=params.centre, offsets=torch.tensor([[[5, 1], [0, 0], [1, 0], [0, 5]]]))
    with pytest.raises(mixkit.ShapeError):
        mixkit.create("ricap").apply(x, bad)


def test_ricap_boundary_statistics():
    beta = 0.3
    x = torch.zeros(1, 1, 200, 200).expand(4000, 1, 200, 200)
    p = mixkit.create("ricap", beta=beta, mode="elem").sample(x, generator=gen(1))
    frac = p.centre.double() / 200
    var = 1 / (4 * (2 * beta + 1))
    assert abs(float(frac.mean()) - 0.5) < 0.02
    assert abs(float(frac.var()) - var) < 0.012


def test_ricap_small_batches_merge_repeated_sources():
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    out = mixkit.create("ricap", beta=1.0, num_classes=2)(x, y, generator=gen(3))
    p = out.params
    assert torch.equal(p.sources[:, 2], torch.arange(2))  # B = 2 repeats the sample
    torch.testing.assert_close(out.target.lam.double(), p.lam)
    torch.testing.assert_close(p.weights.sum(1), torch.ones(2, dtype=torch.float64))
    single = mixkit.create("ricap")(x[:1], y[:1], generator=gen(3))
    assert torch.equal(single.x, x[:1]) and float(single.params.lam[0]) == 1.0


# ------------------------------------------------------------------------------------ Mosaic
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_mosaic_cells_tile_the_image(mode):
    x = torch.zeros(1, 1, 13, 9).expand(50, 1, 13, 9)
    for placement in ("aligned", "corner"):
        p = mixkit.create("mosaic", mode=mode, placement=placement).sample(x, generator=gen(4))
        cells = quadrant_cells(p.centre, (13, 9))
        area = ((cells[..., 2] - cells[..., 0]) * (cells[..., 3] - cells[..., 1])).sum(1)
        assert bool((area == 13 * 9).all())
        cover = torch.zeros(p.centre.shape[0], 13, 9, dtype=torch.long)
        for k in range(4):
            for g, (t, l, b, r) in enumerate(cells[:, k].tolist()):
                cover[g, t:b, l:r] += 1
        assert bool((cover == 1).all())
        assert bool((p.centre[:, 0] >= 2).all() & (p.centre[:, 0] <= 10).all())  # int(.2*13)..int(.8*13)
        torch.testing.assert_close(p.weights.sum(1), torch.ones(50, dtype=torch.float64))


def test_mosaic_aligned_and_corner_against_the_stitched_grid():
    x = labelled(5, 10, 8)
    for seed in range(4):
        out = mixkit.create("mosaic", mode="elem")(x, torch.arange(5), generator=gen(seed))
        p = out.params
        for b in range(5):  # darknet: every cell shows the same region of its source
            cell = torch.zeros(10, 8, dtype=torch.long)
            cy, cx = p.centre[b].tolist()
            cell[cy:, :] += 2
            cell[:, cx:] += 1
            expected = x[p.sources[b, cell], 0, torch.arange(10).view(10, 1), torch.arange(8)]
            assert torch.equal(out.x[b, 0], expected)
        corner = mixkit.create("mosaic", mode="elem", placement="corner")(x, torch.arange(5), generator=gen(seed))
        p = corner.params
        for b in range(5):  # YOLO / keras-cv: an H x W window of the 2H x 2W grid of whole images
            s = x[p.sources[b]]
            grid = torch.cat([torch.cat([s[0], s[1]], 2), torch.cat([s[2], s[3]], 2)], 1)
            cy, cx = p.centre[b].tolist()
            assert torch.equal(corner.x[b], grid[:, 10 - cy : 20 - cy, 8 - cx : 16 - cx])
        torch.testing.assert_close(corner.params.weights, quadrant_shares(p.centre, (10, 8)))


# ----------------------------------------------------------------------------------- DCutMix
def test_nested_boxes_follow_the_reference_stick_breaking():
    shares = torch.from_numpy(np.random.default_rng(0).dirichlet([0.7] * 5, size=200))
    boxes = sample_nested_boxes(shares, (32, 24), generator=gen(5))
    assert boxes.shape == (200, 4, 4)
    outer = torch.tensor([0, 0, 32, 24]).expand(200, 4)
    for j in range(4):  # each box inside the last
        box = boxes[:, j]
        assert bool((box[:, :2] >= outer[:, :2]).all() & (box[:, 2:] <= outer[:, 2:]).all())
        outer = box
    for n in range(20):  # sides as the reference code: round(side * sqrt(1 - v_k)), v_k stick-broken
        w, h, used = 32, 24, 0.0
        for j in range(4):
            v = min(max(float(shares[n, j]) / (1 - used), 0.0), 1.0) if used < 1 else 1.0
            used += float(shares[n, j])
            w, h = int(np.round(w * math.sqrt(1 - v))), int(np.round(h * math.sqrt(1 - v)))
            assert (boxes[n, j, 2] - boxes[n, j, 0], boxes[n, j, 3] - boxes[n, j, 1]) == (w, h)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_dcutmix_weights_are_the_visible_areas(mode):
    b, k = 7, 4
    x = torch.arange(b, dtype=torch.float64).view(b, 1, 1, 1).expand(b, 2, 16, 12).contiguous()
    out = mixkit.create("dcutmix", k=k, mode=mode, alpha=1.0)(x, torch.arange(b), generator=gen(6))
    p = out.params
    for r in range(b):
        seen = out.x[r, 0].long()
        for j in range(k):
            visible = float((seen == p.sources[r, j]).sum()) / (16 * 12)
            assert abs(visible - float(p.weights[r, j])) < 1e-12
    torch.testing.assert_close(p.weights.sum(1), torch.ones(b, dtype=torch.float64))
    torch.testing.assert_close(p.lam, p.weights[:, 0])
    counts = F.one_hot(layer_map(p.boxes, (16, 12)).flatten(1), k).sum(1).double() / 192
    torch.testing.assert_close(counts, nested_shares(p.boxes, (16, 12)))


def test_dcutmix_paste_one_geometry_equals_the_same_geometry_per_row():
    x = torch.rand(4, 3, 9, 11)
    shares = torch.tensor([[0.3, 0.3, 0.2, 0.2]])
    boxes = sample_nested_boxes(shares, (9, 11), generator=gen(7))
    src = chain_sources(4, 4, generator=gen(8))
    torch.testing.assert_close(paste_nested(x, src, boxes), paste_nested(x, src, boxes.expand(4, 3, 4)))


def test_dcutmix_share_statistics_and_other_ranks():
    x = torch.zeros(1, 1, 64, 64).expand(3000, 1, 64, 64)
    p = mixkit.create("dcutmix", k=4, alpha=1.0, mode="elem").sample(x, generator=gen(9))
    means = p.weights.mean(0)  # Dirichlet(1, 1, 1, 1): each share has mean 1/4, up to rounding
    assert bool(((means - 0.25).abs() < 0.02).all())
    for shape in [(3, 2, 20), (3, 2, 6, 7, 8)]:
        xu = (torch.rand(shape) * 255).to(torch.uint8)
        out = mixkit.create("dcutmix", k=3, mode="elem")(xu, torch.arange(3), generator=gen(10))
        assert out.x.shape == shape and out.x.dtype == torch.uint8
        torch.testing.assert_close(out.params.weights.sum(1), torch.ones(3, dtype=torch.float64))


# ------------------------------------------------------------------------------ Cut-Thumbnail
def test_cut_thumbnail_mixed_pastes_the_partner_thumbnail():
    x = torch.rand(4, 3, 32, 32)
    out = mixkit.create("cut_thumbnail")(x, torch.arange(4), generator=gen(11))
    p = out.params
    t, l, b, r = p.boxes[0].tolist()
    assert (b - t, r - l) == (16, 16)
    thumb = F.interpolate(x[p.index], size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.x[:, :, t:b, l:r], thumb)
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[t:b, l:r] = False
    assert torch.equal(out.x[:, :, outside], x[:, :, outside])
    torch.testing.assert_close(p.lam, torch.full((4,), 0.75, dtype=torch.float64))  # the code's lam = 0.25
    fixed = mixkit.create("cut_thumbnail", size=0.25, thumbnail_weight=0.3)(x, torch.arange(4), generator=gen(11))
    torch.testing.assert_close(fixed.params.lam, torch.full((4,), 0.7, dtype=torch.float64))


def test_cut_thumbnail_self_variant_keeps_the_label_but_changes_the_image():
    x, y = torch.rand(3, 3, 224, 224), torch.tensor([0, 1, 2])
    m = mixkit.create("cut_thumbnail", variant="self", mode="elem", num_classes=3)
    out = m(x, y, generator=gen(12))
    assert bool((out.params.lam == 1).all()) and torch.equal(out.target.soft(), F.one_hot(y, 3).float())
    for row, (t, l, b, r) in enumerate(out.params.boxes.tolist()):
        assert (b - t, r - l) == (112, 112)  # the paper's 112 of 224
        thumb = F.interpolate(x[row : row + 1], size=(112, 112), mode="bilinear", align_corners=False)
        torch.testing.assert_close(out.x[row : row + 1, :, t:b, l:r], thumb)
    assert torch.equal(m.apply(x, out.params), out.x)
    off = mixkit.create("cut_thumbnail", variant="self", p=0.0)(x, y, generator=gen(12))
    assert torch.equal(off.x, x)


# ------------------------------------------------------------------------------------ k-Mixup
def brute_force(cost: np.ndarray) -> float:
    n = cost.shape[0]
    return min(sum(cost[i, s[i]] for i in range(n)) for s in itertools.permutations(range(n)))


def test_linear_assignment_is_optimal():
    rng = np.random.default_rng(0)
    for n in range(1, 7):
        for cost in (rng.random((30, n, n)), rng.integers(0, 3, (30, n, n)).astype(float)):
            perm = linear_assignment(cost)
            for c in range(30):
                assert sorted(perm[c].tolist()) == list(range(n))
                got = cost[c, np.arange(n), perm[c]].sum()
                assert abs(got - brute_force(cost[c])) < 1e-9
    big = rng.random((3, 40, 40))
    perm = linear_assignment(big)
    for c in range(3):  # no random permutation beats it
        best = big[c, np.arange(40), perm[c]].sum()
        assert all(big[c, np.arange(40), rng.permutation(40)].sum() >= best for _ in range(200))


def sq_cost(x, rows, cols):
    return float(sum(((x[i] - x[j]) ** 2).sum() for i, j in zip(rows, cols)))


def test_k_mixup_matches_each_cloud_optimally():
    x = torch.randn(11, 2, 3, 3, generator=gen(13)).double()
    order, partner = torch.randperm(11, generator=gen(14)), torch.randperm(11, generator=gen(15))
    k = 4
    index = match_clouds(x, order, partner, k)
    for start, size in ((0, 4), (4, 4), (8, 3)):  # two clouds of 4 and the last of 3 rows
        rows, cols = order[start : start + size].tolist(), partner[start : start + size].tolist()
        matched = index[rows].tolist()
        assert sorted(matched) == sorted(cols)  # a permutation of the partner cloud
        best = min(sq_cost(x, rows, [cols[i] for i in s]) for s in itertools.permutations(range(size)))
        assert abs(sq_cost(x, rows, matched) - best) < 1e-9
        assert sq_cost(x, rows, matched) <= sq_cost(x, rows, cols) + 1e-9


def test_k_mixup_matching_ignores_memory_format():
    """channels_last rows are flattened in memory order: the same distances, the same matching."""
    x = torch.randn(48, 3, 5, 7, generator=gen(21)).double()
    order, partner = torch.randperm(48, generator=gen(22)), torch.randperm(48, generator=gen(23))
    plain = match_clouds(x, order, partner, 8)
    assert torch.equal(match_clouds(x.contiguous(memory_format=torch.channels_last), order, partner, 8), plain)


def test_k_mixup_blend_pairing_and_lambda_statistics():
    x, y = torch.rand(64, 3, 4, 4), torch.arange(64) % 5
    m = mixkit.create("k_mixup", k=8, num_classes=5)
    out = m(x, y, generator=gen(16))
    lam = float(out.params.lam[0])
    assert bool((out.params.lam == lam).all())
    torch.testing.assert_close(out.x, lam * x + (1 - lam) * x[out.params.index])
    assert sorted(out.params.index.tolist()) == list(range(64))  # a permutation of the batch
    lams = torch.cat([mixkit.create("k_mixup", k=8, mode="elem").sample(x, generator=gen(s)).lam for s in range(60)])
    assert abs(float(lams.mean()) - 0.5) < 0.02 and abs(float(lams.var()) - 1 / 12) < 0.01
    one = mixkit.create("k_mixup", k=1)  # k = 1: plain mixup with a random partner
    assert torch.equal(one.sample(x, generator=gen(17)).index.sort().values, torch.arange(64))


def test_k_mixup_prefers_near_partners():
    a = torch.zeros(8, 2) + 0.1 * torch.randn(8, 2, generator=gen(18))
    b = torch.full((8, 2), 10.0) + 0.1 * torch.randn(8, 2, generator=gen(19))
    x = torch.cat([a, b]).view(16, 2, 1, 1)
    order = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15])
    index = match_clouds(x, order, order.roll(-8), 8)
    assert bool(((x[index] - x).abs().amax(dim=(1, 2, 3)) < 2).all())  # never across the clusters
    assert not bool((index == torch.arange(16)).any())  # the partner clouds are disjoint
    out = mixkit.create("k_mixup", k=16)(x, torch.arange(16), generator=gen(20))
    assert not bool((out.params.index == torch.arange(16)).any())  # B < 2k: clouds of B // 2


# ------------------------------------------------------------------------ layouts and errors
def test_gathers_keep_values_and_memory_format_for_images_and_feature_maps():
    for c in (3, 12):  # one gather per plane, or one for all channels
        x = torch.rand(5, c, 9, 7)
        p = mixkit.create("ricap", mode="elem").sample(x, generator=gen(21))
        ref = reference_tiles(x, p)
        xl = x.contiguous(memory_format=torch.channels_last)
        out = mixkit.create("ricap").apply(xl, p)
        assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, ref)
        assert torch.equal(mixkit.create("ricap").apply(x, p), ref)
        q = mixkit.create("dcutmix", k=3, mode="elem").sample(x, generator=gen(22))
        one = paste_nested(x, q.sources, q.boxes)
        assert torch.equal(paste_nested(xl, q.sources, q.boxes), one)
        for r in range(5):  # each row against a plain sequential paste
            ref_r = x[r].clone()
            for j, box in enumerate(q.boxes[r].tolist()):
                ref_r[:, box[0] : box[2], box[1] : box[3]] = x[q.sources[r, j + 1], :, box[0] : box[2], box[1] : box[3]]
            assert torch.equal(one[r], ref_r)


def test_cut_thumbnail_elem_mode_other_ranks_and_inactive_rows():
    xu = (torch.rand(6, 2, 20) * 255).to(torch.uint8)
    out = mixkit.create("cut_thumbnail", mode="elem", p=0.5)(xu, torch.arange(6), generator=gen(23))
    sides = out.params.boxes[:, 1] - out.params.boxes[:, 0]
    inactive = out.params.lam == 1
    assert bool(inactive.any() & (~inactive).any())
    assert bool((sides[inactive] == 0).all() & (sides[~inactive] == 10).all())
    assert torch.equal(out.x[inactive], xu[inactive])
    thumbs = F.interpolate(xu.float(), size=10, mode="linear", align_corners=False).round().to(torch.uint8)
    for r in (~inactive).nonzero().squeeze(1).tolist():
        s = int(out.params.boxes[r, 0])
        assert torch.equal(out.x[r, :, s : s + 10], thumbs[out.params.index[r]])
    x3 = torch.rand(2, 1, 8, 8, 8)
    out = mixkit.create("cut_thumbnail", mode="elem")(x3, torch.arange(2), generator=gen(24))
    assert out.x.shape == x3.shape and float(out.params.lam[0]) == 1 - 1 / 8


def test_hand_built_params_that_do_not_fit_are_refused():
    x = torch.rand(4, 3, 8, 8)
    p = mixkit.create("ricap").sample(x, generator=gen(25))
    with pytest.raises(mixkit.ShapeError):
        mixkit.create("ricap").apply(torch.rand(4, 3, 6, 6), p)
    q = mixkit.create("dcutmix", k=3).sample(x, generator=gen(26))
    with pytest.raises(mixkit.ShapeError):
        mixkit.create("dcutmix").apply(torch.rand(4, 3, 4, 4), q)
    with pytest.raises(mixkit.HyperParameterError):
        mixkit.create("dcutmix", k=1)
    with pytest.raises(mixkit.HyperParameterError):
        mixkit.create("mosaic", offset=(0.8, 0.2))
    with pytest.raises(mixkit.HyperParameterError):
        mixkit.create("cut_thumbnail", variant="double")


def test_pastes_are_differentiable():
    x = torch.rand(3, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    src = torch.tensor([[0, 1, 2, 1], [1, 2, 0, 0], [2, 0, 1, 2]])
    centre, offsets = torch.tensor([[2, 1], [3, 3], [0, 2]]), torch.zeros(3, 4, 2, dtype=torch.long)
    assert torch.autograd.gradcheck(lambda t: tile_quadrants(t, src, centre, offsets), (x,))
    assert torch.autograd.gradcheck(lambda t: tile_quadrants(t, src, centre[:1], offsets[:1]), (x,))
    boxes = torch.tensor([[[0, 0, 4, 3], [1, 1, 3, 2]]] * 3)
    assert torch.autograd.gradcheck(lambda t: paste_nested(t, src[:, :3], boxes), (x,))
    thumb_boxes = torch.tensor([[1, 1, 4, 3], [0, 0, 0, 0], [2, 0, 5, 2]])
    assert torch.autograd.gradcheck(lambda t: paste_thumbnails(t, torch.tensor([2, 0, 1]), thumb_boxes), (x,))
