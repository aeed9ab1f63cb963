"""SuperpixelGridCut, SuperpixelGridMean and SuperpixelGridMix: the batched SLIC against a
naive per-pixel re-implementation and, bit for bit, against the plain batched formulation
its tuned engine reproduces; partitions and locality of the superpixels, exact
per-superpixel means, and the three methods on hand-built params."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import gen

import mixkit
from mixkit.functional import _slic
from mixkit.functional import superpixels as SP
from mixkit.methods.superpixel_grid import SuperpixelParams

NAMES = ["superpixel_gridcut", "superpixel_gridmean", "superpixel_gridmix"]


def smooth_images(b=2, c=3, h=24, w=28, seed=0):
    """Low-frequency random images (bicubic upsampling of 4 x 4 noise), pixels in [0, 1]."""
    small = torch.rand(b, c, 4, 4, generator=gen(seed))
    return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


# ------------------------------------------------------------------------------ segmentation
def test_lab_matches_known_values():
    rgb = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0]]).T.reshape(1, 3, 5, 1)
    lab = SP.rgb_to_lab(rgb)[0, :, :, 0].T
    known = torch.tensor(
        [[53.24, 80.09, 67.20], [87.73, -86.18, 83.18], [32.30, 79.19, -107.86], [100.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    )
    torch.testing.assert_close(lab, known, atol=0.02, rtol=0)


@pytest.mark.parametrize("shape,n", [((2, 3, 24, 28), 12), ((3, 1, 17, 9), 7), ((1, 3, 5, 5), 100), ((2, 2, 13, 31), 1)])
def test_labels_are_a_compact_partition(shape, n):
    x = torch.rand(shape, generator=gen(1))
    labels = SP.slic_labels(x, n, iterations=4)
    assert labels.shape == (shape[0],) + shape[2:] and labels.dtype == torch.long
    gy, gx = SP.slic_grid(n, *shape[2:])[:2]
    for img in labels:
        used = img.unique()
        assert torch.equal(used, torch.arange(used.numel())) and used.numel() <= gy * gx
    torch.testing.assert_close(SP.segment_counts(labels), labels.flatten(1).amax(1) + 1)


def test_zero_iterations_is_the_grid_and_the_grid_fits_the_image():
    gy, gx, bh, bw = SP.slic_grid(12, 24, 28)
    assert gy * gx == 12 and (gy - 1) * bh < 24 <= gy * bh and (gx - 1) * bw < 28 <= gx * bw
    labels = SP.slic_labels(torch.rand(1, 3, 24, 28), 12, iterations=0)[0]
    ys, xs = torch.meshgrid(torch.arange(24), torch.arange(28), indexing="ij")
    assert torch.equal(labels, (ys // bh) * gx + xs // bw)


def test_superpixels_stay_in_the_window_of_their_birth_cell():
    x = torch.rand(4, 3, 40, 36, generator=gen(2))  # noise: the worst case for compactness
    bh, bw = SP.slic_grid(30, 40, 36)[2:]
    labels = SP.slic_labels(x, 30, compactness=1.0)
    ys, xs = torch.meshgrid(torch.arange(40), torch.arange(36), indexing="ij")
    for img in labels:
        for s in range(int(img.max()) + 1):
            inside = img == s
            assert int(ys[inside].max() - ys[inside].min()) < 2 * bh
            assert int(xs[inside].max() - xs[inside].min()) < 2 * bw


def _largest_component_share(labels: np.ndarray) -> float:
    """Share of pixels lying in the largest 4-connected piece of their superpixel."""
    h, w = labels.shape
    seen = np.zeros_like(labels, dtype=bool)
    best: dict[int, int] = {}
    for y0 in range(h):
        for x0 in range(w):
            if seen[y0, x0]:
                continue
            lab, stack, size = labels[y0, x0], [(y0, x0)], 0
            seen[y0, x0] = True
            while stack:
                y, x = stack.pop()
                size += 1
                for v, u in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                    if 0 <= v < h and 0 <= u < w and not seen[v, u] and labels[v, u] == lab:
                        seen[v, u] = True
                        stack.append((v, u))
            best[lab] = max(best.get(lab, 0), size)
    return sum(best.values()) / labels.size


def test_superpixels_are_mostly_connected_and_follow_edges():
    labels = SP.slic_labels(smooth_images(h=48, w=48), 36)
    for img in labels:
        assert _largest_component_share(img.numpy()) > 0.97
    # four flat quadrants and four seeds: the superpixels are exactly the quadrants
    x = torch.zeros(1, 3, 40, 40)
    x[:, 0, :20], x[:, 1, :, 20:] = 1.0, 1.0
    q = SP.slic_labels(x, 4, compactness=1.0)[0]
    ys, xs = torch.meshgrid(torch.arange(40), torch.arange(40), indexing="ij")
    assert torch.equal(q, (ys >= 20).long() * 2 + (xs >= 20).long())


def naive_slic(x: torch.Tensor, n: int, m: float, iterations: int) -> np.ndarray:
    """Per-pixel SLIC in float64: each pixel against the 2 x 2 initial cells whose centres
    surround it, centres at their cells' means, then mean (colour, position) updates."""
    _, _, h, w = x.shape
    gy, gx, bh, bw = SP.slic_grid(n, h, w)
    lab = SP.rgb_to_lab(x)[0].double().permute(1, 2, 0).numpy()
    feat = np.concatenate([lab, np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1)], -1)
    weight = np.array([1.0] * 3 + [(m / math.sqrt(bh * bw)) ** 2] * 2)

    def pair(i, u, size, g):  # the two cells whose centres surround offset u in cell i
        lo = i - 1 if u < -(-size // 2) else i
        return [min(max(lo, 0), g - 1), min(max(lo + 1, 0), g - 1)]

    cand = [[[r * gx + c for r in pair(y // bh, y % bh, bh, gy) for c in pair(x_ // bw, x_ % bw, bw, gx)]
             for x_ in range(w)] for y in range(h)]
    labels = np.array([[(y // bh) * gx + x_ // bw for x_ in range(w)] for y in range(h)])
    centres = np.zeros((gy * gx, 5))
    for _ in range(iterations):
        for k in range(gy * gx):
            if (labels == k).any():
                centres[k] = feat[labels == k].mean(0)
        for y in range(h):
            for x_ in range(w):
                d = [((feat[y, x_] - centres[k]) ** 2 * weight).sum() for k in cand[y][x_]]
                labels[y, x_] = cand[y][x_][int(np.argmin(d))]
    return np.unique(labels, return_inverse=True)[1].reshape(h, w)


@pytest.mark.parametrize("h,w,n", [(14, 17, 6), (12, 12, 9)])
def test_batched_slic_matches_a_naive_per_pixel_slic(h, w, n):
    x = smooth_images(b=1, h=h, w=w, seed=h)
    ours = SP.slic_labels(x, n, compactness=5.0, iterations=3)[0].numpy()
    ref = naive_slic(x, n, 5.0, 3)
    assert (ours == ref).mean() > 0.99


def plain_slic(x: torch.Tensor, n: int, m: float = 10.0, iterations: int = 10) -> torch.Tensor:
    """The plain batched formulation the tuned engine reproduces bit for bit: pixels in
    zero-padded blocks ``(B, F, nb, P)``, one scatter-add of (features, 1) per update, the
    4 candidates scored one after the other as ``|c|^2 - 2 <f, c>``, the first nearest kept."""
    b, c, h, w = x.shape
    gy, gx, bh, bw = SP.slic_grid(n, h, w)
    top, left, scale = bh // 2, bw // 2, m / math.sqrt(bh * bw)
    ry, rx = (h + top - 1) // bh + 1, (w + left - 1) // bw + 1

    def blocks(t):
        t = F.pad(t, (left, rx * bw - w - left, top, ry * bh - h - top)).view(t.shape[0], t.shape[1], ry, bh, rx, bw)
        return t.permute(0, 1, 2, 4, 3, 5).reshape(t.shape[0], t.shape[1], ry * rx, bh * bw)

    d = torch.tensor([0, 1])
    rows = (torch.arange(ry).view(-1, 1, 1, 1) - 1 + d.view(1, 1, 2, 1)).clamp(0, gy - 1)
    cols = (torch.arange(rx).view(1, -1, 1, 1) - 1 + d.view(1, 1, 1, 2)).clamp(0, gx - 1)
    candidates = (rows * gx + cols).reshape(ry * rx, 4)
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    pixels = x.float()
    colour = blocks(SP.rgb_to_lab(pixels) if c == 3 else pixels.clamp(0.0, 1.0) * 100.0)
    pos = torch.stack([ys, xs]).unsqueeze(0)
    ones = torch.ones(1, 1, h, w)
    feats = torch.cat([colour, blocks(pos).expand(b, -1, -1, -1), blocks(ones).expand(b, -1, -1, -1)], 1).flatten(2)
    labels = blocks(((ys // bh) * gx + xs // bw).view(1, 1, h, w)).long()[:, 0].expand(b, -1, -1)
    oy, ox = torch.arange(ry).float() * bh - top, torch.arange(rx).float() * bw - left
    origin = torch.stack(torch.meshgrid(oy, ox, indexing="ij"), dim=-1).reshape(-1, 1, 2)
    py, px = torch.meshgrid(torch.arange(bh).float(), torch.arange(bw).float(), indexing="ij")
    local = torch.stack([py, px]).reshape(2, 1, -1) * scale
    centres = torch.zeros(b, c + 2, gy * gx)
    for _ in range(iterations):
        sums = torch.zeros(b, c + 3, gy * gx).scatter_add_(2, labels.reshape(b, 1, -1).expand(b, c + 3, -1), feats)
        counts = sums[:, c + 2 :]
        centres = torch.where(counts > 0, sums[:, : c + 2] / counts.clamp_min(1.0), centres)
        cand = centres.transpose(1, 2).contiguous().index_select(1, candidates.flatten()).view(b, -1, 4, c + 2)
        cand = torch.cat([cand[..., :c], (cand[..., c:] - origin) * scale], dim=-1)
        norms = cand.square().sum(dim=-1)
        best = which = None
        for j in range(4):
            score = colour[:, 0] * cand[:, :, j, 0:1]
            for i in range(1, c):
                score.addcmul_(colour[:, i], cand[:, :, j, i : i + 1])
            for i in range(2):
                score.addcmul_(local[i], cand[:, :, j, c + i : c + i + 1])
            score = torch.add(norms[:, :, j : j + 1], score, alpha=-2.0)
            if j == 0:
                best, which = score, torch.zeros_like(score, dtype=torch.long)
            else:
                which = torch.where(score < best, j, which)
                best = torch.minimum(best, score)
        labels = torch.gather(candidates.expand(b, -1, -1), 2, which)
    image = labels.view(b, ry, rx, bh, bw).permute(0, 1, 3, 2, 4).reshape(b, ry * bh, rx * bw)
    image = image[:, top : top + h, left : left + w].reshape(b, -1)
    present = torch.zeros(b, gy * gx, dtype=torch.long).scatter_(1, image, 1)
    return (present.cumsum(1) - 1).gather(1, image).view(b, h, w)


@pytest.mark.parametrize(
    "shape,n,m,iterations",
    [
        ((5, 3, 32, 32), 100, 10.0, 10),
        ((3, 3, 17, 23), 30, 3.0, 4),
        ((2, 1, 24, 28), 12, 1.0, 10),
        ((2, 4, 31, 29), 64, 10.0, 2),
    ],
)
def test_tuned_slic_equals_the_plain_formulation_bit_for_bit(shape, n, m, iterations):
    for kind, seed in (("noise", 1), ("smooth", 2), ("flat", 3)):
        x = torch.rand(shape, generator=gen(seed))
        if kind == "smooth":
            x = smooth_images(shape[0], shape[1], shape[2], shape[3], seed)
        elif kind == "flat":  # exact ties between candidates
            x = (x * 3).floor() / 2
        ref = plain_slic(x, n, m, iterations)
        for layout in (torch.contiguous_format, torch.channels_last):
            ours = SP.slic_labels(x.contiguous(memory_format=layout), n, compactness=m, iterations=iterations)
            assert torch.equal(ours, ref)
        other = x.transpose(2, 3)  # neither contiguous nor channels-last
        ours = SP.slic_labels(other, n, compactness=m, iterations=iterations)
        assert torch.equal(ours, plain_slic(other, n, m, iterations))


def test_the_engines_lab_equals_rgb_to_lab_bit_for_bit():
    x = torch.randn(5, 3, 17, 23, generator=gen(4)) * 0.6 + 0.4  # also outside [0, 1]
    for rgb in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3), x.double(), x.bfloat16()):
        out = torch.empty((rgb.shape[0], 3) + tuple(rgb.shape[2:]))
        _slic.lab_into(rgb, out, _slic.Workspace(rgb.device))
        assert torch.equal(out, SP.rgb_to_lab(rgb))


@pytest.mark.parametrize("f", range(1, 10))
def test_row_sum_adds_in_the_order_of_torchs_row_sum(f):
    t = torch.randn(f, 4, 3, 5, generator=gen(f)) * torch.logspace(-4, 4, f).view(f, 1, 1, 1)
    assert torch.equal(_slic.row_sum(t), t.movedim(0, -1).contiguous().sum(-1))


def test_work_buffers_kept_between_calls_do_not_leak_into_other_calls():
    xs = [torch.rand(3, 3, 24, 28, generator=gen(s)) for s in range(3)]
    xs[1] = xs[1].contiguous(memory_format=torch.channels_last)
    fresh = [plain_slic(x, 12) for x in xs]
    for x, ref in zip(xs + xs[::-1], fresh + fresh[::-1]):  # same key, other layout, other data
        assert torch.equal(SP.slic_labels(x, 12), ref)
    assert torch.equal(SP.slic_labels(xs[0][:2], 12), fresh[0][:2])  # another batch size
    results = {}

    def work(i):
        results[i] = [SP.slic_labels(xs[i % 3], 12) for _ in range(3)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(r, fresh[i % 3]) for i, rs in results.items() for r in rs)


def test_large_batches_are_segmented_in_chunks_with_the_same_labels(monkeypatch):
    x = torch.rand(20, 3, 16, 16, generator=gen(7))
    whole = SP.slic_labels(x, 16)
    calls = []
    segment_chunk = _slic._segment
    monkeypatch.setattr(_slic, "_segment", lambda *a: calls.append(a[0].shape[0]) or segment_chunk(*a))
    monkeypatch.setattr(_slic, "WORKSPACE_BYTES", 9 * _slic.BYTES_PER_PIXEL * 16 * 16)  # room for 9: chunks of 8
    assert torch.equal(SP.slic_labels(x, 16), whole)
    assert calls == [8, 8, 4]  # chunks of a multiple of 8 images: two workspace keys, both kept
    assert len(_slic._local.workspaces) == 2
    assert torch.equal(SP.slic_labels(x, 16), whole)
    _slic.release_workspace()
    assert not hasattr(_slic._local, "workspaces")


# ---------------------------------------------------------------------------- statistics
def test_segment_means_reproduce_a_piecewise_constant_image_exactly():
    labels = torch.randint(0, 7, (3, 9, 11), generator=gen(3))
    labels[:, 0, :7] = torch.arange(7)  # every label used
    values = torch.rand(3, 2, 7, generator=gen(4))
    image = SP.paint_segments(values, labels)
    assert image.shape == (3, 2, 9, 11) and image[1, 0, 0, 3] == values[1, 0, 3]
    means = SP.segment_means(image, labels)
    assert torch.equal(means.to(torch.float32), values)
    assert torch.equal(SP.paint_segments(means.to(torch.float32), labels), image)


def test_select_segments_picks_round_ratio_of_the_valid_labels():
    n = torch.tensor([10, 7, 1, 4])
    sel = SP.select_segments(n, 0.25, torch.rand(4, 12, generator=gen(5), dtype=torch.float64))
    assert sel.sum(1).tolist() == [3, 2, 0, 1]  # round half up: 2.5 -> 3, 1.75 -> 2, 0.25 -> 0
    assert not (sel & (torch.arange(12) >= n.view(-1, 1))).any()
    shared = SP.select_segments(torch.tensor([10, 10]), 0.3, torch.rand(1, 12, generator=gen(6), dtype=torch.float64))
    assert torch.equal(shared[0], shared[1])
    picks = sum(SP.select_segments(torch.tensor([8]), 0.25, torch.rand(1, 8, generator=gen(s))).double() for s in range(400))
    assert float((picks / 400 - 0.25).abs().max()) < 0.08  # each superpixel equally likely


# ------------------------------------------------------------------------------ the methods
def quadrant_params(b=2, h=8, w=8, picked=((0, 3), (1,)), index=None, lam=None):
    """Hand-built params: four quadrant superpixels, the listed ones picked per sample."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    segments = ((ys >= h // 2).long() * 2 + (xs >= w // 2).long()).expand(b, h, w).clone()
    selected = torch.zeros(b, 4, dtype=torch.bool)
    for i, ks in enumerate(picked):
        selected[i, list(ks)] = True
    mask = ~selected.gather(1, segments.flatten(1)).view(b, 1, h, w)
    index = torch.arange(b) if index is None else index
    lam = torch.ones(b, dtype=torch.float64) if lam is None else lam
    return SuperpixelParams(index=index, lam=lam, mask=mask, segments=segments, selected=selected)


def test_cut_zeroes_exactly_the_picked_superpixels_in_pixel_space():
    x = torch.rand(2, 3, 8, 8, generator=gen(7)) + 0.1
    params = quadrant_params()
    cut = mixkit.create("superpixel_gridcut")
    out = cut.apply(x, params)
    gone = ~params.mask.expand_as(x)
    assert (out[gone] == 0).all() and torch.equal(out[~gone], x[~gone])
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    cut.set_input_normalization(mean, std)
    out = cut.apply(x, params)
    black = (-torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1).expand_as(x)
    torch.testing.assert_close(out[gone], black[gone])
    assert torch.equal(out[~gone], x[~gone])


def test_mean_fills_the_picked_superpixels_with_their_mean_and_commutes_with_normalisation():
    x = torch.rand(2, 3, 8, 8, generator=gen(8))
    params = quadrant_params()
    m = mixkit.create("superpixel_gridmean")
    out = m.apply(x, params)
    for i, ks in enumerate(((0, 3), (1,))):
        for k in range(4):
            inside = params.segments[i] == k
            expected = x[i][:, inside].mean(1, keepdim=True).expand(3, int(inside.sum())) if k in ks else x[i][:, inside]
            torch.testing.assert_close(out[i][:, inside], expected)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    m.set_input_normalization(mean.flatten().tolist(), std.flatten().tolist())
    torch.testing.assert_close(m.apply((x - mean) / std, params), (out - mean) / std)


def test_mix_takes_the_partner_on_the_picked_superpixels_and_weighs_labels_by_pixel_share():
    x = torch.rand(2, 3, 8, 8, generator=gen(9))
    params = quadrant_params(index=torch.tensor([1, 0]))
    out = mixkit.create("superpixel_gridmix").apply(x, params)
    keep = params.mask.expand_as(x)
    assert torch.equal(out[keep], x[keep]) and torch.equal(out[~keep], x[[1, 0]][~keep])
    m = mixkit.create("superpixel_gridmix", mode="elem", num_classes=3)
    xs, y = smooth_images(b=6, h=20, w=20, seed=3), torch.tensor([0, 1, 2, 0, 1, 2])
    res = m(xs, y, generator=gen(10))
    share = res.params.mask.flatten(1).double().mean(1)
    torch.testing.assert_close(res.params.lam, share, rtol=0, atol=1e-12)
    lam = share.float().unsqueeze(1)
    dense = F.one_hot(y, 3).float()
    torch.testing.assert_close(res.target.soft(), lam * dense + (1 - lam) * dense[res.params.index])
    assert (share < 1).all() and (share > 0.5).all()


def test_each_image_loses_round_ratio_of_its_own_superpixels():
    x = smooth_images(b=4, h=32, w=32, seed=4)
    for name in NAMES:
        out = mixkit.create(name, ratio=0.3, mode="elem")(x, torch.zeros(4, dtype=torch.long), generator=gen(11))
        p = out.params
        assert torch.equal(p.segments, SP.slic_labels(x, 100))
        n = SP.segment_counts(p.segments)
        assert torch.equal(p.selected.sum(1), torch.floor(0.3 * n + 0.5).long())


def test_mix_can_cut_the_partners_superpixels():
    x = smooth_images(b=4, h=24, w=24, seed=5)
    out = mixkit.create("superpixel_gridmix", segment_on="partner")(x, torch.arange(4), generator=gen(12))
    assert torch.equal(out.params.segments, SP.slic_labels(x[out.params.index], 100))


def test_segmentation_reads_normalised_input_as_pixels():
    x = smooth_images(b=2, h=20, w=20, seed=6)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]
    m = mixkit.create("superpixel_gridcut")
    m.set_input_normalization(mean, std)
    xn = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    p = m.sample(xn, generator=gen(13))
    assert torch.equal(p.segments, SP.slic_labels(x, 100))


def test_batch_mode_picks_the_same_superpixels_in_identical_images_and_elem_mode_does_not():
    x = smooth_images(b=1, h=24, w=24, seed=7).expand(2, 3, 24, 24)
    same = mixkit.create("superpixel_gridmean", mode="batch").sample(x, generator=gen(14))
    assert torch.equal(same.selected[0], same.selected[1])
    apart = mixkit.create("superpixel_gridmean", mode="elem").sample(x, generator=gen(14))
    assert not torch.equal(apart.selected[0], apart.selected[1])


@pytest.mark.parametrize("name", NAMES)
def test_samples_left_alone_under_p_are_unchanged_and_unsegmented(name):
    x, y = smooth_images(b=8, h=16, w=16, seed=8), torch.arange(8) % 3
    out = mixkit.create(name, p=0.5, mode="elem")(x, y, generator=gen(15))
    idle = out.params.mask.flatten(1).all(1)
    assert 0 < int(idle.sum()) < 8
    assert torch.equal(out.x[idle], x[idle]) and (out.params.segments[idle] == 0).all()
    assert (out.params.lam[idle] == 1).all() and not torch.equal(out.x[~idle], x[~idle])
    none = mixkit.create(name, p=0.0)(x, y, generator=gen(15))
    assert torch.equal(none.x, x) and none.x.data_ptr() != x.data_ptr() and (none.params.segments == 0).all()


def test_misuse_raises_clear_errors():
    for bad in ({"n_segments": 0}, {"ratio": 1.5}, {"iterations": -1}, {"compactness": 0.0}):
        with pytest.raises(mixkit.HyperParameterError):
            mixkit.create("superpixel_gridcut", **bad)
    with pytest.raises(mixkit.HyperParameterError, match="segment_on"):
        mixkit.create("superpixel_gridmix", segment_on="both")
    params = quadrant_params()
    with pytest.raises(mixkit.ShapeError):
        mixkit.create("superpixel_gridmean").apply(torch.rand(2, 3, 8, 9), params)
    with pytest.raises(mixkit.ShapeError):
        SP.slic_labels(torch.rand(3, 8, 8), 4)
