"""mixkit.functional.fastmath.log2_: torch's log2 values (within 2 ulp), in place, any layout."""

import math
import warnings

import pytest
import torch

from mixkit.functional.fastmath import SMALLEST, log2_, many_zeros, numpy_path, power_, raise_zeros_


def _ulps(got, ref64):
    spacing = (torch.nextafter(got, torch.full_like(got, math.inf)) - got).double()
    return ((got.double() - ref64).abs() / spacing).max().item()


def test_values_within_two_ulp_of_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(100_000, generator=g) * 4, torch.rand(1000, generator=g) * 1e-30,
                   torch.rand(1000, generator=g) * 1e30, torch.tensor([1.0, 2.0, 0.5, 1e-45])])
    got = log2_(x.clone())
    assert got.dtype == torch.float32
    assert _ulps(got, torch.log2(x.double())) <= 2.5
    torch.testing.assert_close(got, torch.log2(x), rtol=5e-7, atol=5e-7)
    assert got[-4:].tolist() == [0.0, 1.0, -1.0, -149.0]


def test_special_values_as_torch_without_warnings():
    x = torch.tensor([0.0, -0.0, -1.0, math.inf, -math.inf, math.nan])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = log2_(x.clone())
    ref = torch.log2(x)
    assert torch.equal(got.isnan(), ref.isnan())
    assert got[~ref.isnan()].tolist() == ref[~ref.isnan()].tolist() == [-math.inf, -math.inf, math.inf]


def test_in_place_on_views_leaves_the_rest_alone():
    g = torch.Generator().manual_seed(1)
    base = torch.rand(4, 3, 9, 10, generator=g) + 0.5
    for make in (lambda t: t, lambda t: t.contiguous(memory_format=torch.channels_last),
                 lambda t: t[:, 1], lambda t: t[:, :, 2:7, ::3], lambda t: t.transpose(2, 3)):
        view = make(base.clone())
        before = view.clone()
        out = log2_(view)
        assert out is view
        torch.testing.assert_close(view, torch.log2(before), rtol=5e-7, atol=5e-7)
    whole = base.clone()
    log2_(whole[:, :, 2:7, ::3])
    untouched = torch.ones_like(whole, dtype=torch.bool)
    untouched[:, :, 2:7, ::3] = False
    assert torch.equal(whole[untouched], base[untouched])
    assert not torch.equal(whole[~untouched], base[~untouched])


def test_same_values_in_every_layout_and_size():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(16, 3, 11, 13, generator=g) * 3
    ref = log2_(x.clone())
    assert torch.equal(log2_(x.contiguous(memory_format=torch.channels_last)), ref)
    assert torch.equal(torch.stack([log2_(x[i].clone()) for i in range(16)]), ref)
    flat = x.flatten()
    for n in (1, 7, 15, 16, 17, 33, 100):
        assert torch.equal(log2_(flat[:n].clone()), ref.flatten()[:n])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_take_torch(dtype):
    x = (torch.rand(1000, generator=torch.Generator().manual_seed(3)) + 0.1).to(dtype)
    assert torch.equal(log2_(x.clone()), torch.log2(x))


def test_tensor_needing_a_gradient_takes_torch_and_differentiates():
    x = (torch.rand(50, generator=torch.Generator().manual_seed(4)) + 0.5).requires_grad_()
    y = log2_(x.clone())
    assert torch.equal(y.detach(), torch.log2(x.detach()))
    y.sum().backward()
    torch.testing.assert_close(x.grad, 1 / (x.detach() * math.log(2)))


def test_power_matches_pow_and_keeps_zeros_exact():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 3, 16, 16, generator=g)
    x[torch.rand(x.shape, generator=g) < 0.5] = 0.0  # half zeros: the detour around log2's slow path
    x[0, 0, 0, :4] = torch.tensor([1e-45, 1e-40, 1.2e-38, 1.0])
    for e in (2.4, 1.0 / 3.0, 0.5):
        got = power_(x.clone(), e)
        assert bool((got[x == 0] == 0).all())  # 0 stays 0
        if e < 1:
            assert bool((got[x > 0] > 0).all())  # tiny positives (denormals too) stay positive
        torch.testing.assert_close(got.double(), x.double() ** e, rtol=5e-6, atol=1e-37)  # (a denormal base: 2.8e-6)
        assert torch.equal(power_(x.contiguous(memory_format=torch.channels_last), e), got)


def test_power_other_dtypes_and_gradients_take_torch():
    x = torch.rand(100, generator=torch.Generator().manual_seed(6)).double()
    assert torch.equal(power_(x.clone(), 2.4), x.log2().mul(2.4).exp2())
    leaf = (x.float() + 0.5).requires_grad_()
    power_(leaf.clone(), 0.5).sum().backward()
    torch.testing.assert_close(leaf.grad, 0.5 / leaf.detach().sqrt())


def test_many_zeros_estimate_and_both_paths_give_the_same_values():
    g = torch.Generator().manual_seed(7)
    x = torch.rand(64, 3, 32, 32, generator=g) + 0.01
    assert not many_zeros(x)
    heavy = x.clone()
    heavy[torch.rand(x.shape, generator=g) < 0.3] = 0.0
    assert many_zeros(heavy)
    assert many_zeros(heavy.transpose(2, 3))  # not contiguous: the detour, always right
    light = x.clone()
    light[torch.rand(x.shape, generator=g) < 0.005] = 0.0  # half a percent
    assert not many_zeros(light)
    for e in (2.4, 1.0 / 3.0):
        detour = power_(heavy.clone(), e)  # zeros raised, then masked
        direct = power_(x.clone(), e)  # no zeros: log2 straight
        nonzero = heavy != 0
        assert torch.equal(detour[nonzero], direct[nonzero])
        assert bool((detour[~nonzero] == 0).all())


def test_raise_zeros_only_where_it_pays():
    g = torch.Generator().manual_seed(8)
    x = torch.rand(8, 3, 16, 16, generator=g) + 0.01
    assert raise_zeros_(x) is None  # no zeros: untouched
    heavy = x.clone()
    heavy[:, :, :8] = 0.0
    work = heavy.clone()
    keep = raise_zeros_(work)
    assert torch.equal(keep, (heavy > 0).float())
    assert torch.equal(work, heavy.clamp_min(SMALLEST)) and math.log2(SMALLEST) == -149
    for t in (heavy.double(), heavy.clone().requires_grad_()):
        assert not numpy_path(t) and raise_zeros_(t) is None
    assert numpy_path(heavy) and not numpy_path(heavy.to_sparse())


def test_expanded_tensor_raises_as_torch_does():
    base = torch.rand(1, 4) + 1.0
    with pytest.raises(RuntimeError, match="more than one element"):
        log2_(base.expand(3, 4))
    assert not numpy_path(base.expand(3, 4)) and numpy_path(base.expand(1, 4))
