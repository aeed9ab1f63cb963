"""The speed paths give the same results as the plain computations they replace."""

from __future__ import annotations

import importlib

import math

import pytest
import torch

import mixkit
from mixkit.errors import LabelError
from mixkit.functional.blend import blend, uniform_value
from mixkit.functional.boxes import box_fraction, sample_cut_boxes

blend_mod = importlib.import_module("mixkit.functional.blend")  # the module; the package exports the function
scratch_mod = importlib.import_module("mixkit.functional.scratch")


def _reference_blend(x: torch.Tensor, index: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """float32 (or float64) arithmetic, rounded once to the input's dtype."""
    work = x.double() if x.dtype == torch.float64 else x.float()
    w = lam.to(work.dtype).view((-1,) + (1,) * (x.ndim - 1))
    return torch.lerp(work[index], work, w).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("whole", [False, True])
def test_blend_rounds_once_from_float32(dtype, per_sample, channels_last, whole, monkeypatch):
    monkeypatch.setattr(scratch_mod, "_HALF_CHUNK", 100)  # several chunks, a ragged last one
    if not whole:  # the chunked form of larger batches (else the batch is converted whole)
        monkeypatch.setattr(scratch_mod, "_HALF_WHOLE", 0)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(11, 3, 5, 7, generator=g) * 8 - 4).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    index = torch.randperm(11, generator=g)
    lam = torch.rand(11, generator=g, dtype=torch.float64) if per_sample else torch.full((11,), 0.3717, dtype=torch.float64)
    before = x.clone()
    out = blend(x, index, lam)
    assert torch.equal(x, before)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(out, _reference_blend(x, index, lam))


def test_whole_half_blend_returns_a_tensor_of_its_own():
    """The whole-batch half blend works in reused float32 buffers; its results never share
    them, so a later call leaves an earlier result intact."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(16, 3, 8, 8, generator=g).bfloat16()
    index, lam = torch.randperm(16, generator=g), torch.rand(16, generator=g, dtype=torch.float64)
    first = blend(x, index, lam)
    kept = first.clone()
    blend(torch.rand(16, 3, 8, 8, generator=g).bfloat16(), index, lam)
    assert torch.equal(first, kept) and torch.equal(first, _reference_blend(x, index, lam))
    for buf in scratch_mod._SCRATCH.bufs["whole"]:
        assert first.untyped_storage().data_ptr() != buf.untyped_storage().data_ptr()


def test_half_rows_scratch_is_per_thread_and_grows():
    """The float32 scratch of per-row half blends is reused across calls and sizes and is
    not shared between threads: concurrent calls give the single-threaded results."""
    import threading

    g = torch.Generator().manual_seed(2)
    cases = []
    for b, size in ((64, 8), (9, 3), (128, 16)):  # a small call after a large one, then larger
        x = torch.rand(b, 3, size, size, generator=g).bfloat16()
        index, lam = torch.randperm(b, generator=g), torch.rand(b, generator=g, dtype=torch.float64)
        cases.append((x, index, lam, _reference_blend(x, index, lam)))
    for x, index, lam, ref in cases:
        assert torch.equal(blend(x, index, lam), ref)
    failures = []

    def work():
        for _ in range(20):
            for x, index, lam, ref in cases:
                if not torch.equal(blend(x, index, lam), ref):
                    failures.append(x.shape)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("shape", [(6, 2, 9), (6, 3, 8, 10), (5, 2, 4, 6, 7)])
def test_gather_box_equals_the_region_gather(shape, dtype):
    """Band or direct gather, the values are the box's rows of the partners, for any box
    (empty boxes included); pasted straight into a copy's box, only the box changes."""
    from mixkit.functional.boxes import _copy_box_rows, _gather_box

    g = torch.Generator().manual_seed(3)
    draw = lambda high: int(torch.randint(0, high, (1,), generator=g))  # noqa: E731
    for layout in ("plain", "channels_last", "strided"):
        x = (torch.rand(shape, generator=g) * 255).to(dtype)
        if layout == "channels_last" and x.ndim in (4, 5):
            x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
            x = x.permute((0,) + tuple(range(2, x.ndim)) + (1,))  # the memory-order view
        elif layout == "strided":
            x = (torch.rand((shape[0], shape[1] * 2) + shape[2:], generator=g) * 255).to(dtype)[:, ::2]
        index = torch.randperm(shape[0], generator=g)
        for _ in range(40):
            region, spans = [slice(None)], []
            for dim, size in enumerate(x.shape[1:], start=1):
                if dim == 1 and draw(2):  # the leading dim left out of the box (channels)
                    region.append(slice(None))
                    continue
                a = 0 if draw(3) == 0 else draw(size + 1)
                b = size if draw(3) == 0 else a + draw(size - a + 1)
                region.append(slice(a, b))
                spans.append((dim, a, b - a))
            ref = x[tuple(region)].index_select(0, index)
            assert torch.equal(_gather_box(x, index, spans), ref)
            assert torch.equal(_gather_box(x, index, spans, scratch=True), ref)  # the reused buffer
            out, expected = x.clone(), x.clone()
            expected[tuple(region)] = ref
            _copy_box_rows(out, x, index, spans)  # gathered straight into out's box
            assert torch.equal(out, expected)


def test_blend_accepts_a_float_weight():
    x = torch.rand(6, 4)
    index = torch.tensor([5, 4, 3, 2, 1, 0])
    assert torch.equal(blend(x, index, 0.25), blend(x, index, torch.full((6,), 0.25)))


def test_uniform_value():
    assert uniform_value(torch.full((5,), 0.5)) == 0.5
    assert uniform_value(torch.tensor([0.5, 0.5, 0.25])) is None
    assert uniform_value(torch.tensor([0.75])) == 0.75
    assert uniform_value(0.125) == 0.125


@pytest.mark.parametrize("spatial", [(32, 32), (7, 13), (16,), (5, 6, 9)])
def test_one_cut_box_matches_the_vectorised_formula(spatial):
    d = len(spatial)
    for seed in range(200):
        lam = torch.rand(1, generator=torch.Generator().manual_seed(seed + 1000), dtype=torch.float64)
        if seed < 3:
            lam = torch.tensor([0.0, 1.0, 0.5][seed], dtype=torch.float64).view(1)
        boxes = sample_cut_boxes(lam, spatial, generator=torch.Generator().manual_seed(seed))
        # the same computation, tensor-wise, with the same draws
        g = torch.Generator().manual_seed(seed)
        ratio = (1.0 - lam).clamp(0, 1) ** (1.0 / d)
        sizes = torch.tensor(spatial)
        half = torch.floor(ratio.unsqueeze(1) * sizes).long() // 2
        centre = torch.stack([torch.randint(0, s, (1,), generator=g) for s in spatial], dim=1)
        expected = torch.cat([(centre - half).clamp(min=0), torch.minimum(centre + half, sizes)], dim=1)
        assert torch.equal(boxes, expected), (seed, boxes, expected)
        many = torch.cat([boxes, torch.tensor([[0] * d + list(spatial)])])
        assert torch.equal(box_fraction(boxes, spatial), box_fraction(many, spatial)[:1])


@pytest.mark.parametrize("spatial", [(32, 32), (7, 13), (16,), (5, 6, 9), (1, 1)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_many_cut_boxes_match_the_tensor_formula(spatial, dtype):
    """Per-sample boxes (numpy for one or two dims): the tensor formula's values, its draws in
    the same order (one randint per dim), the generator left in the same state."""
    d = len(spatial)
    for seed in range(40):
        n = 1 + seed * 7
        lam = torch.rand(n, generator=torch.Generator().manual_seed(seed + 500), dtype=torch.float64)
        lam[::5] = 0.0
        lam[1::7] = 1.0
        lam[2::11] = 1.5  # outside [0, 1]: clipped to an empty box
        lam[3::13] = -0.25  # a full box
        lam = lam.to(dtype)
        g = torch.Generator().manual_seed(seed)
        boxes = sample_cut_boxes(lam, spatial, generator=g)
        ref = torch.Generator().manual_seed(seed)
        ratio = torch.pow(torch.rsub(lam.to(torch.float64), 1.0).clamp_(0, 1), 1.0 / d)
        sizes = torch.tensor(spatial)
        half = torch.floor(ratio.unsqueeze(1) * sizes).long() // 2
        centre = torch.stack([torch.randint(0, s, (n,), generator=ref) for s in spatial], dim=1)
        expected = torch.cat([(centre - half).clamp(min=0), torch.minimum(centre + half, sizes)], dim=1)
        assert boxes.dtype == torch.int64 and torch.equal(boxes, expected), (seed, boxes, expected)
        assert torch.equal(g.get_state(), ref.get_state())
        sides = (expected[:, d:] - expected[:, :d]).clamp_min(0).to(torch.float64)
        share = box_fraction(boxes, spatial)
        assert share.dtype == torch.float64 and torch.equal(share, sides.prod(dim=1) / float(math.prod(spatial)))


def test_cut_boxes_take_any_float_lambda_without_warnings():
    import warnings

    ref = sample_cut_boxes(torch.tensor([0.3, 0.7, 0.5], dtype=torch.float64), (8, 8),
                           generator=torch.Generator().manual_seed(0))
    for dtype in (torch.bfloat16, torch.float16):  # exact in float64: the same boxes
        got = sample_cut_boxes(torch.tensor([0.3, 0.7, 0.5], dtype=dtype).double().to(dtype), (8, 8),
                               generator=torch.Generator().manual_seed(0))
        assert got.shape == (3, 4)
    got = sample_cut_boxes(torch.tensor([0.5, 0.5], dtype=torch.bfloat16), (8, 8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(got, sample_cut_boxes(torch.tensor([0.5, 0.5], dtype=torch.float64), (8, 8),
                                             generator=torch.Generator().manual_seed(0)))
    assert ref.shape == (3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        boxes = sample_cut_boxes(torch.tensor([float("nan"), 0.5], dtype=torch.float64), (8, 8),
                                 generator=torch.Generator().manual_seed(0))
    assert boxes.shape == (2, 4)


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
@pytest.mark.parametrize("p", [1.0, 0.5])
def test_batch_mode_lam_value_is_every_rows_lambda(name, p):
    method = mixkit.create(name, p=p)
    x, y = torch.rand(9, 3, 8, 8), torch.arange(9) % 4
    for seed in range(20):
        params = method(x, y, generator=torch.Generator().manual_seed(seed)).params
        assert params.lam_value is not None and torch.all(params.lam == params.lam_value)


@pytest.mark.parametrize("alpha", [1.0, 1e-4])
def test_lam_value_agrees_with_lam_in_every_mode(alpha):
    x, y = torch.rand(3, 2, 4, 4), torch.arange(3)
    for mode in ("batch", "elem"):
        method = mixkit.MixUp(alpha=alpha, mode=mode)
        for seed in range(50):
            params = method(x, y, generator=torch.Generator().manual_seed(seed)).params
            if params.lam_value is None:
                assert not torch.all(params.lam == params.lam[0])
            else:
                assert torch.all(params.lam == params.lam_value)


def test_label_range_is_rechecked_after_the_labels_change():
    method = mixkit.MixUp()
    y = torch.tensor([0, 1, 2, 3])
    out = method(torch.rand(4, 3, 8, 8), y, generator=torch.Generator().manual_seed(0))
    assert out.target.soft(num_classes=4).shape == (4, 4)
    y[0] = 7  # in place: the remembered bounds of ``y`` no longer hold
    with pytest.raises(LabelError, match=r"\[1, 7\]"):
        out.target.soft(num_classes=4)


def _autograd_reference(x, fn, g):
    ref = x.detach().clone().requires_grad_()
    fn(ref).backward(g)
    return ref.grad


@pytest.mark.parametrize("channels_last", [False, True])
def test_scalar_blend_backward_matches_autograd(channels_last):
    index = torch.tensor([3, 0, 0, 1, 4])  # a repeated partner: its gradient is summed
    x64 = torch.rand(5, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    lam = torch.full((5,), 0.3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: blend(t, index, lam), (x64,))
    assert torch.autograd.gradgradcheck(lambda t: blend(t, index, lam), (x64,))
    x = torch.rand(5, 2, 3, 4)
    x = (x.contiguous(memory_format=torch.channels_last) if channels_last else x).requires_grad_()
    out = blend(x, index, lam)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    g = torch.rand_like(out)
    out.backward(g)
    expected = _autograd_reference(x, lambda t: torch.lerp(t[index], t, 0.3), g)
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize("pairing", [[3, 0, 0, 1, 4], [3, 0, 2, 4, 1]])  # a repeated partner; a permutation
@pytest.mark.parametrize("channels_last", [False, True])
def test_one_box_paste_backward_matches_autograd(channels_last, pairing):
    from mixkit.functional.boxes import _inverse_permutation, paste_boxes

    index, box = torch.tensor(pairing), torch.tensor([[1, 2, 4, 6]])
    inverse = _inverse_permutation(index)  # the backward's gather path, for permutations
    assert (inverse is None) == (len(set(pairing)) < len(pairing))
    if inverse is not None:
        assert torch.equal(index[inverse], torch.arange(5))
    x64 = torch.rand(5, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: paste_boxes(t, index, box), (x64,))
    assert torch.autograd.gradgradcheck(lambda t: paste_boxes(t, index, box), (x64,))
    x = torch.rand(5, 2, 6, 7)
    x = (x.contiguous(memory_format=torch.channels_last) if channels_last else x).requires_grad_()
    out = paste_boxes(x, index, box)
    g = torch.rand_like(out)
    out.backward(g)

    def reference(t):
        o = t.clone()
        o[:, :, 1:4, 2:6] = t[index][:, :, 1:4, 2:6]
        return o

    assert torch.equal(out, reference(x.detach()))
    assert torch.equal(x.grad, _autograd_reference(x, reference, g))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.uint8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_one_box_resize_paste_goes_through_float32_in_chunks(dtype, channels_last, monkeypatch):
    import torch.nn.functional as F

    from mixkit.functional import boxes, resized_paste

    assert boxes.paste_resized is resized_paste.paste_resized  # the old import path still serves it
    monkeypatch.setattr(resized_paste, "_RESIZE_CHUNK", 1000)  # 3 images per chunk, a ragged last one
    x = torch.rand(8, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    x = (x * 255).to(dtype) if dtype == torch.uint8 else x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    index, box = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0]), torch.tensor([[2, 3, 9, 8]])
    out = resized_paste.paste_resized(x, index, box)
    small = F.interpolate(x.float(), size=[7, 5], mode="bilinear", align_corners=False)[index]
    expected = x.clone()
    cast = small.round().clamp(0, 255).to(dtype) if dtype == torch.uint8 else small.to(dtype)
    expected[:, :, 2:9, 3:8] = cast
    assert torch.equal(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_pixel_gather_backward_matches_autograd(dtype):
    from mixkit.functional.pixel_gather import _gather_pixels, _gather_planes

    flat = torch.randint(0, 4 * 30, (4 * 30,), generator=torch.Generator().manual_seed(0))  # repeats
    x = torch.rand(4, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(lambda t: _gather_pixels(t, flat), (x,))
        assert torch.autograd.gradgradcheck(lambda t: _gather_pixels(t, flat), (x,))
    x = x.detach().to(dtype).requires_grad_()
    out = _gather_pixels(x, flat)
    g = torch.rand_like(out)
    out.backward(g)
    ref = x.detach().float().requires_grad_()
    _gather_planes(ref, flat).backward(g.float())  # plain autograd through the assignments
    torch.testing.assert_close(x.grad.float(), ref.grad, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_per_row_blend_backward_matches_autograd(dtype, channels_last):
    index = torch.tensor([3, 0, 0, 1, 4])
    lam = torch.rand(5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x64 = torch.rand(5, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: blend(t, index, lam), (x64,))
    assert torch.autograd.gradgradcheck(lambda t: blend(t, index, lam), (x64,))
    x = torch.rand(5, 2, 3, 4).to(dtype)
    x = (x.contiguous(memory_format=torch.channels_last) if channels_last else x).requires_grad_()
    out = blend(x, index, lam)
    with torch.no_grad():
        assert torch.equal(out, blend(x, index, lam))  # the same forward as without autograd
    g = torch.rand_like(out)
    out.backward(g)
    w = lam.float().view(-1, 1, 1, 1)
    expected = _autograd_reference(x.detach().float(), lambda t: torch.lerp(t[index], t, w), g.float())
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
    torch.testing.assert_close(x.grad.float(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("placement", ["corner", "aligned"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_one_geometry_mosaic_backward_matches_autograd(placement, channels_last):
    from mixkit.functional.multi import _copy_cells

    method = mixkit.create("mosaic", placement=placement)
    x64 = torch.rand(5, 2, 8, 9, dtype=torch.float64)
    params = method.sample(x64, torch.arange(5), generator=torch.Generator().manual_seed(3))
    assert torch.autograd.gradcheck(lambda t: method.apply(t, params), (x64.clone().requires_grad_(),))
    assert torch.autograd.gradgradcheck(lambda t: method.apply(t, params), (x64.clone().requires_grad_(),))
    x = torch.rand(5, 2, 8, 9)
    x = (x.contiguous(memory_format=torch.channels_last) if channels_last else x).requires_grad_()
    out = method.apply(x, params)
    with torch.no_grad():
        assert torch.equal(out, method.apply(x, params))
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    g = torch.rand_like(out)
    out.backward(g)
    # the same cells copied with plain autograd (through the window assignments)
    import mixkit.functional.multi as multi_mod

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(multi_mod._CellCopy, "apply", staticmethod(lambda v, s, w: _copy_cells(v, s, w)))
        expected = _autograd_reference(x, lambda t: method.apply(t, params), g)
    torch.testing.assert_close(x.grad, expected)


def test_blend_keeps_a_learned_lambda_in_the_graph():
    x = torch.rand(4, 3, 2, 2)
    lam = torch.full((4,), 0.3, requires_grad=True)  # equal values: still a tensor in the graph
    blend(x, torch.tensor([1, 0, 3, 2]), lam).sum().backward()
    expected = (x - x[torch.tensor([1, 0, 3, 2])]).flatten(1).sum(1)  # d/dlam of lerp
    torch.testing.assert_close(lam.grad, expected)
