"""mixkit.functional.layout: copies between memory layouts (copy_into, in_format, match_format)."""

from __future__ import annotations

import pytest
import torch

from mixkit.functional.layout import copy_into, in_format, match_format

CL = torch.channels_last


def _special(dtype: torch.dtype, shape: tuple[int, ...] = (4, 3, 5, 6)) -> torch.Tensor:
    """Random values with NaN (two payloads), +-inf and a signed zero among them."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    flat = x.view(-1)
    flat[:5] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0], dtype=dtype)
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    if dtype in (torch.float32, torch.float64):  # a NaN with another payload
        payload = flat[5:6].view(bits)
        payload.copy_(torch.tensor([0x7FC00001 if bits == torch.int32 else 0x7FF8000000000001], dtype=bits))
    return x


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype.itemsize == 2:
        return torch.equal(a.contiguous().view(torch.int16), b.contiguous().view(torch.int16))
    bits = torch.int32 if a.dtype.itemsize == 4 else torch.int64
    return torch.equal(a.contiguous().view(bits), b.contiguous().view(bits))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("direction", ["to_cl", "to_contiguous"])
def test_copy_into_moves_every_bit_between_layouts(dtype: torch.dtype, direction: str) -> None:
    x = _special(dtype)
    src, fmt = (x, CL) if direction == "to_cl" else (x.contiguous(memory_format=CL), torch.contiguous_format)
    dst = torch.full_like(src, 7.0, memory_format=fmt)
    out = copy_into(dst, src)
    assert out is dst
    assert dst.is_contiguous(memory_format=fmt)
    assert _same_bits(dst, src)  # NaN payloads and -0.0 kept, as copy_ keeps them
    ref = torch.empty_like(src, memory_format=fmt).copy_(src)
    assert _same_bits(dst, ref)


def test_copy_into_strided_and_fallbacks() -> None:
    x = torch.randn(6, 3, 8, 8)
    # an arbitrary strided source (a slice of a channels_last tensor)
    src = x.contiguous(memory_format=CL)[:, :, 1:7, ::2]
    dst = torch.empty(src.shape)
    assert torch.equal(copy_into(dst, src), src)
    # a dtype change: copy_'s conversion
    half = torch.empty(x.shape, dtype=torch.bfloat16, memory_format=CL)
    assert torch.equal(copy_into(half, x), x.to(torch.bfloat16))
    # broadcasting, as copy_ does
    row = torch.randn(1, 3, 8, 8)
    wide = torch.empty(6, 3, 8, 8, memory_format=CL)
    assert torch.equal(copy_into(wide, row), row.expand(6, -1, -1, -1))
    # autograd: copy_ (the gradient flows)
    leaf = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = copy_into(torch.empty(2, 3, 4, 4, memory_format=CL), leaf)
    out.sum().backward()
    assert torch.equal(leaf.grad, torch.ones_like(leaf))
    # the source is never written
    before = x.clone()
    copy_into(torch.empty_like(x, memory_format=CL), x)
    assert torch.equal(x, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_in_format_and_match_format(dtype: torch.dtype) -> None:
    x = _special(dtype)
    cl = in_format(x, CL)
    assert cl.is_contiguous(memory_format=CL) and not cl.is_contiguous()
    assert _same_bits(cl, x)
    assert in_format(cl, CL) is cl  # already there: no copy
    back = in_format(cl, torch.contiguous_format)
    assert back.is_contiguous() and _same_bits(back, x)
    like = torch.empty(1, 3, 2, 2, memory_format=CL)
    m = match_format(x, like)
    assert m.is_contiguous(memory_format=CL) and _same_bits(m, x)
    assert match_format(x, torch.empty(1, 3, 2, 2)) is x
    # a tensor that needs grad keeps its graph
    leaf = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = in_format(leaf * 2, CL)
    assert out.requires_grad and out.is_contiguous(memory_format=CL)
    out.sum().backward()
    assert torch.equal(leaf.grad, torch.full_like(leaf, 2.0))


@pytest.mark.parametrize("channels", [1, 3, 4, 6])
@pytest.mark.parametrize("partner_kind", ["full", "colour"])
def test_select_by_mask_channels_last_matches_where(channels: int, partner_kind: str) -> None:
    """The per-channel lerp path (channels_last, <= 4 channels) and the expanded-mask path
    (more channels) both give torch.where's values, in x's memory format."""
    from mixkit.functional.blend import mask_blend, select_by_mask

    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, channels, 6, 7, generator=g).contiguous(memory_format=CL)
    partner = (torch.randn(5, channels, 6, 7, generator=g) if partner_kind == "full"
               else torch.randn(1, channels, 1, 1, generator=g))
    mask = torch.rand(5, 1, 6, 7, generator=g) > 0.4
    before = x.clone(), partner.clone()
    out = select_by_mask(x, partner, mask)
    assert torch.equal(out, torch.where(mask, x, partner))
    assert out.is_contiguous(memory_format=CL) or channels == 1
    assert torch.equal(x, before[0]) and torch.equal(partner, before[1])  # inputs untouched
    # mask_blend writes into its gathered partners (into=True): the same values
    index = torch.tensor([4, 0, 1, 2, 3])
    assert torch.equal(mask_blend(x, index, mask), torch.where(mask, x, x[index]))
    # with autograd the gradient splits as the mask does
    leaf = x.detach().clone().requires_grad_()
    select_by_mask(leaf, partner, mask).sum().backward()
    assert torch.equal(leaf.grad, mask.expand_as(leaf).to(leaf.dtype))


@pytest.mark.parametrize("src_dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
def test_affine_into_matches_the_broadcast(src_dtype: torch.dtype, fmt: torch.memory_format) -> None:
    from mixkit.functional.layout import affine_into

    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 5, 6, generator=g).to(src_dtype).contiguous(memory_format=fmt)
    work = torch.float64 if src_dtype == torch.float64 else torch.float32
    scale = torch.tensor([0.25, 0.5, 2.0], dtype=work).view(1, 3, 1, 1)
    shift = torch.tensor([0.1, -0.3, 0.7], dtype=work).view(1, 3, 1, 1)
    before = x.clone()
    dst = torch.empty(x.shape, dtype=work)
    out = affine_into(dst, x, scale, shift)
    assert out is dst and dst.is_contiguous()
    assert torch.equal(dst, x.to(work) * scale + shift)  # the same two roundings
    assert torch.equal(x, before)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int64, torch.bool])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
@pytest.mark.parametrize("partner_kind", ["full", "colour"])
def test_select_by_mask_integers_match_where(dtype: torch.dtype, fmt: torch.memory_format, partner_kind: str) -> None:
    """Integer inputs take bit operations (partner ^ ((x ^ partner) & keep)): torch.where's values."""
    from mixkit.functional.blend import mask_blend, select_by_mask

    g = torch.Generator().manual_seed(3)
    low, high = (0, 2) if dtype == torch.bool else ((0, 256) if dtype == torch.uint8 else (-3000, 3000))
    x = torch.randint(low, high, (5, 3, 6, 7), generator=g).to(dtype).contiguous(memory_format=fmt)
    shape = (5, 3, 6, 7) if partner_kind == "full" else (1, 3, 1, 1)
    partner = torch.randint(low, high, shape, generator=g).to(dtype)
    mask = torch.rand(5, 1, 6, 7, generator=g) > 0.4
    before = x.clone(), partner.clone()
    out = select_by_mask(x, partner, mask)
    assert out.dtype == dtype and torch.equal(out, torch.where(mask, x, partner))
    assert torch.equal(x, before[0]) and torch.equal(partner, before[1])
    index = torch.tensor([4, 0, 1, 2, 3])
    assert torch.equal(mask_blend(x, index, mask), torch.where(mask, x, x[index]))
