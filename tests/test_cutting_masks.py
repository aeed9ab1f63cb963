"""SmoothMix, GMix, HMix, GridMix, StackMix and YOCO: hand-built params, re-implementations
of the published formulas, statistics of the draws, and GridMix's local loss."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyNet, gen
from torch import nn

import mixkit
from mixkit.functional import box_mask
from mixkit.functional import masks as MM
from mixkit.methods.cutting_halves import StackParams
from mixkit.methods.cutting_masks import GridParams, HMixParams
from mixkit.types import MaskParams


def const_batch(b=4, h=8, w=8, c=2):
    """Sample i is the constant image i: any pixel's value says where it came from."""
    return torch.arange(b, dtype=torch.float64).view(b, 1, 1, 1).expand(b, c, h, w).contiguous()


def own_share(x, out, index):
    """Per sample, the share of the sample in a mix of constant images (i and index[i])."""
    i, j = torch.arange(x.shape[0], dtype=torch.float64), index.to(torch.float64)
    return ((out.flatten(1).mean(1) - j) / (i - j))


# ------------------------------------------------------------------------------- functional
def test_gaussian_blob_matches_the_formula_and_is_one_at_the_centre():
    c, s = torch.tensor([[2.0, 5.0], [0.0, 0.0]]), torch.tensor([1.5, 3.0])
    g = MM.gaussian_blob(c, s, (6, 7))
    r, q = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
    for n in range(2):
        ref = torch.exp(-((r - c[n, 0]) ** 2 + (q - c[n, 1]) ** 2) / (2 * s[n] ** 2))
        torch.testing.assert_close(g[n, 0], ref)
    assert g.shape == (2, 1, 6, 7) and g[0, 0, 2, 5] == 1


def test_soft_box_is_the_hard_box_at_zero_blur_and_keeps_its_area_when_blurred():
    boxes = torch.tensor([[8, 10, 20, 30], [0, 0, 5, 5], [3, 3, 3, 9]])  # the last is empty
    hard = MM.soft_box_mask(boxes, torch.zeros(3), (32, 40))
    assert torch.equal(hard.bool(), box_mask(boxes, (32, 40)))
    soft = MM.soft_box_mask(boxes, torch.full((3,), 2.0), (32, 40))
    assert ((soft >= 0) & (soft <= 1)).all() and soft[2].sum() == 0
    assert abs(float(soft[0].sum()) - 12 * 20) < 1e-3  # blurring away from the border keeps the area
    assert float(soft[0, 0, 14, 20]) > 0.99 and abs(float(soft[0, 0, 7, 20]) - 0.4013) < 1e-3  # Phi(-1/4)


def test_grid_cells_tile_the_image_and_keep_exactly_round_lam_cells():
    lam = torch.tensor([0.0, 0.3, 0.51, 1.0])
    cells = MM.sample_grid_cells(lam, (3, 4), generator=gen(0))
    assert cells.flatten(1).sum(1).tolist() == [0, 4, 6, 12]
    ids = torch.arange(12).view(1, 3, 4)
    m = MM.grid_cell_mask(ids, (10, 9))[0, 0]
    for k in range(12):  # each cell is one contiguous block; sides differ by at most one pixel
        rows, cols = (m == k).nonzero(as_tuple=True)
        hs, ws = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert hs * ws == (m == k).sum() and hs in (3, 4) and ws in (2, 3)


def test_hybrid_blend_is_mixup_outside_and_the_partner_inside():
    x, index = torch.randn(3, 2, 6, 6, generator=gen(1)), torch.tensor([2, 0, 1])
    boxes, outside = torch.tensor([[1, 2, 4, 5], [0, 0, 6, 6], [2, 2, 2, 2]]), torch.tensor([0.8, 0.3, 0.6])
    inside, w = box_mask(boxes, (6, 6)), outside.float().view(-1, 1, 1, 1)
    mix = w * x + (1 - w) * x[index]
    torch.testing.assert_close(MM.hybrid_blend(x, index, boxes, outside), torch.where(inside, x[index], mix))
    torch.testing.assert_close(MM.hybrid_blend(x, index, boxes[:1], outside), torch.where(inside[:1], x[index], mix))


# ------------------------------------------------------------------------------- SmoothMix
@pytest.mark.parametrize("shape", ["circle", "square"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_smoothmix_mask_mean_is_the_label_weight(shape, mode):
    x = const_batch(6, 16, 16)
    out = mixkit.create("smoothmix", shape=shape, mode=mode)(x, torch.arange(6), generator=gen(2))
    p = out.params
    torch.testing.assert_close(p.lam, p.mask.double().flatten(1).mean(1).expand(6))
    mixed = p.index != torch.arange(6)
    torch.testing.assert_close(own_share(x, out.x, p.index)[mixed], p.lam[mixed])  # lam is the SAMPLE's share
    assert p.mask.dtype == torch.float32 and ((p.mask >= 0) & (p.mask <= 1)).all()


def test_smoothmix_circle_is_one_minus_a_gaussian_with_sigma_in_range():
    h = 32
    params = mixkit.create("smoothmix", mode="elem").sample(torch.zeros(50, 1, h, h), generator=gen(3))
    m = params.mask.double()[:, 0]
    for k in range(50):
        flat = int(m[k].argmin())
        r, c = divmod(flat, h)
        assert float(m[k, r, c]) == 0.0  # the partner fully at the centre
        nb = float(m[k, r, c + 1] if c + 1 < h else m[k, r, c - 1])
        sigma = math.sqrt(-1.0 / (2 * math.log(1 - nb)))
        assert 0.25 * h - 1e-3 <= sigma <= 0.5 * h + 1e-3


# ------------------------------------------------------------------------------------ GMix
def test_gmix_blob_is_the_official_kernel():
    h, lam, (cy, cx) = 16, 0.3, (5, 9)
    r, q = torch.meshgrid(torch.arange(h), torch.arange(h), indexing="ij")
    official = torch.exp(-((q - cx) ** 2 + (r - cy) ** 2).double() * math.pi / (lam * h * h))  # gmix_gaussian_kernel
    sigma = torch.tensor([math.sqrt(lam * h * h / (2 * math.pi))])
    torch.testing.assert_close(MM.gaussian_blob(torch.tensor([[cy, cx]]), sigma, (h, h))[0, 0], official.float())
    centred = MM.gaussian_blob(torch.tensor([[32.0, 32.0]]), torch.tensor([math.sqrt(0.1 * 64 * 64 / (2 * math.pi))]), (64, 64))
    assert abs(float(centred.mean()) - 0.1) < 1e-3  # the blob's area is lam * H * W


def test_gmix_lambda_is_the_mask_mean_and_the_blob_holds_the_smaller_share():
    x = torch.zeros(400, 1, 16, 16)
    p = mixkit.create("gmix", mode="elem").sample(x, generator=gen(4))
    torch.testing.assert_close(p.lam, p.mask.double().flatten(1).mean(1))
    small = p.lam < 0.5  # mask = G (1 at the centre) for the sample's small share, else 1 - G
    assert (p.mask.flatten(1).amax(1)[small] == 1).all() and (p.mask.flatten(1).amin(1)[~small] == 0).all()
    assert 0.3 < float(small.double().mean()) < 0.7
    assert abs(float(p.lam.mean()) - 0.5) < 0.03  # symmetric draws


# ------------------------------------------------------------------------------------ HMix
def test_hmix_follows_the_official_formula_and_label():
    x = torch.randn(8, 3, 16, 16, generator=gen(5))
    out = mixkit.create("hmix", mode="elem")(x, torch.arange(8), generator=gen(6))
    p = out.params
    assert isinstance(p, HMixParams)
    inside = box_mask(p.boxes, (16, 16))
    w = p.outside.float().view(-1, 1, 1, 1)
    torch.testing.assert_close(out.x, torch.where(inside, x[p.index], w * x + (1 - w) * x[p.index]))
    share = (inside.logical_not().double().flatten(1).mean(1) * p.outside)  # the sample's realised weight
    torch.testing.assert_close(p.lam, share)
    side = (p.boxes[:, 2:] - p.boxes[:, :2]).double()
    assert (side <= torch.floor(16 * torch.sqrt(0.5 * (1 - p.lam))).unsqueeze(1) + 1e-9).all()


def test_hmix_lambda_is_beta_and_ratio_zero_is_mixup():
    x = torch.zeros(20000, 1, 8, 8)
    lam = mixkit.create("hmix", mode="elem").sample(x, generator=gen(7)).lam
    assert abs(float(lam.mean()) - 0.5) < 0.01 and abs(float(lam.var()) * 12 - 1) < 0.05  # Beta(1, 1)
    x = torch.randn(4, 2, 8, 8, generator=gen(8))
    out = mixkit.create("hmix", r=0.0, mode="elem")(x, torch.arange(4), generator=gen(9))
    lam = out.params.lam.float().view(-1, 1, 1, 1)
    torch.testing.assert_close(out.x, lam * x + (1 - lam) * x[out.params.index])


# --------------------------------------------------------------------------------- GridMix
def test_gridmix_label_is_the_realised_area_of_the_cells():
    x = const_batch(6, 8, 12)
    out = mixkit.create("gridmix", grid=(2, 3), mode="elem")(x, torch.arange(6), generator=gen(10))
    p = out.params
    assert isinstance(p, GridParams) and torch.equal(p.mask, MM.grid_cell_mask(p.cells, (8, 12)))
    torch.testing.assert_close(p.lam, p.cells.double().flatten(1).mean(1))  # equal cells: area = cell share
    mixed = p.index != torch.arange(6)
    torch.testing.assert_close(own_share(x, out.x, p.index)[mixed], p.lam[mixed])
    with pytest.raises(mixkit.ShapeError, match="grid"):
        mixkit.create("gridmix", grid=8)(torch.rand(2, 1, 4, 4), torch.arange(2))


class CellNet(TinyNet):
    def __init__(self):
        super().__init__()
        self.cells = MixGrid.make_local_head(6, 5)


MixGrid = mixkit.method_info("gridmix").cls


@pytest.mark.parametrize("soft", [False, True])
def test_gridmix_local_loss_in_the_training_step(soft):
    torch.manual_seed(0)
    net, x = CellNet(), torch.randn(4, 3, 16, 16, generator=gen(11))
    y = torch.tensor([0, 1, 2, 3])
    labels = F.one_hot(y, 5).float() if soft else y
    m = mixkit.create("gridmix", grid=4, mode="elem", feature_layer="layer2", local_head="cells", local_loss_weight=0.5)
    step = m.train_step(net, x, labels, criterion=mixkit.mixup_cross_entropy, generator=gen(12))
    out = m(x, labels, generator=gen(12))  # the same draws, replayed by hand
    feats = net.layer2(net.layer1(net.stem(out.x)))
    cell_logits = net.cells(F.adaptive_avg_pool2d(feats, 4))
    cells = out.params.cells.expand(4, 4, 4)
    cell_y = torch.where(cells, y.view(-1, 1, 1), y[out.params.index].view(-1, 1, 1))
    ref = mixkit.mixup_cross_entropy(net(out.x), out.target) + 0.5 * F.cross_entropy(cell_logits, cell_y)
    torch.testing.assert_close(step.loss, ref)
    assert step.logs["local_loss"] > 0
    step.loss.backward()
    assert net.cells.weight.grad is not None and net.cells.weight.grad.abs().sum() > 0


def test_gridmix_local_head_can_be_the_models_linear_classifier_and_options_are_explicit():
    torch.manual_seed(0)
    net, x, y = TinyNet(), torch.randn(2, 3, 8, 8), torch.tensor([0, 4])
    m = mixkit.create("gridmix", grid=2, feature_layer="layer2", local_head="head.2")
    step = m.train_step(net, x, y, criterion=mixkit.mixup_cross_entropy, generator=gen(13))
    assert step.loss.ndim == 0 and torch.isfinite(step.loss)
    plain = mixkit.create("gridmix").train_step(net, x, y, criterion=mixkit.mixup_cross_entropy, generator=gen(13))
    assert plain.logs == {}  # no feature_layer: the global loss only
    with pytest.raises(mixkit.HyperParameterError, match="both"):
        mixkit.create("gridmix", feature_layer="layer2")
    with pytest.raises(mixkit.ModelError, match="layer3"):
        mixkit.create("gridmix", feature_layer="layer3", local_head="head.2").train_step(
            net, x, y, criterion=mixkit.mixup_cross_entropy)


def test_grid_local_loss_gradcheck():
    feats = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    head = nn.Conv2d(3, 4, 1).double()
    cells, index = torch.tensor([[[True, False], [False, True]]]), torch.tensor([1, 0])
    y = torch.tensor([1, 3])
    soft = torch.softmax(torch.randn(2, 4, dtype=torch.float64), 1)
    fn = lambda f: MM.grid_cross_entropy(MM.grid_logits(f, head, (2, 2)), y, index, cells)
    assert torch.autograd.gradcheck(fn, (feats,))
    linear = nn.Linear(3, 4).double()
    fs = lambda f: MM.grid_cross_entropy(MM.grid_logits(f, linear, (2, 2)), soft, index, cells)
    assert torch.autograd.gradcheck(fs, (feats,))


# -------------------------------------------------------------------------------- StackMix
def _stack_ref(x, j, dim):
    """Independent StackMix: pairwise means of each image along ``dim`` (even sizes)."""
    half = lambda t: t.unflatten(dim, (t.shape[dim] // 2, 2)).mean(dim + 1)
    return torch.cat([half(x), half(x[j])], dim=dim)


@pytest.mark.parametrize("axis,dim", [("width", 3), ("height", 2)])
def test_stackmix_squeezes_and_stacks_the_pair(axis, dim):
    x = torch.randn(5, 3, 6, 8, generator=gen(14))
    out = mixkit.create("stackmix", axis=axis)(x, torch.arange(5), generator=gen(15))
    torch.testing.assert_close(out.x, _stack_ref(x, out.params.index, dim))
    assert (out.params.lam == 0.5).all() and mixkit.create("stackmix").fixed_lambda


def test_stackmix_direct_path_equals_the_general_one():
    from mixkit.functional.masks import stack_pair

    g = gen(20)
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(6, 3, 8, 10, generator=g).contiguous(memory_format=layout)
        index = torch.randperm(6, generator=g)
        for k in (0, 1):
            axis = torch.full((6,), k)
            fast = stack_pair(x, index, axis)  # one axis for every row, even size: written in place
            general = stack_pair(x, index, torch.cat([axis[:5], torch.tensor([-1])]))  # the loop over axes
            assert torch.equal(fast[:5], general[:5]) and fast.is_contiguous(memory_format=layout)
            assert torch.equal(fast, _stack_ref(x, index, 2 + k).contiguous(memory_format=layout)) or \
                torch.allclose(fast, _stack_ref(x, index, 2 + k))
    leaf = torch.randn(4, 3, 6, 6, generator=g, requires_grad=True)  # under autograd: the general path
    stack_pair(leaf, torch.tensor([1, 0, 3, 2]), torch.zeros(4, dtype=torch.long)).sum().backward()
    assert leaf.grad is not None


def test_stackmix_odd_size_random_axis_and_uint8():
    x = torch.randn(3, 1, 4, 5, generator=gen(16))
    p = StackParams(index=torch.tensor([1, 2, 0]), lam=torch.tensor([0.6, 0.5, 1.0]), axis=torch.tensor([1, 0, -1]))
    out = mixkit.create("stackmix").apply(x, p)
    torch.testing.assert_close(out[0, :, :, :3], F.adaptive_avg_pool2d(x[0], (4, 3)))  # the sample keeps 3 of 5
    torch.testing.assert_close(out[0, :, :, 3:], F.adaptive_avg_pool2d(x[1], (4, 2)))
    torch.testing.assert_close(out[1], _stack_ref(x, torch.tensor([1, 2, 0]), 2)[1])
    assert torch.equal(out[2], x[2])
    params = mixkit.create("stackmix", axis="random", mode="elem").sample(torch.zeros(200, 1, 4, 5), generator=gen(17))
    assert set(params.axis.tolist()) == {0, 1}
    torch.testing.assert_close(params.lam, torch.where(params.axis == 1, 0.6, 0.5).double())
    xu = (torch.rand(4, 3, 8, 8, generator=gen(18)) * 255).to(torch.uint8)
    ou = mixkit.create("stackmix")(xu, torch.arange(4), generator=gen(19))
    torch.testing.assert_close(ou.x.float(), _stack_ref(xu.float(), ou.params.index, 3).round())


# ------------------------------------------------------------------------------------ YOCO
def _yoco_ref(x, p, inner):
    """Independent YOCO: cut, flip each half per params, mix each half, concatenate."""
    size = x.shape[p.dim]
    halves = [x.narrow(p.dim, 0, p.split), x.narrow(p.dim, p.split, size - p.split)]
    parts = []
    for k, h in enumerate(halves):
        h = torch.where(p.flips[:, k].view(-1, 1, 1, 1), h.flip(-1), h)
        if inner is not None:
            lam = p.inner[k].lam.float().view(-1, 1, 1, 1)
            h = lam * h + (1 - lam) * h[p.index] if inner == "mixup" else h
        parts.append(h)
    return torch.where(p.active.view(-1, 1, 1, 1), torch.cat(parts, p.dim), x)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_yoco_with_mixup_matches_the_reference_and_labels_stay_consistent(mode):
    x = torch.randn(6, 3, 8, 10, generator=gen(20))
    for seed in range(4):
        out = mixkit.create("yoco", mode=mode)(x, torch.arange(6), generator=gen(seed))
        p = out.params
        torch.testing.assert_close(out.x, _yoco_ref(x, p, "mixup"))
        assert all(torch.equal(q.index, p.index) for q in p.inner)  # one partner for both halves
        torch.testing.assert_close(p.lam, (p.inner[0].lam + p.inner[1].lam) / 2)  # even sizes: 1/2 each


def test_yoco_cut_direction_and_flip_statistics():
    m, x = mixkit.create("yoco", inner=None), torch.zeros(2, 1, 6, 6)
    g = gen(21)
    draws = [m.sample(x, generator=g) for _ in range(400)]
    dims = torch.tensor([d.dim for d in draws])
    flips = torch.stack([d.flips[0] for d in draws]).double()
    assert abs(float((dims == 3).double().mean()) - 0.5) < 0.08 and set(dims.tolist()) == {2, 3}
    assert (abs(flips.mean(0) - 0.5) < 0.08).all()


def test_yoco_without_inner_keeps_labels_and_only_flips():
    x = torch.randn(4, 3, 8, 8, generator=gen(22))
    out = mixkit.create("yoco", inner=None, mode="elem")(x, torch.tensor([0, 1, 2, 3]), generator=gen(23))
    assert (out.params.lam == 1).all() and out.params.inner is None
    torch.testing.assert_close(out.x, _yoco_ref(x, out.params, None))
    assert not torch.equal(out.x, x)  # flips still happen although every lambda is 1


def flip_vertically(t):
    return t.flip(-2)


def test_yoco_inner_cutmix_on_uint8_custom_augment_and_errors():
    xu = (torch.rand(4, 3, 8, 8, generator=gen(24)) * 255).to(torch.uint8)
    m = mixkit.create("yoco", inner="cutmix", inner_kwargs={"alpha": 0.5}, augment=flip_vertically, mode="elem")
    out = m(xu, torch.arange(4), generator=gen(25))
    assert out.x.dtype == torch.uint8 and torch.equal(m.apply(xu, out.params), out.x)
    m2 = pickle.loads(pickle.dumps(m))
    assert m2.hparams == m.hparams and torch.equal(m2(xu, torch.arange(4), generator=gen(25)).x, out.x)
    with pytest.raises(mixkit.DTypeError):
        mixkit.create("yoco")(xu, torch.arange(4))
    for bad in ("yoco", "manifold_mixup", "randommix"):
        with pytest.raises(mixkit.HyperParameterError, match="two-source"):
            mixkit.create("yoco", inner=bad)
    with pytest.raises(mixkit.HyperParameterError, match="p or mode"):
        mixkit.create("yoco", inner_kwargs={"p": 0.5})


def test_mask_params_replay_on_features():
    """Params sampled on images replay on any tensor of the same spatial size."""
    x = torch.randn(3, 2, 8, 8, generator=gen(26))
    for name in ("smoothmix", "gmix", "gridmix"):
        out = mixkit.create(name, mode="elem")(x, torch.arange(3), generator=gen(27))
        assert isinstance(out.params, MaskParams)
        feats = torch.randn(3, 7, 8, 8, generator=gen(28))
        m = out.params.mask.float()
        torch.testing.assert_close(mixkit.create(name).apply(feats, out.params), m * feats + (1 - m) * feats[out.params.index])


def test_row_sums64_equals_the_whole_float64_reduction(monkeypatch):
    import importlib

    masks_mod = importlib.import_module("mixkit.functional.masks")
    monkeypatch.setattr(masks_mod, "_SUM_CHUNK_BYTES", 3 * 8 * 40 * 50)  # 3 rows a chunk: several chunks
    g = torch.Generator().manual_seed(0)
    for t in (torch.rand(10, 1, 40, 50, generator=g), torch.rand(10, 1, 40, 50, generator=g) > 0.5,
              torch.rand(10, 1, 40, 50, generator=g).double(), torch.rand(2, 1, 40, 50, generator=g)):
        want = t.flatten(1).sum(dim=1, dtype=torch.float64)
        got = masks_mod.row_sums64(t)
        assert got.dtype == torch.float64 and torch.equal(got, want)


def test_box_views_equal_narrow_chains():
    # _narrow's single as_strided view: the same view as one narrow per dim, on any layout
    from mixkit.functional.boxes import _narrow

    def chained(t, spans):
        for dim, start, length in spans:
            t = t.narrow(dim, start, length)
        return t

    g = torch.Generator().manual_seed(0)
    base = torch.rand(5, 3, 9, 11, generator=g)
    views = [base, base.contiguous(memory_format=torch.channels_last), base.permute(0, 2, 3, 1), base[1:4, :, 2:, 1:]]
    for t in views:
        h, w = t.shape[2], t.shape[3]
        for _ in range(20):
            y0, x0 = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
            spans = ((2, y0, int(torch.randint(0, h - y0 + 1, (1,), generator=g))),
                     (3, x0, int(torch.randint(0, w - x0 + 1, (1,), generator=g))))
            got, want = _narrow(t, spans), chained(t, spans)
            assert got.shape == want.shape and got.stride() == want.stride()
            assert got.storage_offset() == want.storage_offset() and torch.equal(got, want)
    # a box past the edge is narrow's business (it raises), a negative start wraps as narrow does
    with pytest.raises(Exception):
        _narrow(base, ((2, 5, 6), (3, 0, 2)))
    assert torch.equal(_narrow(base, ((2, -2, 2), (3, 0, 2))), chained(base, ((2, -2, 2), (3, 0, 2))))
