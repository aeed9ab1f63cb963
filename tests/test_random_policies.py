"""RandomChoice / RandomMix: rates, per-sample composition, targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mixkit
from conftest import gen
from mixkit.methods.random_policies import ChoiceParams


def test_methods_drawn_at_the_given_rates():
    rc = mixkit.RandomChoice(["mixup", "cutmix", "fmix"], p=[0.2, 0.5, 0.1], mode="elem")
    x, y = torch.zeros(20000, 1, 2, 2), torch.zeros(20000, dtype=torch.long)
    choice = rc.sample(x, y, generator=gen(0)).choice
    rates = torch.bincount(choice, minlength=4).double() / 20000
    torch.testing.assert_close(rates, torch.tensor([0.2, 0.5, 0.1, 0.2], dtype=torch.float64), atol=0.012, rtol=0)
    one = mixkit.RandomChoice(["mixup", "cutmix"], p=0.5, mode="elem").sample(x, y, generator=gen(1)).choice
    assert abs(float((one == 2).double().mean()) - 0.5) < 0.015  # a single p: mix half of the samples


def test_batch_mode_draws_one_method_per_call():
    rc = mixkit.RandomChoice(["mixup", "cutmix"], mode="batch")
    g = gen(2)
    seen = set()
    for _ in range(40):
        c = rc.sample(torch.zeros(6, 1, 4, 4), torch.zeros(6, dtype=torch.long), generator=g).choice
        assert c.unique().numel() == 1
        seen.add(int(c[0]))
    assert seen == {0, 1}


def test_elem_rows_equal_the_chosen_methods_output():
    x, y = torch.rand(8, 3, 8, 8, generator=gen(0)), torch.arange(8) % 4
    rc = mixkit.RandomChoice(["mixup", "cutmix"], p=[0.4, 0.4], mode="elem", num_classes=4)
    out = rc(x, y, generator=gen(3))
    p = out.params
    for k, method in enumerate(rc._methods):
        if p.inner[k] is None:
            continue
        rows = p.choice == k
        torch.testing.assert_close(out.x[rows], method.apply(x, p.inner[k])[rows])
        torch.testing.assert_close(out.target.soft()[rows], method.target(y, p.inner[k]).soft()[rows])
    unmixed = p.choice == 2
    torch.testing.assert_close(out.x[unmixed], x[unmixed])
    torch.testing.assert_close(out.target.soft()[unmixed], F.one_hot(y[unmixed], 4).float())


def test_errors():
    with pytest.raises(mixkit.HyperParameterError, match="summing"):
        mixkit.RandomChoice(["mixup", "cutmix"], p=[0.8, 0.8])
    with pytest.raises(mixkit.HyperParameterError, match="input-space"):
        mixkit.RandomChoice(["mixup", "manifold_mixup"])
    with pytest.raises(mixkit.UnknownMethodError):
        mixkit.RandomChoice(["mixupp"])


def test_randommix_defaults_follow_the_paper():
    rm = mixkit.create("randommix")
    assert rm.methods == ("mixup", "cutmix", "resizemix", "fmix") and rm.p is None
    assert [m.name for m in rm._methods] == ["mixup", "cutmix", "resizemix", "fmix"]


def _rows_of_whole_batch_applies(rc, x, params):
    """The reference: each method run on the whole batch, each row taken from its method."""
    ref = x.clone()
    for k, (method, inner) in enumerate(zip(rc._methods, params.inner)):
        if inner is not None:
            rows = params.choice == k
            ref[rows] = method.apply(x, inner)[rows]
    return ref


@pytest.mark.parametrize("methods, p", [
    (("mixup", "cutmix", "resizemix", "fmix"), None),
    (("cutmix", "fmix", "hmix"), [0.3, 0.3, 0.3]),
    (("smoothmix", "gmix", "gridmix", "mixup"), 0.8),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_elem_mixes_only_the_drawn_rows_as_the_whole_batch_would(methods, p, dtype):
    x = torch.randn(33, 3, 12, 10, generator=gen(0)).to(dtype).contiguous(memory_format=torch.channels_last)
    rc = mixkit.RandomChoice(list(methods), p=p, mode="elem", num_classes=4)
    for seed in range(3):
        out = rc(x, torch.arange(33) % 4, generator=gen(seed))
        assert torch.equal(out.x, _rows_of_whole_batch_applies(rc, x, out.params))
        assert out.x.stride() == x.stride() and out.x.dtype == dtype


def test_one_row_without_a_partner_keeps_its_own_box():
    # a sub-batch of one row would make its box look shared (ResizeMix resizes a shared box
    # with interpolate, per-row boxes with grid_sample): the mix pads it to two rows
    x = torch.rand(4, 3, 16, 16, generator=gen(1))
    rc = mixkit.RandomChoice(["resizemix", "cutmix"], mode="elem")
    resize = rc._methods[0].sample(x, generator=gen(2))
    resize = type(resize)(index=torch.tensor([0, 2, 3, 1]), lam=resize.lam, boxes=resize.boxes)
    cut = rc._methods[1].sample(x, generator=gen(3))
    choice = torch.tensor([0, 1, 1, 1])
    params = ChoiceParams(index=resize.index, lam=resize.lam, choice=choice, inner=(resize, cut))
    assert torch.equal(rc.apply(x, params), _rows_of_whole_batch_applies(rc, x, params))


class _BatchMeanMixUp(mixkit.MixUp):
    """A Mixup whose rows depend on the whole batch: must not be run on a sub-batch."""

    def _mix(self, x, params):
        return super()._mix(x, params) + x.mean()


@pytest.mark.parametrize("other", ["mosaic", "ricap", _BatchMeanMixUp()])
def test_other_methods_run_on_the_whole_batch(other):
    x = torch.rand(9, 3, 16, 16, generator=gen(4))
    rc = mixkit.RandomChoice(["cutmix", other], p=[0.4, 0.4], mode="elem", num_classes=3)
    for seed in range(3):
        out = rc(x, torch.arange(9) % 3, generator=gen(seed))
        assert torch.equal(out.x, _rows_of_whole_batch_applies(rc, x, out.params))


def test_gradient_flows_and_matches_the_values_without_grad():
    x = torch.rand(6, 2, 5, 5, dtype=torch.float64, generator=gen(5))
    rc = mixkit.RandomChoice(["mixup", "cutmix", "resizemix", "fmix"], p=0.9, mode="elem")
    params = rc.sample(x, generator=gen(6))
    assert torch.equal(rc.apply(x.requires_grad_(), params).detach(), rc.apply(x.detach(), params))
    assert torch.autograd.gradcheck(lambda t: rc.apply(t, params), (x,))


def test_a_choice_with_an_augmentation_chain_is_not_differentiable():
    assert mixkit.RandomChoice(["mixup", "cutmix"]).differentiable
    rc = mixkit.RandomChoice(["mixup", "augmix"], mode="elem")
    assert not rc.differentiable
    with pytest.raises(ValueError, match="not differentiable in x"):
        rc(torch.rand(4, 3, 8, 8, requires_grad=True), torch.arange(4))


@pytest.mark.parametrize("max_soft", [0.0, 0.1])
def test_fmix_sample_rows_draws_noise_for_those_rows_only(monkeypatch, max_soft):
    import mixkit.methods.cutting as cutting

    drawn = []
    noise = cutting.fourier_noise
    monkeypatch.setattr(cutting, "fourier_noise", lambda n, *a, **k: drawn.append(n) or noise(n, *a, **k))
    fmix = mixkit.FMix(mode="elem", max_soft=max_soft)
    x, y = torch.rand(10, 3, 16, 16, generator=gen(0)), torch.arange(10)
    rows = torch.tensor([True, False, False, True, True, False, True, False, False, False])
    p = fmix._sample_rows(x, y, rows, generator=gen(1))
    assert drawn == [4]
    kept = p.mask.double().flatten(1).mean(1)
    torch.testing.assert_close(kept[rows], p.lam[rows], atol=1e-12, rtol=0)  # the label is the mask's share
    assert bool((p.lam[rows] < 1).all()) and bool((p.index[rows] != torch.arange(10)[rows]).any())
    assert bool(p.mask[~rows].all()) and bool((p.lam[~rows] == 1).all())  # the others: unmixed, paired with themselves
    assert torch.equal(p.index[~rows], torch.arange(10)[~rows])
    assert torch.equal(fmix.apply(x, p)[~rows], x[~rows])
    # every row wanted: sample() itself, the same draws
    whole, same = fmix._sample_rows(x, y, torch.ones(10, dtype=torch.bool), generator=gen(1)), fmix.sample(x, y, generator=gen(1))
    assert torch.equal(whole.mask, same.mask) and torch.equal(whole.lam, same.lam)
    none = fmix._sample_rows(x, y, torch.zeros(10, dtype=torch.bool), generator=gen(1))
    assert torch.equal(fmix.apply(x, none), x) and bool((none.lam == 1).all()) and none.mask.dtype == p.mask.dtype


def test_randommix_elem_draws_fmix_noise_for_its_rows_only(monkeypatch):
    import mixkit.methods.cutting as cutting

    drawn = []
    noise = cutting.fourier_noise
    monkeypatch.setattr(cutting, "fourier_noise", lambda n, *a, **k: drawn.append(n) or noise(n, *a, **k))
    rm = mixkit.create("randommix", mode="elem", num_classes=4)
    x, y = torch.rand(40, 3, 16, 16, generator=gen(0)), torch.arange(40) % 4
    out = rm(x, y, generator=gen(2))
    k = rm.methods.index("fmix")
    rows = out.params.choice == k
    assert drawn == [int(rows.sum())] and 0 < drawn[0] < 40
    fmix_params = out.params.inner[k]
    torch.testing.assert_close(out.x[rows], rm._methods[k].apply(x, fmix_params)[rows])
    torch.testing.assert_close(out.target.lam[rows], fmix_params.mask[rows].double().flatten(1).mean(1).float(),
                               atol=1e-6, rtol=0)


def test_a_subclass_overriding_sample_is_sampled_through_it_in_a_choice():
    from dataclasses import replace

    class NoMixFMix(mixkit.FMix):
        def sample(self, x, y=None, *, generator=None):
            p = super().sample(x, y, generator=generator)
            return replace(p, mask=torch.ones_like(p.mask), lam=torch.ones_like(p.lam), index=torch.arange(x.shape[0]))

    rc = mixkit.RandomChoice([NoMixFMix(mode="elem"), "mixup"], mode="elem")
    x, y = torch.rand(8, 3, 16, 16, generator=gen(0)), torch.arange(8)
    out = rc(x, y, generator=gen(0))
    rows = out.params.choice == 0
    assert 0 < int(rows.sum()) < 8
    assert bool((out.params.lam[rows] == 1).all()) and torch.equal(out.x[rows], x[rows])
