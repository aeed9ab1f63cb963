"""RandomChoice / RandomMix: rates, per-sample composition, targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mixkit
from conftest import gen


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
