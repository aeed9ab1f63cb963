"""Params reach the data's device without making the host wait. Without a GPU here, the
``meta`` device stands in for one (made a device that :func:`upload` copies to without
blocking, as it does to CUDA): its tensors have shapes but no data, so a copy of a CPU param
to it takes the same code path as a copy to a GPU."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

import mixkit
from conftest import gen
import mixkit._device
from mixkit._device import upload
from mixkit.functional.augment_values import _level_counts


class _Copies(TorchFunctionMode):
    """Records ``(from, to, non_blocking)`` of every ``Tensor.to`` that changes the device."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, bool]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.Tensor.to and isinstance(out, torch.Tensor) and out.device != args[0].device:
            self.seen.append((args[0].device.type, out.device.type, bool(kwargs.get("non_blocking", False))))
        return out


@pytest.fixture
def meta_as_gpu(monkeypatch):
    monkeypatch.setattr(mixkit._device, "ASYNC_DEVICE_TYPES", frozenset({"cuda", "meta"}))


def test_upload_blocks_unless_to_cuda():
    with _Copies() as copies:
        upload(torch.arange(4), torch.device("meta"))
    assert copies.seen == [("cpu", "meta", False)]  # meta is not CUDA (nor is MPS): a blocking copy


def test_upload_is_asynchronous_from_the_cpu_only(meta_as_gpu):
    t = torch.arange(4)
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert upload(t, cpu) is t  # nothing to do: the tensor itself
    assert upload(t, cpu, torch.float64).dtype == torch.float64 and torch.equal(upload(t, cpu, torch.float64), t.double())
    with _Copies() as copies:
        assert upload(t, meta).device == meta and upload(t, meta, torch.float32).dtype == torch.float32
    assert copies.seen == [("cpu", "meta", True)] * 2


def test_level_counts_by_scatter_equal_bincount():
    flat = torch.randint(0, 700, (5000,), generator=gen(0), dtype=torch.int64).to(torch.int32)
    for bins in (700, 768):
        want = torch.bincount(flat, minlength=bins)
        got = _level_counts(flat, bins, scatter=True)
        assert torch.equal(got, want) and got.dtype == want.dtype
    assert torch.equal(_level_counts(flat, 768), torch.bincount(flat, minlength=768))  # the CPU's default


def _input_space_methods() -> list[tuple[str, str]]:
    out = []
    for name in mixkit.list_methods():
        info = mixkit.method_info(name)
        if info.family != "label" and "model" not in info.needs:
            out += [(name, mode) for mode in (("batch", "elem") if "mode" in info.defaults else ("batch",))]
    return out


@pytest.mark.parametrize("name, mode", _input_space_methods())
def test_mixing_moves_its_cpu_params_without_blocking(name, mode, meta_as_gpu):
    x, y = torch.rand(8, 3, 16, 16, generator=gen(1)), torch.arange(8)
    options = {"mode": mode} if "mode" in mixkit.method_info(name).defaults else {}
    m = mixkit.create(name, num_classes=8, **options)
    params = m.sample(x, y, generator=gen(2))
    on_device, labels = x.to("meta"), y.to("meta")
    with _Copies() as copies:
        out = m.apply(on_device, params)
        target = m.target(labels, params)  # RecursiveMix's compaction runs on the host: no read-back
    assert out.device.type == "meta" and out.shape == x.shape
    assert target.weight.device.type == "meta" and target.index.device.type == "meta"
    assert all(c[:2] == ("cpu", "meta") and c[2] for c in copies.seen), copies.seen


def test_recursive_target_with_a_history_reads_nothing_back(meta_as_gpu):
    from mixkit.functional.recursive import extend_target
    from mixkit.types import MixTarget

    y = torch.arange(8, device="meta")
    # a history as RecursiveMix keeps it: labels on the data's device, index and weight on the host
    history = MixTarget(torch.arange(8, device="meta"), torch.tensor([[0, 3]] * 8), torch.tensor([[0.5, 0.5]] * 8))
    with _Copies() as copies:
        t = extend_target(y, torch.full((8,), 0.75, dtype=torch.float64), history, 8)
    assert t.index.device.type == "meta" and t.weight.device.type == "meta" and t.labels.device.type == "meta"
    assert t.index.shape == (8, 3) and t.labels.shape == (10,)  # y's 8 rows, then history rows 0 and 3
    assert all(c[:2] == ("cpu", "meta") and c[2] for c in copies.seen), copies.seen


def test_recursivemix_keeps_its_history_bookkeeping_on_the_host():
    m = mixkit.create("recursivemix", num_classes=10)
    x, y = torch.rand(8, 3, 16, 16, generator=gen(3)), torch.arange(8)
    first = m(x, y, generator=gen(4))
    second = m(x, y, generator=gen(5))
    history = m.state_dict()
    assert history["index"].device.type == "cpu" and torch.equal(history["index"], second.target.index)
    assert torch.equal(history["weight"], second.target.weight) and first.target.index.shape[1] < history["index"].shape[1]
