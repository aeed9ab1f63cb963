"""PixMix and its procedural fractal pictures: properties with hand-built params and a tiny
independent re-implementation of the reference's ``pixmix_utils.add`` / ``multiply``."""

from __future__ import annotations

import math
import pickle
import sys
import time

import numpy as np
import pytest
import torch

import mixkit
from mixkit.functional.fractals import fractal_images
from mixkit.methods.pixmix import (
    PixMix,
    PixMixParams,
    _load_images,
    additive_mix,
    mixing_coefficients,
    multiplicative_mix,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_close(got: torch.Tensor, want: torch.Tensor, atol: float) -> None:
    """Elementwise |got - want| <= atol (torch.testing's first call imports for seconds)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    err = float((got.double() - want.double()).abs().max())
    assert err <= atol, f"max abs difference {err} > {atol}"


# ------------------------------------------------------------------------------ fractals
def _lit(pics: torch.Tensor) -> torch.Tensor:
    """Share of each picture's pixels that differ from its background (its commonest colour)."""
    flat = pics.flatten(2)  # (n, C, HW)
    bg = flat.mode(dim=2).values.unsqueeze(2)
    return ((flat - bg).abs().amax(dim=1) > 1e-3).float().mean(dim=1)


def test_fractals_are_deterministic_per_seed_and_differ_between_seeds():
    a = fractal_images(6, 24, generator=gen(0))
    b = fractal_images(6, 24, generator=gen(0))
    c = fractal_images(6, 24, generator=gen(1))
    assert torch.equal(a, b)
    assert (a - c).abs().flatten(1).amax(1).min() > 0.1  # every picture changes
    assert a.shape == (6, 3, 24, 24) and a.dtype == torch.float32


def test_fractals_any_size_and_channels_in_unit_range():
    for size, channels in (((20, 36), 1), (7, 4), ((130, 110), 3)):
        pics = fractal_images(3, size, channels=channels, generator=gen(2))
        hw = size if isinstance(size, tuple) else (size, size)
        assert pics.shape == (3, channels, *hw)
        assert pics.min() >= 0 and pics.max() <= 1 and torch.isfinite(pics).all()
    assert fractal_images(0, 8).shape == (0, 3, 8, 8)
    with pytest.raises(mixkit.HyperParameterError, match="size"):
        fractal_images(2, (8, 0))


def test_fractals_are_not_trivial():
    pics = fractal_images(200, 32, generator=gen(3))
    lit = _lit(pics)
    assert (lit > 0.01).all() and (lit < 0.95).all()  # neither empty nor a filled blob
    assert 0.08 < float(lit.median()) < 0.6
    assert float(lit.std()) > 0.04  # varied across the set
    assert (pics.flatten(1).std(dim=1) > 0.02).all()  # no constant picture
    # the set is varied: no two pictures alike
    dist = torch.cdist(pics.flatten(1), pics.flatten(1)) + torch.eye(200) * 1e9
    assert dist.min() > 1.0
    # a fractal is not a blob: its lit pixels are spread over many rows and columns
    rows = ((pics - pics.flatten(2).mode(2).values[..., None, None]).abs().amax(1) > 1e-3).any(2).float().sum(1)
    assert float(rows.median()) >= 12


def test_fractal_generation_is_fast():
    start = time.process_time()
    fractal_images(1000, 32, generator=gen(4))
    assert time.process_time() - start < 8.0  # about 0.5 s on one core


# ------------------------------------------------------------------- reference mixings
def ref_add(img1, img2, a, b):  # pixmix_utils.add with get_ab's (a, b) given
    img1, img2 = img1 * 2 - 1, img2 * 2 - 1
    return (a * img1 + b * img2 + 1) / 2


def ref_multiply(img1, img2, a, b):  # pixmix_utils.multiply
    img1, img2 = img1 * 2, img2 * 2
    return (img1**a) * (np.clip(img2, 1e-37, None) ** b) / 2


@pytest.mark.parametrize("a,b", [(0.7, 0.2), (1.3, -0.4), (0.05, 0.9), (1.9, -0.01)])
def test_mixings_match_the_reference_formulas(a, b):
    g = gen(5)
    x1, x2 = torch.rand(2, 3, 5, 5, generator=g), torch.rand(2, 3, 5, 5, generator=g)
    x2[0, 0, 0, 0] = 0.0  # the clip of the multiplicative mixing's base
    x1[1, 1, 1, 1] = 0.0
    ta, tb = torch.tensor(a), torch.tensor(b)
    for ours, ref in ((additive_mix, ref_add), (multiplicative_mix, ref_multiply)):
        got = ours(x1, x2, ta, tb)
        want = ref(x1.numpy().astype(np.float32), x2.numpy().astype(np.float32), np.float32(a), np.float32(b))
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_multiplicative_mixing_with_many_zeros_and_zero_weights():
    """Zeros take a detour around log2's slow path: 0^a stays 0, rows with a = 0 give
    img1^0 = 1 even at 0, and the in-place form gives the same values bit for bit."""
    from mixkit.functional.pixmix_mixing import _multiplicative_mix_

    g = gen(8)
    x1, x2 = torch.rand(4, 3, 6, 7, generator=g), torch.rand(4, 3, 6, 7, generator=g)
    x1[torch.rand(x1.shape, generator=g) < 0.5] = 0.0
    a = torch.tensor([0.7, 1.3, 0.0, 1.9]).view(4, 1, 1, 1)
    b = torch.tensor([0.2, -0.4, 0.9, -0.01]).view(4, 1, 1, 1)
    got = multiplicative_mix(x1, x2, a, b)
    want = ref_multiply(x1.numpy(), x2.numpy(), a.numpy(), b.numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(got[[0, 1, 3]] == 0, x1[[0, 1, 3]] == 0)
    assert bool((got[2] > 0).all())
    assert torch.equal(_multiplicative_mix_(x1.clone(), x2.clone(), a, b), got)


def test_multiplicative_mixing_within_6e7_of_float64_powers():
    """The README's bound: after PixMix's clip to [0, 1], the exp2-of-log2s form stays within
    6e-7 of the float64 powers (the largest error seen: 4.6e-7; elementwise pow: 1.2e-7)."""
    g = gen(9)
    for _ in range(4):
        x1, x2 = torch.rand(2, 64, 3, 16, 16, generator=g)
        x1[torch.rand(x1.shape, generator=g) < 0.05] = 0.0
        coef = mixing_coefficients((64,), 3.0, generator=g).view(64, 1, 1, 1, 2)
        a, b = coef[..., 0].float(), coef[..., 1].float()
        got = multiplicative_mix(x1, x2, a, b).clamp(0, 1).double()
        want = torch.from_numpy(ref_multiply(x1.double().numpy(), x2.double().numpy(), a.double().numpy(),
                                             b.double().numpy())).clamp(0, 1)
        assert float((got - want).abs().max()) < 6e-7


def test_mixings_do_not_depend_on_the_layouts():
    """channels_last images mixed with contiguous partners (as PixMix does), per-row weights."""
    g = gen(7)
    x1, x2 = torch.rand(4, 3, 6, 7, generator=g), torch.rand(4, 3, 6, 7, generator=g)
    x2[0, :, 0] = 0.0
    a = torch.tensor([0.7, 1.3, 0.05, 1.9]).view(4, 1, 1, 1)
    b = torch.tensor([0.2, -0.4, 0.9, -0.01]).view(4, 1, 1, 1)
    for mix in (additive_mix, multiplicative_mix):
        got = mix(x1.contiguous(memory_format=torch.channels_last), x2, a, b)
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert_close(got, mix(x1, x2, a, b), atol=1e-6)


def test_mixing_coefficients_follow_get_ab():
    coef = mixing_coefficients((40000,), 3.0, generator=gen(6))
    a, b = coef[:, 0], coef[:, 1]
    first = (a < 1) & (b > 0)
    second = (a > 1) & (b < 0)
    assert bool((first | second).all())  # a in (0, 1), b in (0, 1) or a in (1, 2), b in (-1, 0)
    assert abs(float(first.double().mean()) - 0.5) < 0.015
    # Beta(3, 1) mean 3/4, Beta(1, 3) mean 1/4; the two Beta(1, 3) of the second branch are independent
    assert abs(float(a[first].mean()) - 0.75) < 0.01 and abs(float(b[first].mean()) - 0.25) < 0.01
    assert abs(float(a[second].mean()) - 1.25) < 0.01 and abs(float(b[second].mean()) + 0.25) < 0.01
    assert abs(float(torch.corrcoef(torch.stack([a[second], b[second]]))[0, 1])) < 0.03


# ------------------------------------------------------------------ hand-built params
H = W = 8
FIT = math.ceil(H * 9 / 8)  # the fitted picture side: no resize for a set of this size


def hand_params(b, k, *, rounds, use_picture, multiply, coef, picture=None, ops=None):
    return PixMixParams(
        index=torch.arange(b), lam=torch.ones(b, dtype=torch.float64), rounds=torch.tensor(rounds),
        use_picture=torch.tensor(use_picture), multiply=torch.tensor(multiply),
        coef=torch.tensor(coef, dtype=torch.float64), picture=torch.tensor(picture or [0] * b),
        crop=torch.zeros(b, 2, dtype=torch.float64),
        ops=torch.full((b, k + 1), -1) if ops is None else torch.tensor(ops),
        magnitude=torch.zeros(b, k + 1, dtype=torch.float64),
    )


def reference_rounds(x, pic, steps):
    """The reference loop for one sample: each (mixing, a, b), then clip."""
    mixed = x
    for mult, a, b in steps:
        mixed = (ref_multiply if mult else ref_add)(mixed, pic, np.float32(a), np.float32(b))
        mixed = np.clip(mixed, 0, 1)
    return mixed


def test_rounds_with_pictures_match_the_reference_loop():
    g = gen(7)
    pictures = (torch.rand(3, 3, FIT, FIT, generator=g) * 255).round().to(torch.uint8)
    m = PixMix(mixing_set=pictures, k=3)
    x = torch.rand(3, 3, H, W, generator=g)
    coef = [[[0.6, 0.3], [1.4, -0.2], [0.9, 0.1]], [[1.2, -0.5], [0.3, 0.8], [0.5, 0.5]],
            [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]]
    mult = [[True, False, True], [False, True, True], [True, True, True]]
    params = hand_params(3, 3, rounds=[3, 2, 0], use_picture=[[True] * 3] * 3, multiply=mult, coef=coef,
                         picture=[2, 0, 1])
    out = m.apply(x, params)
    for s, n in enumerate([3, 2, 0]):
        pic = pictures[params.picture[s], :, :H, :W].float().numpy() / 255  # crop offset 0
        steps = [(mult[s][i], *coef[s][i]) for i in range(n)]
        want = reference_rounds(x[s].numpy(), pic, steps)
        np.testing.assert_allclose(out[s].numpy(), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(out[2], x[2])  # no round, no augmentation: unchanged


def test_rounds_with_augmented_copies_use_the_original():
    """A round without the picture mixes in an augmented copy of the ORIGINAL image."""
    from mixkit.functional.augment_ops import AUGMIX_OPS, apply_ops

    g = gen(8)
    x = torch.rand(1, 3, H, W, generator=g)
    m = PixMix(mixing_set=torch.rand(2, 3, FIT, FIT, generator=g), k=2)
    eq, post = AUGMIX_OPS.index("equalize"), AUGMIX_OPS.index("posterize")
    params = hand_params(1, 2, rounds=[2], use_picture=[[False, False]], multiply=[[False, True]],
                         coef=[[[0.7, 0.3], [1.1, -0.3]]], ops=[[eq, post, eq]])
    params.magnitude[0, 1] = 2.0  # posterize to 2 bits
    first = apply_ops(x, torch.tensor([eq]), torch.zeros(1))
    copy1 = apply_ops(x, torch.tensor([post]), torch.tensor([2.0]))
    want = reference_rounds(first[0].numpy(), copy1[0].numpy(), [(False, 0.7, 0.3)])
    want = reference_rounds(want, first[0].numpy(), [(True, 1.1, -0.3)])
    np.testing.assert_allclose(m.apply(x, params)[0].numpy(), want, rtol=1e-5, atol=1e-6)


def test_sampled_draws_follow_the_reference_rates():
    k, b = 4, 6000
    m = PixMix(num_pictures=5, k=k, mode="elem")
    p = m.sample(torch.rand(b, 1, 4, 4), generator=gen(9))
    counts = torch.bincount(p.rounds, minlength=k + 1).double() / b
    assert p.rounds.min() == 0 and p.rounds.max() == k  # np.random.randint(k + 1): 0..k rounds
    assert (counts - 1 / (k + 1)).abs().max() < 0.02
    for rate in (p.use_picture.double().mean(), p.multiply.double().mean(), (p.ops[:, 0] >= 0).double().mean()):
        assert abs(float(rate) - 0.5) < 0.02
    live = torch.arange(k) < p.rounds.unsqueeze(1)
    assert torch.equal(p.ops[:, 1:] >= 0, live & ~p.use_picture)  # ops drawn only where used
    assert p.picture.min() >= 0 and p.picture.max() < 5 and (p.lam == 1).all()
    assert torch.equal(p.index, torch.arange(b))


# ----------------------------------------------------------------------- picture sets
def _write_folder(root, colours):
    from PIL import Image

    for i, colour in enumerate(colours):
        folder = root / ("class_a" if i % 2 else "class_b")
        folder.mkdir(exist_ok=True)
        Image.new("RGB", (10 + 3 * i, 12), colour).save(folder / f"pic{i}.png")
    (root / "notes.txt").write_text("not an image")


def test_folder_of_images_is_loaded(tmp_path):
    pytest.importorskip("PIL")
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 100, 50)]
    _write_folder(tmp_path, colours)
    m = PixMix(mixing_set=tmp_path, p=1.0)
    x = torch.rand(8, 3, H, W, generator=gen(10))
    params = m.sample(x, generator=gen(10))
    assert m._count() == 4
    colour_of = [colours[int(path.stem[3:])] for path in m._paths]  # the set's (sorted) order
    pics = m._pictures(x, params, torch.arange(8)).float() / 255
    for s in range(8):  # each sample's picture is its (constant) image, resized and cropped
        want = torch.tensor(colour_of[params.picture[s]], dtype=torch.float32).view(3, 1, 1) / 255
        assert_close(pics[s], want.expand(3, H, W), atol=1 / 255)
    grey = m._pictures(x[:, :1], params, torch.arange(8)).float() / 255  # grey batches take the luma
    luma = torch.tensor([0.299, 0.587, 0.114])
    want = torch.stack([torch.tensor(colour_of[i], dtype=torch.float32) @ luma / 255 for i in params.picture])
    assert_close(grey.flatten(1).mean(1), want, atol=1 / 255)
    assert m(x, torch.arange(8), generator=gen(11)).x.shape == x.shape


def test_missing_or_empty_folder_errors_name_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="mixing_set"):
        PixMix(mixing_set=tmp_path / "nowhere")
    m = PixMix(mixing_set=tmp_path)
    with pytest.raises(FileNotFoundError, match="mixing_set.*no images"):
        m(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="mixing_set"):
        PixMix(mixing_set=3)


def test_missing_pillow_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"pip install mixkit\[data\]"):
        _load_images([tmp_path / "a.png"])


def test_fractal_set_adapts_to_grey_scale_and_size():
    m = PixMix(num_pictures=6, seed=3)
    for shape in ((2, 1, 28, 28), (3, 3, 12, 20)):
        x = torch.rand(*shape, generator=gen(12))
        out = m(x, torch.zeros(shape[0], dtype=torch.long), generator=gen(12))
        assert out.x.shape == shape and torch.isfinite(out.x).all()
    assert len(m._cache) == 2
    pics = m._cache[(1, 32, 32, "cpu")]
    assert torch.equal(pics, (fractal_images(6, 32, channels=1, generator=gen(3)) * 255).round().to(torch.uint8))


# ------------------------------------------------------------------------- the method
def test_normalised_input_matches_the_pixel_path():
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    x = torch.rand(6, 3, 16, 16, generator=gen(13))
    m = PixMix(num_pictures=10, mode="elem")
    pixel = m(x, torch.zeros(6, dtype=torch.long), generator=gen(14)).x
    m.set_input_normalization(mean, std)
    mu, sd = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    normed = m((x - mu) / sd, torch.zeros(6, dtype=torch.long), generator=gen(14)).x
    assert_close(normed * sd + mu, pixel, atol=1e-5)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_probability_zero_is_the_identity_and_inactive_samples_are_copied(mode):
    x = torch.rand(8, 3, 8, 8, generator=gen(15))
    out = PixMix(num_pictures=4, p=0.0, mode=mode)(x, torch.zeros(8, dtype=torch.long), generator=gen(15))
    assert torch.equal(out.x, x) and out.x.data_ptr() != x.data_ptr()
    assert (out.params.rounds == 0).all() and (out.params.ops == -1).all()
    out = PixMix(num_pictures=4, p=0.5, mode="elem")(x, torch.zeros(8, dtype=torch.long), generator=gen(16))
    same = (out.params.rounds == 0) & (out.params.ops[:, 0] < 0)
    assert 0 < int(same.sum()) < 8
    assert torch.equal(out.x[same], x[same]) and not torch.equal(out.x[~same], x[~same])


def test_outputs_stay_finite_pixels_in_every_dtype():
    """Multiplicative rounds raise pixels to powers: no NaN (negative bases) nor inf (1e-37 in half)."""
    x = torch.rand(256, 3, 8, 8, generator=gen(17))
    m = PixMix(num_pictures=4, mode="elem")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        out = m(x.to(dtype), torch.zeros(256, dtype=torch.long), generator=gen(17)).x
        assert out.dtype == dtype and torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_pickle_keeps_the_picture_set_out():
    m = PixMix(num_pictures=300, seed=5, beta=4.0, severity=1)
    x = torch.rand(4, 3, 32, 32, generator=gen(18))
    a = m(x, torch.zeros(4, dtype=torch.long), generator=gen(19)).x  # builds the set
    blob = pickle.dumps(m)
    assert len(blob) < 4000  # constructor arguments only, not 300 pictures
    m2 = pickle.loads(blob)
    assert m2._cache == {} and m2.hparams == m.hparams
    assert torch.equal(m2(x, torch.zeros(4, dtype=torch.long), generator=gen(19)).x, a)


def test_hyper_parameters_are_checked():
    for bad in ({"k": 0}, {"beta": 0.0}, {"severity": 11}, {"num_pictures": 0}, {"seed": -1}):
        with pytest.raises(mixkit.HyperParameterError):
            PixMix(**bad)
    with pytest.raises(mixkit.ShapeError, match="mixing_set"):
        PixMix(mixing_set=torch.rand(3, 8, 8))
    info = mixkit.method_info("pixmix")
    assert info.family == "linear" and info.sources == 1
    assert info.defaults["k"] == 4 and info.defaults["beta"] == 3.0 and info.defaults["severity"] == 3


def test_batched_augmented_copies_equal_one_call_per_column():
    """Every augmented copy is made in one batched call; each equals its column's own op; the
    needed pictures follow them in the same buffer."""
    from mixkit.functional.augment_ops import AUGMIX_OPS, apply_ops

    x = torch.rand(6, 3, H, W, generator=gen(21))
    m = PixMix(mixing_set=torch.rand(2, 3, FIT, FIT, generator=gen(22)), k=3)
    params = m.sample(x, generator=gen(23))
    needed = torch.tensor([True, False, True, True, False, True])
    sources, slot, picture = m._sources(x, x, params, needed)
    for b in range(6):
        for col in range(4):
            op = int(params.ops[b, col])
            assert (slot[b, col] >= 0) == (op >= 0)
            if op >= 0:
                want = apply_ops(x[b : b + 1], params.ops[b, col : col + 1], params.magnitude[b, col : col + 1],
                                 AUGMIX_OPS).clamp(0, 1)
                assert torch.equal(sources[int(slot[b, col])], want[0])
    assert bool((picture[~needed] == -1).all())
    crops = m._pictures(x, params, needed.nonzero().squeeze(1)).float().mul_(1 / 255)
    assert torch.equal(sources[picture[needed]], crops)
