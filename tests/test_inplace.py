"""The ``inplace=True`` option of Mixup and CutMix: the same values as out of place, written
into the caller's tensor, with the partners gathered into a reused buffer."""

from __future__ import annotations

import pickle

import pytest
import torch

import mixkit
from mixkit.errors import HyperParameterError
from mixkit.functional import blend, blend_, gather_rows_scratch, paste_boxes, paste_boxes_, release_scratch


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("p", [1.0, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_inplace_call_equals_out_of_place(name, mode, p, dtype, channels_last):
    x = torch.rand(16, 3, 9, 11, generator=gen(1)).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.arange(16) % 5
    ref = mixkit.create(name, mode=mode, p=p, num_classes=5)(x, y, generator=gen(2))
    method = mixkit.create(name, mode=mode, p=p, num_classes=5, inplace=True)
    mine = x.clone()
    out = method(mine, y, generator=gen(2))
    assert out.x is mine
    assert torch.equal(mine, ref.x) and mine.stride() == ref.x.stride()
    assert torch.equal(out.target.soft(), ref.target.soft())
    assert pickle.loads(pickle.dumps(method)).inplace


def test_inplace_cutmix_on_integer_images():
    x = torch.randint(0, 256, (12, 3, 10, 10), generator=gen(3), dtype=torch.uint8)
    for mode in ("batch", "elem"):
        ref = mixkit.CutMix(mode=mode)(x, torch.arange(12), generator=gen(4)).x
        mine = x.clone()
        mixkit.CutMix(mode=mode, inplace=True)(mine, torch.arange(12), generator=gen(4))
        assert torch.equal(mine, ref)


def test_functional_inplace_forms_reuse_their_buffer_across_sizes():
    """A small batch after a large one reuses (a prefix of) the buffer; results stay exact."""
    release_scratch()
    for b, size in ((32, 12), (5, 7), (40, 12)):
        x = torch.rand(b, 3, size, size, generator=gen(b))
        index, lam = torch.randperm(b, generator=gen(b + 1)), torch.rand(b, generator=gen(b + 2), dtype=torch.float64)
        mine = x.clone()
        assert blend_(mine, index, lam) is mine and torch.equal(mine, blend(x, index, lam))
        boxes = torch.tensor([[1, 2, 5, 6]] * b)
        mine = x.clone()
        assert torch.equal(paste_boxes_(mine, index, boxes), paste_boxes(x, index, boxes))
        assert torch.equal(gather_rows_scratch(x, index), x[index])
    release_scratch()


def test_inplace_refuses_what_autograd_needs():
    x = torch.rand(4, 3, 5, 5, requires_grad=True)
    with pytest.raises(ValueError, match="inplace=True.*requires grad"):
        mixkit.MixUp(inplace=True)(x, torch.arange(4))
    with pytest.raises(ValueError, match="may not require grad"):
        blend_(x, torch.tensor([1, 0, 3, 2]), 0.3)
    with torch.no_grad():  # fine without autograd
        mixkit.CutMix(inplace=True)(x, torch.arange(4))
    with pytest.raises(HyperParameterError, match="inplace must be True or False"):
        mixkit.CutMix(inplace=1)


def test_release_scratch_frees_every_kept_buffer():
    from mixkit.functional import _slic

    scratch_mod = __import__("importlib").import_module("mixkit.functional.scratch")
    x = torch.rand(4, 3, 16, 16, generator=gen(5))
    from mixkit.functional import augment_chains

    mixkit.create("superpixel_gridmix")(x, torch.arange(4), generator=gen(6))
    mixkit.create("augmix")(x, torch.arange(4), generator=gen(7))
    blend_(x.clone(), torch.tensor([1, 0, 3, 2]), 0.4)
    kept = (_slic._local, "workspaces"), (scratch_mod._SCRATCH, "rows"), (augment_chains._CHAINS, "bufs")
    assert all(hasattr(holder, name) for holder, name in kept)
    release_scratch()
    assert not any(hasattr(holder, name) for holder, name in kept)


def test_apply_stays_out_of_place_for_a_tensor_that_requires_grad():
    # apply never writes into x, so an inplace=True method still mixes features under grad
    m = mixkit.MixUp(inplace=True)
    x = torch.rand(4, 3, 8, 8)
    params = m.sample(x, torch.arange(4), generator=torch.Generator().manual_seed(0))
    feats = x.clone().requires_grad_()
    out = m.apply(feats, params)
    out.sum().backward()
    assert out is not feats and feats.grad is not None


@pytest.mark.parametrize("name, mode", [("mixup", "elem"), ("cutmix", "elem"), ("mixup", "batch")])
def test_a_scratch_result_passed_back_in_is_gathered_elsewhere(name, mode):
    # gather_rows_scratch's result (valid until its next call) given back to it, or to an
    # in-place method that gathers into the same buffer: the source is left alone, no aliasing error
    x = torch.rand(8, 3, 5, 5, generator=gen(7))
    first, second = torch.randperm(8, generator=gen(8)), torch.randperm(8, generator=gen(9))
    held = gather_rows_scratch(x, first)
    again = gather_rows_scratch(held, second)
    assert torch.equal(again, x[first][second]) and torch.equal(held, x[first])
    mine = gather_rows_scratch(x, first)
    ref = mixkit.create(name, mode=mode, num_classes=4)(x[first], torch.arange(8) % 4, generator=gen(3))
    out = mixkit.create(name, mode=mode, num_classes=4, inplace=True)(mine, torch.arange(8) % 4, generator=gen(3))
    assert out.x is mine and torch.equal(mine, ref.x)
    release_scratch()
