"""Large fresh outputs on huge pages (mixkit.functional.alloc): same values and strides as
torch's own allocation, a block of its own, and a switch to turn it off."""

from __future__ import annotations

import mmap

import pytest
import torch

import mixkit
from mixkit.functional import alloc

needs_thp = pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="no MADV_HUGEPAGE on this system")


@pytest.fixture
def tiny_threshold(monkeypatch):
    """Every CPU block counts as large, so small tensors take the huge-page path."""
    monkeypatch.setattr(alloc, "HUGE_PAGE_MIN_BYTES", 0)
    monkeypatch.setitem(alloc._STATE, "enabled", hasattr(mmap, "MADV_HUGEPAGE"))


def _is_mapped(t: torch.Tensor) -> bool:
    """A storage made by torch.frombuffer cannot grow: torch's own allocations can."""
    try:
        t.untyped_storage().resize_(t.untyped_storage().nbytes() + 8)
    except RuntimeError:
        return True
    return False


@needs_thp
def test_fresh_is_a_block_of_its_own_above_the_threshold(tiny_threshold):
    t = alloc.fresh((4, 3, 5, 5), torch.float32)
    assert t.shape == (4, 3, 5, 5) and t.is_contiguous() and t.dtype == torch.float32 and _is_mapped(t)
    t.fill_(2.0)
    assert float(t.sum()) == 2.0 * t.numel()
    bf = alloc.fresh((7,), torch.bfloat16)
    assert bf.dtype == torch.bfloat16 and _is_mapped(bf)


def test_small_blocks_and_the_switch_use_torch_empty(monkeypatch):
    assert not _is_mapped(alloc.fresh((4, 3, 8, 8), torch.float32))  # 3 KB: below 32 MiB
    monkeypatch.setattr(alloc, "HUGE_PAGE_MIN_BYTES", 0)
    alloc.set_huge_pages(False)
    try:
        assert not alloc.huge_pages_enabled() and not _is_mapped(alloc.fresh((4, 3, 8, 8), torch.float32))
    finally:
        alloc.set_huge_pages(True)
    assert alloc.huge_pages_enabled() == hasattr(mmap, "MADV_HUGEPAGE")


@needs_thp
def test_fresh_like_and_fresh_copy_keep_layout_and_values(tiny_threshold):
    x = torch.rand(4, 3, 6, 5).contiguous(memory_format=torch.channels_last)
    like = alloc.fresh_like(x)
    assert like.stride() == x.stride() and _is_mapped(like)
    copy = alloc.fresh_copy(x)
    assert torch.equal(copy, x) and copy.stride() == x.stride() and copy.data_ptr() != x.data_ptr()
    odd = torch.rand(4, 6, 5).transpose(1, 2)  # neither contiguous nor channels_last: a plain clone
    assert torch.equal(alloc.fresh_copy(odd), odd) and not _is_mapped(alloc.fresh_copy(odd))
    leaf = torch.rand(4, 3, 6, 5, requires_grad=True)  # autograd must see the copy: a clone
    assert alloc.fresh_copy(leaf).grad_fn is not None


@needs_thp
@pytest.mark.parametrize("name", ["mixup", "cutmix", "fmix", "resizemix", "mosaic", "ricap", "cut_thumbnail"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("p", [1.0, 0.5])
def test_methods_give_the_same_output_with_huge_pages(name, mode, dtype, channels_last, p, monkeypatch):
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.arange(6)

    def run():
        return mixkit.create(name, mode=mode, p=p)(x, y, generator=torch.Generator().manual_seed(1)).x

    plain = run()
    monkeypatch.setattr(alloc, "HUGE_PAGE_MIN_BYTES", 0)
    mapped = run()
    assert torch.equal(mapped, plain) and mapped.stride() == plain.stride()
    if name in ("mixup", "cutmix") and dtype == torch.float32 and p == 1.0:  # outputs from the new allocation
        assert _is_mapped(mapped)


@needs_thp
@pytest.mark.parametrize("name", ["mixup", "cutmix"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients_are_the_same_with_huge_pages(name, mode, channels_last, monkeypatch):
    x0 = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    weights = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))

    def grads():
        found = []
        for upstream in ("sum", "weighted"):  # an expanded (stride 0) and a dense incoming gradient
            x = x0.clone().requires_grad_()
            out = mixkit.create(name, mode=mode)(x, torch.arange(6), generator=torch.Generator().manual_seed(1)).x
            (out.sum() if upstream == "sum" else (out * weights).sum()).backward()
            found.append(x.grad)
        return found

    plain = grads()
    monkeypatch.setattr(alloc, "HUGE_PAGE_MIN_BYTES", 0)
    for a, b in zip(grads(), plain, strict=True):
        assert torch.equal(a, b) and a.stride() == b.stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_interpolate_batch_is_f_interpolate(dtype):
    """The chunked channels_last path (batches of 2**21 elements or more) gives F.interpolate's values."""
    import torch.nn.functional as F

    from mixkit.functional.resize import interpolate_batch

    x = torch.rand(29, 3, 160, 160, generator=torch.Generator().manual_seed(0), dtype=dtype)  # 2.2 M elements
    for size in ((80, 80), (37, 121), (159, 3), (1, 1)):
        expected = F.interpolate(x, size=list(size), mode="bilinear", align_corners=False)
        got = interpolate_batch(x, size, "bilinear")
        assert torch.equal(got, expected) and got.stride() == expected.stride()
    leaf = x[:2].clone().requires_grad_()  # autograd: F.interpolate itself
    assert interpolate_batch(leaf, (5, 5), "bilinear").grad_fn is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_interpolate_batch_under_autograd_gives_f_interpolates_values_and_gradients(dtype):
    import torch.nn.functional as F

    from mixkit.functional.resize import interpolate_batch

    x0 = torch.rand(29, 3, 160, 160, generator=torch.Generator().manual_seed(0)).to(dtype)  # 2.2 M elements
    upstream = torch.rand(29, 3, 37, 121, generator=torch.Generator().manual_seed(1))
    results = []
    for resize in (lambda z: F.interpolate(z.float(), size=[37, 121], mode="bilinear", align_corners=False),
                   lambda z: interpolate_batch(z, (37, 121), "bilinear", dtype=torch.float32)):
        x = x0.clone().requires_grad_()
        out = resize(x)
        out.backward(upstream)
        results.append((out.detach(), out.stride(), x.grad))
    (a, sa, ga), (b, sb, gb) = results
    assert torch.equal(a, b) and sa == sb and torch.equal(ga, gb) and ga.stride() == gb.stride()


@pytest.fixture
def empty_pool():
    alloc.release_blocks()
    yield
    alloc.release_blocks()


@needs_thp
def test_a_freed_block_is_kept_and_reused_once_its_last_view_is_gone(tiny_threshold, empty_pool):
    t = alloc.fresh((64, 1024), torch.float32)  # 256 KB: a 2 MiB block
    ptr, view = t.data_ptr(), t[3:]
    t.fill_(7.0)
    del t
    assert alloc.pooled_bytes() == 0  # a view still holds the block
    del view
    assert alloc.pooled_bytes() == 2 << 20
    x = torch.rand(64, 1024)
    again = alloc.fresh_copy(x)  # the kept block, old values overwritten
    assert again.data_ptr() == ptr and torch.equal(again, x) and alloc.pooled_bytes() == 0


@needs_thp
def test_a_loop_that_keeps_its_last_output_maps_two_blocks(tiny_threshold, empty_pool):
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8)
    mixup = mixkit.MixUp()
    before = alloc._POOL_STATE["mapped"]
    out = None
    for step in range(6):
        out = mixup(x, y, generator=torch.Generator().manual_seed(step)).x  # the previous output lives until here
    assert alloc._POOL_STATE["mapped"] - before == 2
    assert _is_mapped(out)


@needs_thp
def test_pool_limit_and_release(tiny_threshold, empty_pool):
    alloc.set_pool_limit(0)
    try:
        t = alloc.fresh((16,), torch.float32)
        del t
        assert alloc.pooled_bytes() == 0  # nothing kept
        alloc.set_pool_limit(4 << 20)
        blocks = [alloc.fresh((16,), torch.float32) for _ in range(3)]
        del blocks
        assert alloc.pooled_bytes() == 4 << 20  # POOL_PER_SIZE (2) blocks of 2 MiB
        alloc.set_pool_limit(2 << 20)  # below what is kept: all unmapped
        assert alloc.pooled_bytes() == 0
        t = alloc.fresh((16,), torch.float32)
        del t
        mixkit.functional.release_scratch()
        assert alloc.pooled_bytes() == 0
    finally:
        alloc.set_pool_limit(1 << 30)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="nbytes"):
            alloc.set_pool_limit(bad)


@needs_thp
def test_pooled_blocks_across_threads_never_share_memory(tiny_threshold, empty_pool):
    import threading

    failures = []

    def work(seed):
        x = torch.rand(64, 1024, generator=torch.Generator().manual_seed(seed))
        kept = []
        for _ in range(30):
            copy = alloc.fresh_copy(x)
            kept.append(copy)
            if len(kept) > 2:
                kept.pop(0)  # freed: its block goes back to the pool, maybe to another thread
            if not all(torch.equal(k, x) for k in kept):
                failures.append(seed)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


@needs_thp
def test_a_slightly_smaller_request_reuses_a_kept_block(tiny_threshold, empty_pool):
    mib = 1 << 18  # float32 elements per MiB
    mapped = alloc._POOL_STATE["mapped"]
    big = alloc.fresh((9 * mib,), torch.float32)  # 9 MiB: a 10 MiB block
    del big
    assert alloc.pooled_bytes() == 10 << 20
    small = alloc.fresh((3 * mib,), torch.float32)  # a 4 MiB class: 10 MiB is too big for it
    assert alloc._POOL_STATE["mapped"] == mapped + 2 and alloc.pooled_bytes() == 10 << 20
    fits = alloc.fresh((7 * mib,), torch.float32)  # an 8 MiB class: the kept 10 MiB block (<= 1.25x)
    assert alloc._POOL_STATE["mapped"] == mapped + 2 and alloc.pooled_bytes() == 0
    assert fits.numel() == 7 * mib and _is_mapped(fits)
    small.fill_(1.0)
    fits.fill_(2.0)
    assert bool((small == 1.0).all()) and bool((fits == 2.0).all())
    del fits
    assert alloc.pooled_bytes() == 10 << 20  # the block goes back under its own size


def test_keep_freed_memory_stops_page_faults_of_repeated_large_tensors():
    """In a process of its own (it changes the allocator for the whole process)."""
    import subprocess
    import sys

    code = (
        "import resource, torch\n"
        "from mixkit.functional import alloc\n"
        "def faults():\n"
        "    t = torch.empty(40 << 20, dtype=torch.uint8).fill_(1)\n"  # 40 MiB: mapped afresh by default
        "    del t\n"
        "    f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    t = torch.empty(40 << 20, dtype=torch.uint8).fill_(1)\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f\n"
        "before = faults()\n"
        "applied = alloc.keep_freed_memory()\n"
        "faults()\n"
        "print(before, applied, faults())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    before, applied, after = out.stdout.split()
    if applied != "True":
        pytest.skip("not glibc: nothing to tune")
    assert int(before) > 5000 and int(after) < 500, out.stdout
    with pytest.raises(ValueError, match="top_pad_mb"):
        alloc.keep_freed_memory(-1)
