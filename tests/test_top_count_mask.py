"""FMix's top-k pixel selection (:func:`mixkit.functional.fourier.top_count_mask`) against a
sort-based reference: exactly ``num`` pixels, the largest, ties at the cut to the earliest."""

from __future__ import annotations

import pytest
import torch

from mixkit.functional.fourier import binarise_mask, top_count_mask


def _reference(flat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(flat.shape, dtype=torch.bool)
    for r in range(flat.shape[0]):
        k = int(num[r])
        if k == 0:
            continue
        thr = torch.sort(flat[r], descending=True).values[k - 1]
        above = flat[r] > thr
        out[r] = above
        out[r, (flat[r] == thr).nonzero().squeeze(1)[: k - int(above.sum())]] = True
    return out


@pytest.mark.parametrize("kind", ["normal", "ties", "constant_row", "tiny_float64", "huge"])
def test_bucketed_selection_equals_the_sorted_one(kind):
    g = torch.Generator().manual_seed(len(kind))
    for _ in range(4):
        n, total = int(torch.randint(4, 9, (1,), generator=g)), int(torch.randint(4200, 9000, (1,), generator=g))
        flat = torch.randn(n, total, generator=g)
        if kind == "ties":
            flat = (flat * 3).round()  # a few dozen distinct values: every cut is a tie
        elif kind == "constant_row":
            flat[0] = 0.5
        elif kind == "tiny_float64":
            flat = flat.double() * 1e-30
        elif kind == "huge":
            flat = flat * 1e30
        num = torch.randint(0, total + 1, (n,), generator=g)
        num[:3] = torch.tensor([0, total, 1])
        before = flat.clone()
        got = top_count_mask(flat, num)
        assert torch.equal(flat, before)  # only read
        assert torch.equal(got.sum(dim=1), num)
        assert torch.equal(got, _reference(flat, num))


def test_binarised_fmix_masks_keep_their_exact_share():
    g = torch.Generator().manual_seed(5)
    noise = torch.rand(6, 96, 96, generator=g)
    lam = torch.rand(6, generator=g, dtype=torch.float64)
    mask = binarise_mask(noise, lam, generator=g)
    kept = mask.flatten(1).sum(dim=1)
    assert bool(((kept - lam * 96 * 96).abs() <= 1).all())
    for r in range(6):  # the kept pixels are the brightest ones
        assert float(noise[r][mask[r] > 0].min()) >= float(noise[r][mask[r] == 0].max())


def test_values_beyond_float32_range_half_inputs_and_a_float64_default():
    g = torch.Generator().manual_seed(6)
    num = torch.tensor([0, 5, 4000, 4100])
    cases = [
        torch.randn(4, 4100, generator=g, dtype=torch.float64) * 1e300,  # spans overflow float32
        (torch.rand(4, 4100, generator=g, dtype=torch.float64) * 2 - 1) * 1.7e308,  # a span beyond float64's range
        torch.rand(4, 4100, generator=g, dtype=torch.float64) * 1e-306,  # (buckets - 1) / span overflows float64
        torch.rand(4, 4100, generator=g, dtype=torch.float64) * 1e-320,  # subnormal float64 values
        (torch.rand(4, 4100, generator=g) * 2 - 1) * 3e38,  # finite, but a float32 span that overflows
        ((torch.rand(4, 4100, generator=g) * 2 - 1) * 6e4).half(),  # finite, a half span beyond 65504
        (torch.randn(4, 4100, generator=g) * 1e3).bfloat16(),  # many ties
    ]
    for flat in cases:
        got = top_count_mask(flat, num)
        assert torch.equal(got.sum(dim=1), num)
        assert torch.equal(got, _reference(flat.double(), num)), flat.dtype
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        flat = torch.randn(4, 4100, generator=g, dtype=torch.float32)
        assert torch.equal(top_count_mask(flat, num), _reference(flat, num))
    finally:
        torch.set_default_dtype(default)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_non_contiguous_rows_of_every_size(dtype):
    g = torch.Generator().manual_seed(3)
    for n, total in ((3, 3000), (2, 100), (1, 20000)):
        flat = torch.randn(total, n, generator=g).to(dtype).t()  # rows with a stride
        num = torch.randint(0, total + 1, (n,), generator=g)
        got = top_count_mask(flat, num)
        assert got.sum(dim=1).tolist() == num.tolist()
        assert torch.equal(got, top_count_mask(flat.contiguous(), num))
