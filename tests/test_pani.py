"""Pani MixUp: hand-built patch interpolation, the k-NN graph, realised label shares."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyNet, gen

import mixkit
from mixkit.functional import pani as fp
from mixkit.methods.pani import PaniMixup, PaniParams, _peers


def _params(neighbours, lam, patch_size, b):
    """Hand-built params (sources/weights unused by the mix)."""
    own = torch.arange(b)
    return PaniParams(index=own, lam=torch.tensor(lam, dtype=torch.float64), sources=own.view(b, 1),
                      weights=torch.ones(b, 1, dtype=torch.float64), neighbours=neighbours, patch_size=patch_size)


def _patch(x, b, i, s, grid_w):
    r, c = divmod(i, grid_w)
    return x[b, :, r * s : (r + 1) * s, c * s : (c + 1) * s]


def test_each_patch_is_the_hand_computed_interpolation():
    x = torch.arange(3 * 2 * 4 * 4, dtype=torch.float64).view(3, 2, 4, 4).sin()
    n = 4  # 2 x 2 patches of side 2 per sample
    nb = torch.tensor([
        [[4, 9], [11, 5], [6, 6], [8, 7]],
        [[0, 10], [3, 2], [9, 1], [8, 3]],
        [[1, 7], [0, 4], [2, 6], [5, 3]],
    ])
    lam = [0.25, 0.5, 1.0]
    out = PaniMixup(patch_size=2).apply(x, _params(nb, lam, 2, 3))
    for b in range(3):
        for i in range(n):
            neigh = [_patch(x, int(j) // n, int(j) % n, 2, 2) for j in nb[b, i]]
            want = lam[b] * _patch(x, b, i, 2, 2) + (1 - lam[b]) * sum(neigh) / len(neigh)
            torch.testing.assert_close(_patch(out, b, i, 2, 2), want)
    assert torch.equal(out[2], x[2])  # lam = 1: the sample as is, exactly


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("size", "s"), [(16, 2), (10, 3)])
def test_interpolation_equals_k_gathers_in_every_dtype_and_layout(dtype, channels_last, size, s):
    x = torch.rand(6, 3, size, size, generator=gen(11)).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    gh, gw = fp.patch_grid((size, size), s)
    nb = torch.randint(0, 6 * gh * gw, (6, gh * gw, 4), generator=gen(12))
    lam = torch.rand(6, dtype=torch.float64, generator=gen(13))
    out = fp.interpolate_patches(x, nb, lam, s)
    u = fp.to_patches(x, s)  # float32 for half inputs
    acc = torch.zeros_like(u)
    for j in range(4):  # the K gathers, added one by one
        acc += u.reshape(-1, u.shape[2])[nb[:, :, j].reshape(-1)].view(u.shape)
    want = fp.from_patches(torch.lerp(acc / 4, u, lam.to(u.dtype).view(6, 1, 1)), tuple(x.shape), s).to(dtype)
    assert torch.equal(out, want)  # the same sums, in the same order
    assert out.dtype == dtype and out.stride() == x.stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_neighbour_sums_equal_the_gathers_of_other_devices(dtype):
    rows = torch.randn(50, 7, generator=gen(14)).to(dtype).requires_grad_()
    nb = torch.randint(0, 50, (40, 5), generator=gen(15))
    got, want = fp.neighbour_sums(rows, nb), fp._gathered_sums(rows, nb)
    assert torch.equal(got, want)
    g = torch.randn(40, 7, generator=gen(16)).to(dtype)
    (ga,) = torch.autograd.grad(got, rows, g)
    (gb,) = torch.autograd.grad(want, rows, g)
    torch.testing.assert_close(ga, gb)  # scatter-adds of the same terms (order may differ)


def _brute_force(x, peers, s, k, metric):
    u = fp.to_patches(x, s).double()
    if metric == "cosine":
        u = torch.nn.functional.normalize(u, dim=-1)
    b, n, _ = u.shape
    out = []
    for row in range(b):
        cand = u[peers[row]].reshape(-1, u.shape[2])
        ids = (peers[row].unsqueeze(1) * n + torch.arange(n)).reshape(-1)
        dist = torch.cdist(u[row], cand)
        out.append(ids[dist.argsort(dim=1)[:, :k]])
    return torch.stack(out)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_neighbours_are_the_k_nearest_patches_of_the_peers(metric):
    x = torch.rand(6, 2, 6, 6, generator=gen(0))
    m = PaniMixup(k=4, num_peers=3, patch_size=2, metric=metric)
    params = m.sample(x, generator=gen(1))
    peers = params.sources[:, 1:]
    assert torch.equal(params.neighbours, _brute_force(x, peers, 2, 4, metric))
    rows = params.neighbours // 9
    assert not (rows == torch.arange(6).view(6, 1, 1)).any()  # never the sample itself
    assert (rows.unsqueeze(-1) == peers.view(6, 1, 1, 3)).any(-1).all()  # always a peer


def test_chunked_search_equals_one_block(monkeypatch):
    x = torch.rand(5, 3, 8, 8, generator=gen(2))
    peers = _peers(5, 4, gen(3))
    whole = fp.nearest_patches(x, peers, 2, 5)
    monkeypatch.setattr(fp, "_BLOCK", 7)  # one query patch per block
    assert torch.equal(fp.nearest_patches(x, peers, 2, 5), whole)


@pytest.mark.parametrize(("s", "m", "q", "k", "group"), [(1, 640, 64, 5, 8), (3, 2560, 256, 10, 16), (2, 96, 7, 1, 12), (1, 60, 5, 6, 10)])
def test_smallest_columns_equals_topk(s, m, q, k, group):
    dist = torch.randn(s, m, q, generator=gen(7)) * 3 - 1  # negative and positive values
    got = fp.smallest_columns(dist, k, group)
    assert torch.equal(got, dist.topk(k, dim=1, largest=False).indices)


def test_smallest_columns_with_ties_picks_the_smallest_values():
    dist = torch.randint(0, 6, (2, 120, 33), generator=gen(8)).float()  # many ties, zeros included
    dist[0, :, 0] = 2.0  # a column of one value
    dist[1, 17:, 1] = -float("inf")  # infinite values count as the smallest
    dist[1, :30, 2] = float("nan")  # NaN as the largest, as for topk
    got = fp.smallest_columns(dist, 7, 10)
    assert got.shape == (2, 7, 33) and got.dtype == torch.int64
    for row in got.transpose(1, 2).reshape(-1, 7):
        assert len(set(row.tolist())) == 7  # no row twice
    torch.testing.assert_close(dist.gather(1, got), dist.topk(7, dim=1, largest=False).values)


def test_grouped_search_matches_the_brute_force():
    x = torch.rand(12, 3, 16, 16, generator=gen(9))
    peers = _peers(12, 10, gen(10))
    assert fp._groups(10 * 64, 5) is not None  # the grouped selection runs here
    got = fp.nearest_patches(x, peers, 2, 5)
    want = _brute_force(x, peers, 2, 5, "euclidean")
    u = fp.to_patches(x, 2).double().reshape(12 * 64, -1)
    query = u.view(12, 64, 1, -1)
    torch.testing.assert_close((u[got] - query).norm(dim=-1), (u[want] - query).norm(dim=-1), rtol=1e-5, atol=1e-6)
    assert (got == want).float().mean() > 0.99  # the same ids but for (rare) float32 near-ties


def test_grouped_search_in_query_chunks_equals_one_block(monkeypatch):
    x = torch.rand(12, 3, 16, 16, generator=gen(17))
    peers = _peers(12, 10, gen(18))
    assert fp._groups(10 * 64, 5) is not None
    whole = fp.nearest_patches(x, peers, 2, 5)
    monkeypatch.setattr(fp, "_CPU_BLOCK", 10 * 64 * 24)  # 24 query patches per product: 3 chunks, the last of 16
    assert torch.equal(fp.nearest_patches(x, peers, 2, 5), whole)


def test_selection_falls_back_to_topk_where_groups_do_not_pay():
    assert fp._groups(27, 4) is None  # few candidates
    assert fp._groups(2 * 1009, 10) is None  # no useful divisor
    assert fp._groups(2560, 10) == 16


def test_peers_are_distinct_others_drawn_uniformly():
    counts = torch.zeros(6, 6)
    for seed in range(300):
        peers = _peers(6, 3, gen(seed))
        assert all(len(set(r.tolist())) == 3 for r in peers)
        counts.scatter_add_(1, peers, torch.ones(6, 3))
    assert counts.diagonal().sum() == 0
    off = counts[~torch.eye(6, dtype=torch.bool)]
    assert ((off - 180).abs() < 45).all()  # 300 * 3 / 5 each, binomial sd ~ 11


@pytest.mark.parametrize(("size", "s"), [(8, 2), (10, 3), (7, 4)])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_label_weights_equal_the_realised_pixel_shares(size, s, mode):
    b = 6
    x = torch.rand(b, 3, size, size, generator=gen(4))
    m = PaniMixup(k=3, num_peers=4, patch_size=s, mode=mode, num_classes=b)
    out = m(x, torch.arange(b), generator=gen(5))
    # apply the same graph to one-hot indicator images: pixel means = each source's share
    ind = torch.eye(b, dtype=torch.float64).view(b, b, 1, 1).expand(b, b, size, size)
    realised = m.apply(ind, out.params).mean(dim=(2, 3))
    torch.testing.assert_close(out.target.soft().double(), realised)
    torch.testing.assert_close(out.params.weights.sum(dim=1), torch.ones(b, dtype=torch.float64))
    torch.testing.assert_close(out.params.weights[:, 0], out.params.lam)
    top = out.params.weights[:, 1:].argmax(dim=1, keepdim=True)
    assert torch.equal(out.params.index, out.params.sources[:, 1:].gather(1, top).squeeze(1))


def test_patches_that_do_not_divide_the_image_are_padded_and_cropped():
    x = torch.rand(2, 3, 7, 10, generator=gen(6))
    u = fp.to_patches(x, 3)
    assert u.shape == (2, 3 * 4, 27)
    assert torch.equal(fp.from_patches(u, tuple(x.shape), 3), x)
    shares = fp.patch_shares((7, 10), 3)
    assert torch.equal(shares * 70, torch.tensor([9.0, 9, 9, 3, 9, 9, 9, 3, 3, 3, 3, 1], dtype=torch.float64))
    # the padded edge repeats the last column and row
    torch.testing.assert_close(u[0, 3].view(3, 3, 3)[:, :, 1:], x[0, :, 0:3, 9:10].expand(3, 3, 2))


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_probability_zero_is_the_identity(mode):
    x = torch.rand(5, 3, 8, 8, generator=gen(7))
    out = PaniMixup(p=0.0, mode=mode)(x, torch.arange(5), generator=gen(8))
    assert torch.equal(out.x, x) and (out.params.lam == 1).all()
    assert torch.equal(out.params.index, torch.arange(5)) and (out.target.weight[:, 1:] == 0).all()


def test_elem_mode_leaves_inactive_samples_untouched():
    x = torch.rand(12, 3, 8, 8, generator=gen(9))
    out = PaniMixup(p=0.5, mode="elem", patch_size=2)(x, torch.arange(12), generator=gen(10))
    kept = out.params.lam == 1
    assert 0 < int(kept.sum()) < 12
    assert torch.equal(out.x[kept], x[kept]) and not torch.equal(out.x[~kept], x[~kept])


def test_small_batches_and_large_patches():
    x = torch.rand(1, 3, 8, 8, generator=gen(11))
    out = PaniMixup()(x, torch.tensor([0]), generator=gen(12))
    assert torch.equal(out.x, x) and out.target.k == 1 and float(out.params.lam[0]) == 1.0
    x = torch.rand(3, 3, 8, 8, generator=gen(13))
    out = PaniMixup(patch_size=16, k=10)(x, torch.arange(3), generator=gen(14))
    assert out.params.neighbours.shape == (3, 1, 2)  # one patch per image, k capped at 2 peers
    lam = float(out.params.lam[0])
    torch.testing.assert_close(out.x[0], lam * x[0] + (1 - lam) * (x[1] + x[2]) / 2)


def test_lambda_statistics_in_elem_mode():
    x = torch.rand(64, 1, 4, 4, generator=gen(15))
    m = PaniMixup(alpha=0.5, k=2, num_peers=2, patch_size=2, mode="elem")
    lam = torch.cat([m.sample(x, generator=gen(16 + i)).lam for i in range(40)])
    assert abs(float(lam.mean()) - 0.5) < 0.03 and abs(float(lam.var()) - 0.125) < 0.015


def test_feature_level_mix_equals_mixing_by_hand():
    torch.manual_seed(0)
    net = TinyNet(3, 5).double()
    x = torch.rand(4, 3, 8, 8, generator=gen(17), dtype=torch.float64)
    m = PaniMixup(k=2, num_peers=2, patch_size=2)
    out = m.forward_at(net, x, torch.arange(4), layer="layer1", generator=gen(18))
    h = net.layer1(net.stem(x))
    assert out.params.neighbours.shape == (4, 16, 2)
    torch.testing.assert_close(out.logits, net.head(net.layer2(m.apply(h, out.params))))
    again = m.sample(h, generator=gen(18))  # the graph was drawn on the features themselves
    assert torch.equal(again.neighbours, out.params.neighbours)


def test_interpolation_gradcheck():
    x = torch.rand(3, 1, 3, 3, dtype=torch.float64, generator=gen(19), requires_grad=True)
    nb = torch.tensor([[[4, 8]] * 4, [[0, 9]] * 4, [[1, 6]] * 4])
    lam = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: fp.interpolate_patches(t, nb, lam, 2), (x,))


def test_errors():
    for bad in ({"k": 0}, {"num_peers": 0}, {"patch_size": 0}, {"metric": "l1"}, {"alpha": -1.0}):
        with pytest.raises(mixkit.HyperParameterError):
            PaniMixup(**bad)
    params = PaniMixup(patch_size=2).sample(torch.rand(3, 3, 8, 8))
    with pytest.raises(mixkit.ShapeError, match="neighbours"):
        PaniMixup(patch_size=2).apply(torch.rand(3, 3, 12, 12), params)
    with pytest.raises(mixkit.ShapeError):
        PaniMixup()(torch.rand(3, 3, 8), torch.arange(3))
