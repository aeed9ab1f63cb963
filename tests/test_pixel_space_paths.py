"""The fused pixel-space paths of AugMix and PixMix: normalisation folded into the copies into
and out of the work buffer, the reused chain buffer, and the exp/log multiplicative mixing."""

from __future__ import annotations

import torch

import mixkit
from mixkit.functional import augment_chains
from mixkit.functional import release_scratch
from mixkit.functional.augment_chains import apply_chains, sample_chains
from mixkit.functional.augment_ops import ALL_OPS
from mixkit.methods.pixmix import mixing_coefficients, multiplicative_mix

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _stats(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(MEAN, dtype=dtype).view(1, 3, 1, 1), torch.tensor(STD, dtype=dtype).view(1, 3, 1, 1)


def test_apply_chains_normalisation_is_the_same_as_converting_around_it():
    for dtype, layout in ((torch.float32, torch.channels_last), (torch.float32, torch.contiguous_format),
                          (torch.bfloat16, torch.channels_last), (torch.float64, torch.contiguous_format)):
        work = torch.float32 if dtype == torch.bfloat16 else dtype
        mean, std = _stats(work)
        x = ((torch.rand(9, 3, 12, 12, generator=gen(1)) - 0.45) / 0.25).to(dtype).contiguous(memory_format=layout)
        before = x.clone()
        draws = sample_chains(9, (12, 12), ops=ALL_OPS, severity=10, generator=gen(2))
        got = apply_chains(x, draws, ALL_OPS, normalization=(mean, std))
        pixels = x.to(work) * std + mean  # the old composition: to pixels, chains, back
        want = ((apply_chains(pixels, draws, ALL_OPS) - mean) / std).to(dtype)
        assert torch.equal(got, want), (dtype, layout)
        assert got.dtype == dtype and got.is_contiguous(memory_format=layout)
        assert torch.equal(x, before)


def test_chain_buffer_is_reused_but_never_returned():
    x = torch.rand(6, 3, 10, 10, generator=gen(3))
    draws = sample_chains(6, (10, 10), generator=gen(4))
    first = apply_chains(x, draws)
    kept = first.clone()
    second = apply_chains(torch.rand(6, 3, 10, 10, generator=gen(5)), sample_chains(6, (10, 10), generator=gen(6)))
    assert torch.equal(first, kept)  # the second call wrote into the buffer, not into the first result
    buf = augment_chains._CHAINS.bufs[torch.float32]
    for out in (first, second):
        assert out.untyped_storage().data_ptr() != buf.untyped_storage().data_ptr()
    release_scratch()
    assert not hasattr(augment_chains._CHAINS, "bufs")
    assert torch.equal(apply_chains(x, draws), kept)  # made again when next needed


def test_augmix_and_pixmix_give_the_same_values_in_both_layouts():
    y = torch.arange(8) % 4
    x = (torch.rand(8, 3, 16, 16, generator=gen(7)) - 0.45) / 0.25
    for name in ("augmix", "pixmix"):
        method = mixkit.create(name, mode="elem", p=0.7)
        method.set_input_normalization(MEAN, STD)
        plain = method(x, y, generator=gen(8)).x
        last = method(x.contiguous(memory_format=torch.channels_last), y, generator=gen(8)).x
        assert last.is_contiguous(memory_format=torch.channels_last) and plain.is_contiguous()
        assert torch.equal(plain, last), name


def test_pixmix_keeps_the_samples_it_leaves_alone_exactly():
    y = torch.arange(64) % 4
    x = ((torch.rand(64, 3, 8, 8, generator=gen(9)) - 0.45) / 0.25).to(torch.bfloat16)
    method = mixkit.create("pixmix", mode="elem", p=0.5)
    method.set_input_normalization(MEAN, STD)
    out = method(x, y, generator=gen(10))
    changed = (out.params.ops[:, 0] >= 0) | (out.params.rounds > 0)
    assert 0 < int(changed.sum()) < 64
    assert torch.equal(out.x[~changed], x[~changed]) and out.x.dtype == torch.bfloat16


def test_multiplicative_mix_matches_the_powers_in_float64():
    x1, x2 = torch.rand(64, 3, 8, 8, generator=gen(11)), torch.rand(64, 3, 8, 8, generator=gen(12))
    x1[0, 0, 0, :3] = 0.0
    x2[1, 0, 0, :3] = 0.0  # clipped at 5e-38 before its (possibly negative) power
    ab = mixing_coefficients((64,), 3.0, generator=gen(13)).float()
    a, b = ab[:, 0].view(-1, 1, 1, 1), ab[:, 1].view(-1, 1, 1, 1)
    got = multiplicative_mix(x1, x2, a, b)
    d = lambda t: t.double()  # noqa: E731
    want = d(x1).pow(d(a)) * d(x2).clamp_min(5e-38).pow(d(b)) * torch.exp2(d(a) + d(b) - 1)
    assert torch.isfinite(got).all()
    assert bool((got[0, 0, 0, :3] == 0).all())  # 0 ** a = 0 for a > 0
    rel = (d(got) - want).abs() / want.abs().clamp_min(1e-30)
    assert float(rel.max()) < 2e-5 and float(rel.median()) < 1e-6
    assert float((d(got.clamp(0, 1)) - want.clamp(0, 1)).abs().max()) < 1e-6  # what PixMix keeps


def test_superpixel_lab_powers_match_float64_pow():
    from mixkit.functional.fastmath import power_ as _power
    from mixkit.functional.superpixels import rgb_to_lab

    t = torch.rand(4096, generator=gen(14))
    t[:3] = torch.tensor([0.0, 1.0, 1e-30])
    for e in (2.4, 1.0 / 3.0):
        got = _power(t.clone(), e).double()
        want = t.double().pow(e)
        assert bool((got[:2] == want[:2]).all())  # 0 and 1 exactly
        assert float(((got - want).abs() / want.clamp_min(1e-30)).max()) < 1e-5
    rgb = torch.rand(2, 3, 8, 8, generator=gen(15))
    lab = rgb_to_lab(rgb).double()
    lin = torch.where(rgb.double() <= 0.04045, rgb.double() / 12.92, ((rgb.double() + 0.055) / 1.055) ** 2.4)
    assert float((lab[:, 0] - (116 * _f64_cbrt_y(lin) - 16)).abs().max()) < 1e-3  # L* from float64


def _f64_cbrt_y(lin: torch.Tensor) -> torch.Tensor:
    y = 0.212671 * lin[:, 0] + 0.715160 * lin[:, 1] + 0.072169 * lin[:, 2]
    return torch.where(y <= 0.008856, 7.787 * y + 16.0 / 116.0, y.clamp_min(0) ** (1 / 3))


def test_apply_chains_refuses_an_x_that_requires_grad_and_stays_usable():
    import pytest

    x = torch.rand(4, 3, 8, 8, generator=gen(16))
    draws = sample_chains(4, (8, 8), generator=gen(17))
    want = apply_chains(x, draws)
    with pytest.raises(ValueError, match="x.detach()"):
        apply_chains(x.clone().requires_grad_(), draws)
    assert torch.equal(apply_chains(x, draws), want)  # the thread's buffer is untouched
    with torch.no_grad():
        assert torch.equal(apply_chains(x.clone().requires_grad_(), draws), want)


def test_large_chain_buffers_are_not_kept(monkeypatch):
    monkeypatch.setattr(augment_chains, "_CHAIN_KEEP_BYTES", 1 << 10)
    release_scratch()
    x = torch.rand(4, 3, 8, 8, generator=gen(18))
    draws = sample_chains(4, (8, 8), generator=gen(19))
    out = apply_chains(x, draws)
    assert not hasattr(augment_chains._CHAINS, "bufs")
    monkeypatch.setattr(augment_chains, "_CHAIN_KEEP_BYTES", 64 << 20)
    assert torch.equal(apply_chains(x, draws), out)  # kept or not, the same values


def test_chains_worked_through_in_chunks_give_the_same_values(monkeypatch):
    mean, std = _stats(torch.float32)
    for dtype in (torch.float32, torch.bfloat16):
        x = ((torch.rand(13, 3, 10, 10, generator=gen(22)) - 0.45) / 0.25).to(dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        draws = sample_chains(13, (10, 10), ops=ALL_OPS, severity=10, generator=gen(23))
        whole = apply_chains(x, draws, ALL_OPS, normalization=(mean, std))
        monkeypatch.setattr(augment_chains, "_CHAIN_KEEP_BYTES", 30 * 3 * 10 * 10 * 4)  # 30 images a chunk
        assert len(augment_chains._chunks((1 + (draws.ops >= 0).flatten(1).sum(1)).tolist(), 30)) > 2
        chunked = apply_chains(x, draws, ALL_OPS, normalization=(mean, std))
        monkeypatch.undo()
        assert torch.equal(chunked, whole) and chunked.is_contiguous(memory_format=torch.channels_last)
    assert augment_chains._chunks([3, 4, 2, 5, 1], 6) == [(0, 1), (1, 3), (3, 5)]
    assert augment_chains._chunks([9, 2], 4) == [(0, 1), (1, 2)]  # a sample larger than the room: alone


def test_per_sample_stats_in_chunks_are_sliced_with_their_samples(monkeypatch):
    x = torch.rand(9, 3, 10, 10, generator=gen(40))
    mean = torch.rand(9, 3, 1, 1, generator=gen(41))
    std = torch.rand(9, 3, 1, 1, generator=gen(42)) + 0.2
    draws = sample_chains(9, (10, 10), generator=gen(43))
    whole = apply_chains(x, draws, normalization=(mean, std))
    by_hand = (apply_chains(x * std + mean, draws) - mean) / std
    torch.testing.assert_close(whole, by_hand, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(augment_chains, "_CHAIN_KEEP_BYTES", 12 * 3 * 10 * 10 * 4)  # a few samples a chunk
    assert torch.equal(apply_chains(x, draws, normalization=(mean, std)), whole)
    shared = (mean[:1], std[:1])  # (1, C, 1, 1): the same for every chunk
    monkeypatch.undo()
    want = apply_chains(x, draws, normalization=shared)
    monkeypatch.setattr(augment_chains, "_CHAIN_KEEP_BYTES", 12 * 3 * 10 * 10 * 4)
    assert torch.equal(apply_chains(x, draws, normalization=shared), want)


def test_superpixel_methods_take_an_x_that_requires_grad_under_normalisation():
    y = torch.arange(4) % 2
    for name in ("superpixel_gridmix", "superpixel_gridcut", "superpixel_gridmean"):
        method = mixkit.create(name, n_segments=8)
        method.set_input_normalization(MEAN, STD)
        x = torch.randn(4, 3, 16, 16, generator=gen(20)).requires_grad_()
        out = method(x, y, generator=gen(21))
        out.x.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


def test_multiplicative_mix_with_a_zero_exponent_and_black_pixels():
    x1 = torch.tensor([0.0, 0.25, 1.0, float("nan")]).view(1, 1, 1, 4).repeat(2, 1, 1, 1)
    x2 = torch.full((2, 1, 1, 4), 0.5)
    a = torch.tensor([0.0, 0.5]).view(2, 1, 1, 1)
    b = torch.tensor([0.5, -0.5]).view(2, 1, 1, 1)
    got = multiplicative_mix(x1, x2, a, b)
    d = lambda t: t.double()  # noqa: E731
    want = d(x1).pow(d(a)) * d(x2).pow(d(b)) * torch.exp2(d(a) + d(b) - 1)  # 0 ** 0 = 1
    assert torch.isnan(got[1, 0, 0, 3]) and not torch.isnan(got[0, 0, 0, 3])  # as pow: nan ** 0 = 1
    torch.testing.assert_close(d(got[0]), want[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(d(got[1, ..., :3]), want[1, ..., :3], rtol=1e-5, atol=1e-7)
    assert float(got[0, 0, 0, 0]) > 0 and float(got[1, 0, 0, 0]) == 0.0


def test_chain_names_still_import_from_augment_ops():
    from mixkit.functional import augment_ops

    for name in ("ChainDraws", "sample_chains", "apply_chains", "augment_chains", "release_chain_buffer"):
        assert getattr(augment_ops, name) is getattr(augment_chains, name)
