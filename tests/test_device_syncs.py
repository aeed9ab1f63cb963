"""Params reach the data's device without making the host wait (checked on the CPU: the
device-only branches are the same arithmetic)."""

from __future__ import annotations

import torch

import mixkit
from conftest import gen
from mixkit._device import upload
from mixkit.functional.augment_values import _level_counts


class _Recorded(torch.Tensor):
    """A tensor that records the ``non_blocking`` flag of each ``.to`` call."""

    seen: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to:
            cls.seen.append((kwargs or {}).get("non_blocking"))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_upload_is_asynchronous_from_the_cpu_only():
    t = torch.arange(4)
    assert upload(t, "cpu") is t  # nothing to do: the tensor itself
    assert torch.equal(upload(t, "cpu", torch.float64), t.double()) and upload(t, "cpu", torch.float64).dtype == torch.float64
    _Recorded.seen = []
    upload(torch.zeros(3).as_subclass(_Recorded), "cpu")
    upload(torch.zeros(3, device="meta").as_subclass(_Recorded), "meta")  # a device tensor: a blocking copy
    assert _Recorded.seen == [True, False]


def test_level_counts_by_scatter_equal_bincount():
    flat = torch.randint(0, 700, (5000,), generator=gen(0), dtype=torch.int64).to(torch.int32)
    for bins in (700, 768):
        want = torch.bincount(flat, minlength=bins)
        got = _level_counts(flat, bins, scatter=True)
        assert torch.equal(got, want) and got.dtype == want.dtype
    assert torch.equal(_level_counts(flat, 768), torch.bincount(flat, minlength=768))  # the CPU's default


def test_mixing_draws_move_their_params_without_blocking():
    # Mixup's partner index and the target's weights go through upload (non_blocking from the CPU)
    calls = []

    class Spy(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func is torch.Tensor.to and kwargs and "non_blocking" in kwargs:
                calls.append(kwargs["non_blocking"])
            return super().__torch_function__(func, types, args, kwargs or {})

    x, y = torch.rand(4, 3, 8, 8, generator=gen(1)), torch.arange(4)
    for name in ("mixup", "cutmix"):
        m = mixkit.create(name, num_classes=4)
        p = m.sample(x, y, generator=gen(2))
        params = type(p)(**{**{f: getattr(p, f) for f in p.__dataclass_fields__},
                            "index": p.index.as_subclass(Spy)})
        m.apply(x, params)
        mixkit.MixTarget.pair(y, p.index.as_subclass(Spy), p.lam.as_subclass(Spy))
    assert calls and all(calls)
