"""Large samples on the CPU are blended and pasted one row at a time (no gathered copy of the
partners): the same values, strides and gradients as the batched forms.

The row paths start at ``row_paths.ROW_LERP_MIN`` elements per sample (a 3 x 105 x 105 image);
here the threshold is patched to 1 so that small batches take them, and compared with the
batched forms (threshold out of reach).
"""

from __future__ import annotations

import importlib

import pytest
import torch

import mixkit
from mixkit.functional import row_paths

blend_mod = importlib.import_module("mixkit.functional.blend")  # the module; the package exports the function

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _batch(dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    x = torch.rand(7, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    x = (x * 255).round().to(dtype) if not dtype.is_floating_point else x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _both(monkeypatch, run):
    """``run()`` through the batched forms, then through the row paths (per-sample pastes both
    ways: one copy of the batch then the boxes, and row by row; checked equal)."""
    monkeypatch.setattr(row_paths, "ROW_LERP_MIN", 1 << 60)
    batched = run()
    monkeypatch.setattr(row_paths, "ROW_LERP_MIN", 1)
    monkeypatch.setattr(row_paths, "ROW_COPY_MIN_BYTES", 1 << 60)
    rows = run()
    monkeypatch.setattr(row_paths, "ROW_COPY_MIN_BYTES", 0)
    by_row = run()
    for a, b in zip(_tensors(rows), _tensors(by_row), strict=True):
        assert torch.equal(a, b) and a.stride() == b.stride()
    return batched, rows


def _tensors(result):
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, tuple):
        return [t for part in result for t in _tensors(part)]
    return [result.x]  # a MixOutput


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("lam", ["one", "per row", "ends"])
@pytest.mark.parametrize("pairing", [[3, 0, 0, 6, 1, 2, 5], [3, 1, 5, 0, 6, 2, 4]])  # repeats; a permutation
def test_blend_row_path_equals_the_batched_blend(dtype, channels_last, lam, pairing, monkeypatch):
    """Out of place, and in place (cycle by cycle for a permutation, with a self-pair)."""
    x = _batch(dtype, channels_last)
    index = torch.tensor(pairing)
    weights = {"one": 0.3, "per row": torch.rand(7, dtype=torch.float64, generator=torch.Generator().manual_seed(1)),
               "ends": torch.tensor([0.0, 1.0, 0.5, 0.0, 1.0, 0.25, 0.75], dtype=torch.float64)}[lam]

    def run():
        own = x.clone()
        assert blend_mod.blend_(own, index, weights) is own
        return blend_mod.blend(x, index, weights), own

    (batched, batched_inplace), (rows, rows_inplace) = _both(monkeypatch, run)
    assert torch.equal(rows, batched) and rows.stride() == batched.stride() and rows.dtype == x.dtype
    assert torch.equal(rows_inplace, batched) and torch.equal(batched_inplace, batched)
    if lam == "ends":  # exact at 0 and 1
        assert torch.equal(rows[0], x[pairing[0]]) and torch.equal(rows[1], x[1])


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("p", [1.0, 0.5])
def test_methods_give_the_same_mix_on_the_row_paths(name, mode, dtype, channels_last, p, monkeypatch):
    if name == "mixup" and dtype == torch.uint8:
        pytest.skip("Mixup blends: float inputs only")
    x, y = _batch(dtype, channels_last), torch.arange(7)

    def run():
        out = mixkit.create(name, mode=mode, p=p)(x, y, generator=torch.Generator().manual_seed(2))
        own = x.clone()
        inplace = mixkit.create(name, mode=mode, p=p, inplace=True)(own, y, generator=torch.Generator().manual_seed(2))
        assert inplace.x is own
        return out.x, own

    (batched, batched_inplace), (rows, rows_inplace) = _both(monkeypatch, run)
    assert torch.equal(rows, batched) and rows.stride() == batched.stride()
    assert torch.equal(rows_inplace, batched) and torch.equal(batched_inplace, batched)
    if p == 1.0:
        assert not torch.equal(rows, x)  # something was mixed


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_are_the_same_on_the_row_paths(name, mode, dtype, monkeypatch):
    x0 = _batch(dtype, False)
    upstream = torch.rand(7, 3, 9, 11, generator=torch.Generator().manual_seed(3)).to(dtype)

    def run():
        x = x0.clone().requires_grad_()
        out = mixkit.create(name, mode=mode)(x, torch.arange(7), generator=torch.Generator().manual_seed(4)).x
        (out * upstream).sum().backward()
        return out.detach(), x.grad

    (out_a, grad_a), (out_b, grad_b) = _both(monkeypatch, run)
    assert torch.equal(out_a, out_b) and torch.equal(grad_a, grad_b)


def test_the_row_paths_start_at_large_samples():
    assert row_paths.row_wise(torch.empty(2, 3, 105, 105))  # 33,075 elements per sample
    assert not row_paths.row_wise(torch.empty(128, 3, 64, 64))
    assert not row_paths.row_wise(torch.empty(2, 3, 105, 105, device="meta"))  # CPU only


@pytest.mark.parametrize("name", ["fmix", "gmix", "smoothmix", "gridmix", "mixed_example", "hmix"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_mask_methods_give_the_same_mix_on_the_row_paths(name, mode, dtype, channels_last, monkeypatch):
    info = mixkit.method_info(name)
    x, y = _batch(dtype, channels_last), torch.arange(7)
    options = {"mode": mode} if "mode" in info.defaults else {}
    if mode == "elem" and "mode" not in info.defaults:
        pytest.skip(f"{name} has no per-sample mode")
    method = mixkit.create(name, **options)
    if dtype == torch.uint8 and method.needs_float:
        pytest.skip(f"{name} blends: float inputs only")

    def run():
        return method(x, y, generator=torch.Generator().manual_seed(5)).x

    batched, rows = _both(monkeypatch, run)
    assert torch.equal(rows, batched) and rows.stride() == batched.stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_resizemix_rows_give_the_batch_modes_resize(dtype, channels_last, monkeypatch):
    """Per sample, each partner is resized with F.interpolate, as batch mode does: the same values
    as ResizeMix batch mode applied to that sample alone (within rounding of the grid_sample form)."""
    x, y = _batch(dtype, channels_last), torch.arange(7)
    method = mixkit.create("resizemix", mode="elem", p=0.7)
    grid, rows = _both(monkeypatch, lambda: method(x, y, generator=torch.Generator().manual_seed(6)))
    assert rows.x.stride() == grid.x.stride() and torch.equal(rows.params.boxes, grid.params.boxes)
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.uint8: 1}[dtype]
    torch.testing.assert_close(rows.x.float(), grid.x.float(), atol=tol, rtol=0)
    batch_mode = mixkit.create("resizemix")
    for i, (partner, box) in enumerate(zip(rows.params.index.tolist(), rows.params.boxes)):
        pair = torch.stack([x[i], x[partner]])
        one = batch_mode.apply(pair, type(rows.params)(index=torch.tensor([1, 1]), lam=rows.params.lam[i : i + 1].expand(2),
                                                      boxes=box.unsqueeze(0)))
        assert torch.equal(rows.x[i], one[0])


@pytest.mark.parametrize("lam", [torch.tensor(0.3), torch.tensor([0.3]), "column"])
def test_row_paths_take_any_weight_shape_the_batched_forms_take(lam, monkeypatch):
    x, index = _batch(torch.float32, False), torch.tensor([3, 1, 5, 0, 6, 2, 4])
    if isinstance(lam, str):
        lam = torch.rand(7, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(7))

    def run():
        own = x.clone()
        blend_mod.blend_(own, index, lam)
        return blend_mod.blend(x, index, lam), own

    (a, a_inplace), (b, b_inplace) = _both(monkeypatch, run)
    assert torch.equal(a, b) and torch.equal(a_inplace, b_inplace) and torch.equal(a, a_inplace)


@pytest.mark.parametrize("name", ["mosaic", "ricap", "dcutmix", "cut_thumbnail"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_multi_sample_methods_give_the_same_mix_on_the_row_paths(name, dtype, channels_last, monkeypatch):
    """Per-sample Mosaic and RICAP (quadrant cells) and DCutMix (nested boxes): cell and box
    copies row by row against the per-pixel gather."""
    x, y = _batch(dtype, channels_last), torch.arange(7)

    def run():
        return mixkit.create(name, mode="elem")(x, y, generator=torch.Generator().manual_seed(3)).x

    batched, rows = _both(monkeypatch, run)
    assert torch.equal(rows, batched) and rows.stride() == batched.stride() and not torch.equal(rows, x)


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_yoco_flips_row_by_row_equal_the_batched_selection(mode, dtype, channels_last, monkeypatch):
    """YOCO's per-sample flips of large halves, copied row by row into one block, against the
    batched flip and selection (and the flip of every row)."""
    x, y = _batch(dtype, channels_last), torch.arange(7)
    inner = None if dtype == torch.uint8 else "mixup"

    def run():
        outs = []
        for seed in range(6):  # some draws flip every row of a half, some a few, some none
            out = mixkit.create("yoco", mode=mode, inner=inner)(x, y, generator=torch.Generator().manual_seed(seed))
            outs.append(out.x)
            assert out.params.flips.shape == (7, 2)
        return tuple(outs)

    batched, rows = _both(monkeypatch, run)
    for a, b in zip(batched, rows, strict=True):
        assert torch.equal(b, a) and b.stride() == a.stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_recursivemix_rows_equal_the_batched_gather(dtype, channels_last, monkeypatch):
    x, y = _batch(dtype, channels_last), torch.arange(7)

    def run():
        m = mixkit.create("recursivemix", mode="elem", alpha=0.8)
        g = torch.Generator().manual_seed(4)
        first = m(x, y, generator=g).x  # the history is the batch itself
        return first, m(x.flip(0), y, generator=g).x  # then the first call's output

    (b1, b2), (r1, r2) = _both(monkeypatch, run)
    assert torch.equal(r1, b1) and torch.equal(r2, b2) and r2.stride() == b2.stride() and not torch.equal(r2, x.flip(0))


def test_multi_row_paths_leave_bad_cells_and_boxes_to_the_batched_forms():
    view = torch.rand(2, 3, 4, 4)
    cells = torch.tensor([[0, 0, 2, 2], [0, 2, 2, 4], [2, 0, 4, 2], [2, 2, 4, 4]]).expand(2, 4, 4)
    good = torch.zeros(2, 4, 2, dtype=torch.long)
    assert row_paths.tile_rows(view, torch.zeros(2, 4, dtype=torch.long), cells, good, (4, 4), 2) is not None
    assert row_paths.tile_rows(view, torch.full((2, 4), 2), cells, good, (4, 4), 2) is None  # no row 2
    assert row_paths.tile_rows(view, torch.zeros(2, 4, dtype=torch.long), cells, good + 3, (4, 4), 2) is None  # crop off the image
    boxes = torch.tensor([[[0, 0, 5, 2]], [[1, 1, 2, 2]]])  # row 0's box overruns the 4 x 4 image
    assert row_paths.paste_nested_rows(view, torch.tensor([[0, 1], [1, 0]]), boxes, (4, 4), 2) is None


def test_row_paths_leave_bad_rows_and_boxes_to_the_batched_forms(monkeypatch):
    """Out-of-image boxes are clipped, and short or out-of-range pairings raise, as before."""
    from mixkit.functional.boxes import paste_boxes
    from mixkit.functional.resized_paste import paste_resized

    monkeypatch.setattr(row_paths, "ROW_LERP_MIN", 1)
    x = _batch(torch.float32, False)
    index = torch.tensor([1, 2, 3, 4, 5, 6, 0])
    boxes = torch.tensor([[5, 0, 12, 4]] + [[0, 0, 3, 3]] * 6)  # the first runs past the bottom edge (9)
    clipped = paste_boxes(x, index, boxes)
    assert torch.equal(clipped[0, :, 5:9, 0:4], x[1, :, 5:9, 0:4]) and torch.equal(clipped[0, :, :5], x[0, :, :5])
    assert paste_resized(x, index, boxes).shape == x.shape
    for bad in (torch.tensor([1, 2]), torch.tensor([1, 2, 3, 4, 5, 6, -1]), torch.tensor([1, 2, 3, 4, 5, 6, 7])):
        with pytest.raises((IndexError, RuntimeError)):
            blend_mod.blend(x, bad, 0.3)
        with pytest.raises((IndexError, RuntimeError)):
            blend_mod.mask_blend(x, bad, torch.rand(7, 1, 9, 11) > 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_local_mixup_distances_of_large_samples_equal_the_batched_ones(dtype, channels_last, monkeypatch):
    """Local Mixup's pair distances: the partners gathered into the thread's reused buffer (large
    samples) against a fresh gather; the buffer's later use does not change the result."""
    from mixkit.methods.linear_more import pair_distances

    x, y = _batch(dtype, channels_last), torch.arange(7)
    index = torch.tensor([3, 0, 6, 1, 2, 2, 5])  # repeated partners and a row paired with itself

    def run():
        d = pair_distances(x, index)
        out = mixkit.create("local_mixup", mode="elem", epsilon=3.0)(x, y, generator=torch.Generator().manual_seed(4))
        return d.clone(), out.x, out.params.index

    batched, rows = _both(monkeypatch, run)
    for a, b in zip(batched, rows, strict=True):
        assert torch.equal(a, b)
    flat = x.double().flatten(1)
    torch.testing.assert_close(batched[0], (flat[index] - flat).norm(dim=1), rtol=1e-5, atol=1e-5)


def test_one_box_in_place_outside_the_image_behaves_as_the_batched_form(monkeypatch):
    """A box past the edge raises (never writes into the neighbouring rows); an empty box with a
    negative start changes nothing; on either path."""
    from mixkit.functional.boxes import paste_boxes_

    x = torch.arange(36.0).view(3, 1, 3, 4)
    index = torch.tensor([1, 0, 2])
    for threshold in (1 << 60, 1):
        monkeypatch.setattr(row_paths, "ROW_LERP_MIN", threshold)
        y = x.clone()
        with pytest.raises(RuntimeError):
            paste_boxes_(y, index, torch.tensor([[0, 2, 3, 6]]))
        assert torch.equal(y[2], x[2])  # the row paired with itself is untouched
        y = x.clone()
        paste_boxes_(y, index, torch.tensor([[-1, 0, -1, 4]]))
        assert torch.equal(y, x)


def test_empty_batches_blend_on_the_cpu():
    """Empty batches, of small and of large (row-path) samples, take the batched forms."""
    from mixkit.functional.boxes import paste_boxes, paste_boxes_

    none = torch.zeros(0, dtype=torch.long)
    for e in (torch.rand(0, 3, 8, 8), torch.rand(0, 3, 8, 8, dtype=torch.bfloat16), torch.rand(0, 3, 224, 224)):
        assert paste_boxes_(e.clone(), none, torch.tensor([[2, 2, 5, 5]])).shape == e.shape
        assert paste_boxes(e, none, torch.zeros(0, 4, dtype=torch.long)).shape == e.shape
        for lam in (0.3, torch.zeros(0)):
            assert blend_mod.blend(e, none, lam).shape == e.shape
            assert blend_mod.blend_(e.clone(), none, lam).shape == e.shape
        assert blend_mod.bc_plus_blend(e, none, torch.zeros(0)).shape == e.shape


def test_thumbnail_rows_leave_box_counts_other_than_the_batch_to_the_batched_form(monkeypatch):
    from mixkit.functional.multi import paste_thumbnails

    x, index = torch.rand(4, 3, 16, 16), torch.tensor([1, 0, 3, 2])
    for n in (2, 6):
        boxes = torch.tensor([[0, 0, 8, 8]] * n)
        results = []
        for threshold in (1 << 60, 1):
            monkeypatch.setattr(row_paths, "ROW_LERP_MIN", threshold)
            try:
                results.append(paste_thumbnails(x, index, boxes))
            except (IndexError, RuntimeError) as err:
                results.append(type(err))
        assert all(isinstance(r, type) for r in results) or torch.equal(results[0], results[1]), n


def test_one_box_paste_backward_takes_int32_pairings():
    from mixkit.functional.boxes import paste_boxes

    x = torch.rand(4, 3, 8, 8, requires_grad=True)
    paste_boxes(x, torch.tensor([1, 2, 3, 0], dtype=torch.int32), torch.tensor([[2, 2, 6, 6]])).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # a permutation: every pixel's gradient goes somewhere once
