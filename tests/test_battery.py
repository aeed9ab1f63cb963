"""The shared battery: every registered method, the moment it is registered."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

import mixkit
from conftest import gen, make, mixes, needs_model, run_method

METHODS = mixkit.list_methods()
K = 5


def batch(b: int = 6, dtype=torch.float32, seed: int = 0, size: int = 8):
    g = gen(seed)
    x = torch.rand(b, 3, size, size, generator=g).to(dtype)
    y = torch.randint(0, K, (b,), generator=g)
    return x, y


def test_registry_lists_the_first_six():
    assert set(METHODS) >= {"mixup", "between_class", "cutmix", "resizemix", "fmix", "manifold_mixup"}


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_shape_dtype_device_kept(name, dtype, mode):
    x, y = batch(dtype=dtype)
    out, target, params = run_method(make(name, num_classes=K, mode=mode), x, y, generator=gen(1))
    expected = (x.shape[0], K) if needs_model(name) else x.shape
    assert out.shape == expected and out.dtype == dtype and out.device == x.device
    assert target.index.shape == target.weight.shape and target.index.shape[0] == x.shape[0]
    assert params.lam.shape == (x.shape[0],)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_channels_last_kept(name, mode):
    if needs_model(name):
        pytest.skip("the output is the model's logits")
    x, y = batch()
    x = x.contiguous(memory_format=torch.channels_last)
    out, _, _ = run_method(make(name, mode=mode), x, y, generator=gen(2))
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_inputs_not_mutated(name, mode):
    x, y = batch()
    x0, y0 = x.clone(), y.clone()
    out, target, _ = run_method(make(name, mode=mode, num_classes=K), x, y, generator=gen(3))
    target.soft()
    assert torch.equal(x, x0) and torch.equal(y, y0)
    if not needs_model(name):
        assert out.data_ptr() != x.data_ptr()  # mixed: a new tensor


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_determinism(name, mode):
    if not mixes(name):
        pytest.skip("nothing random to determine")
    x, y = batch(b=8, size=16)
    # a fresh method per run: stateful methods (RecursiveMix's history) depend on past calls too
    a, ta, _ = run_method(mixkit.create(name, mode=mode), x, y, generator=gen(7))
    b, tb, _ = run_method(mixkit.create(name, mode=mode), x, y, generator=gen(7))
    c, tc, _ = run_method(mixkit.create(name, mode=mode), x, y, generator=gen(8))
    assert torch.equal(a, b) and torch.equal(ta.weight, tb.weight) and torch.equal(ta.index, tb.index)
    assert not (torch.equal(a, c) and torch.equal(ta.weight, tc.weight))


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("b", [1, 2, 3, 5])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_batch_sizes_and_label_mass(name, b, mode):
    x, y = batch(b=b)
    _, target, params = run_method(make(name, mode=mode, num_classes=K), x, y, generator=gen(b))
    soft = target.soft()
    assert soft.shape == (b, K)
    torch.testing.assert_close(target.weight.sum(dim=1), torch.ones(b))
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(b))
    # right mass on the right classes, built independently with one_hot
    torch.testing.assert_close(soft, expected_soft(F.one_hot(y, K).float(), target, params, name))
    assert ((params.lam >= 0) & (params.lam <= 1)).all()
    assert ((target.index >= 0) & (target.index < b)).all()


def expected_soft(dense, target, params, name):
    """Dense labels of the mix: from the params for two-source methods, else from the
    target's own (index, weight), whose weights must then be consistent with params.lam."""
    if mixkit.method_info(name).sources == 2:
        lam = params.lam.to(torch.float32).unsqueeze(1)
        return lam * dense + (1 - lam) * dense[params.index]
    w = target.weight.to(torch.float32)
    own = (w * (target.index == torch.arange(target.index.shape[0]).unsqueeze(1))).sum(dim=1)
    # lam is the own sample's weight (more when a partner happens to be the sample itself)
    assert (own >= params.lam.to(torch.float32) - 1e-5).all()
    return (w.unsqueeze(-1) * dense[target.index]).sum(dim=1)


@pytest.mark.parametrize("name", METHODS)
def test_soft_label_input(name):
    x, y = batch()
    y_soft = torch.softmax(torch.randn(y.shape[0], K, generator=gen(4)), dim=1)
    _, target, params = run_method(mixkit.create(name), x, y_soft, generator=gen(5))
    torch.testing.assert_close(target.soft(), expected_soft(y_soft, target, params, name))


@pytest.mark.parametrize("name", METHODS)
def test_pickle_round_trip(name):
    m = make(name, p=0.9, num_classes=K)
    m2 = pickle.loads(pickle.dumps(m))
    assert type(m2) is type(m) and m2.hparams == m.hparams and repr(m2) == repr(m)
    x, y = batch()
    a, _, _ = run_method(m, x, y, generator=gen(9))
    b, _, _ = run_method(m2, x, y, generator=gen(9))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", METHODS)
def test_probability_zero_mixes_nothing(name):
    if not mixes(name):
        pytest.skip("no probability to set")
    x, y = batch()
    out, target, params = run_method(mixkit.create(name, p=0.0), x, y, generator=gen(6))
    assert (params.lam == 1).all() and (target.lam == 1).all()
    if not needs_model(name):
        assert torch.equal(out, x)


@pytest.mark.parametrize("name", METHODS)
def test_elem_mode_gives_each_sample_its_lambda(name):
    if not mixes(name) or mixkit.method_info(name).sources == 1:
        pytest.skip("no lambda: the label keeps one source")
    if mixkit.method_info(name).cls.fixed_lambda:
        pytest.skip("the paper fixes lambda")
    x, y = batch(b=16, size=16)
    _, _, params = run_method(mixkit.create(name, mode="elem"), x, y, generator=gen(10))
    assert params.lam.unique().numel() > 4
    _, _, params = run_method(mixkit.create(name, mode="batch"), x, y, generator=gen(10))
    assert params.lam.unique().numel() == 1


@pytest.mark.parametrize("name", [n for n in METHODS if not needs_model(n)])
@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("p", [1.0, 0.5, 0.0])
def test_apply_replays_params(name, mode, p):
    x, y = batch()
    m = make(name, mode=mode, p=p)
    for seed in range(3):
        out = m(x, y, generator=gen(11 + seed))
        assert torch.equal(m.apply(x, out.params), out.x)


@pytest.mark.parametrize("name", [n for n in METHODS if not needs_model(n)])
def test_collate_fn(name):
    data = [(torch.rand(3, 8, 8), i % K) for i in range(10)]
    loader = torch.utils.data.DataLoader(data, batch_size=4, collate_fn=mixkit.MixCollate(mixkit.create(name)))
    seen = 0
    for x, target in loader:
        assert x.shape[1:] == (3, 8, 8)
        torch.testing.assert_close(target.soft(K).sum(dim=1), torch.ones(x.shape[0]))
        seen += x.shape[0]
    assert seen == 10


@pytest.mark.parametrize("name", [n for n in METHODS if not mixkit.method_info(n).cls.needs_float])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_cutting_methods_work_on_uint8(name, mode):
    if not mixes(name):
        pytest.skip("nothing is cut")
    x, y = batch()
    xu = (x * 255).to(torch.uint8)
    m = mixkit.create(name, mode=mode)
    out = m(xu, y, generator=gen(12))
    assert out.x.dtype == torch.uint8 and out.x.shape == xu.shape
    assert not torch.equal(out.x, xu)
    # the same params on the float image give the same result, up to rounding to uint8
    ref = m.apply(xu.float(), out.params)
    assert float((out.x.float() - ref).abs().max()) <= 0.5 + 1e-4


@pytest.mark.parametrize("name", [n for n in METHODS if mixkit.method_info(n).cls.needs_float])
def test_blending_methods_refuse_integer_input(name):
    if needs_model(name):
        pytest.skip("checked in test_methods for the model-aware method")
    x, y = batch()
    with pytest.raises(mixkit.DTypeError, match="floating point"):
        mixkit.create(name)((x * 255).to(torch.uint8), y)


@pytest.mark.parametrize("name", METHODS)
def test_metadata_complete(name):
    info = mixkit.method_info(name)
    assert info.family in mixkit.FAMILIES and info.paper and info.year >= 1990 and info.code.startswith("http")
    assert info.sources == "k" or (isinstance(info.sources, int) and info.sources >= 1)
    assert ("p" in info.defaults) == mixes(name) and mixkit.create(name).hparams == info.defaults
    assert info.cls.__doc__ and "Example" in info.cls.__doc__


@pytest.mark.parametrize("name", [n for n in METHODS if not needs_model(n)])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_gradient_reaches_the_input(name, mode):
    """With params fixed, every mix but the augmentation chains is linear in ``x``, so the
    gradient autograd returns is the mix's adjoint: ``<mix(x), v> == <x, grad>``. The chains
    refuse an ``x`` that requires grad with a clear error."""
    x, y = batch(dtype=torch.float64)
    m = make(name, mode=mode, num_classes=K)
    params = m.sample(x, y, generator=gen(13))
    xg = x.clone().requires_grad_()
    if not m.differentiable:
        with pytest.raises(ValueError, match="not differentiable in x.*detach"):
            m.apply(xg, params)
        with pytest.raises(ValueError, match="not differentiable in x"):
            m(xg, y)
        return
    out = m.apply(xg, params)
    v = torch.randn(out.shape, generator=gen(14), dtype=out.dtype)
    (grad,) = torch.autograd.grad((out * v).sum(), xg)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close((x * grad).sum(), (out.detach() * v).sum(), rtol=1e-10, atol=1e-10)
