"""On-the-fly corruptions: shared battery over the registry, then per-corruption properties."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mixkit
from mixkit.corruptions import (
    CORRUPTIONS,
    SEVERITY_PARAMS,
    brightness,
    contrast,
    corrupt,
    gaussian_blur,
    gaussian_noise,
    jpeg,
    shot_noise,
)

NAMES = sorted(CORRUPTIONS)
RANDOM = {"gaussian_noise", "shot_noise"}


def images(b: int = 6, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random images with some texture, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = F.interpolate(torch.rand(b, c, max(h // 4, 1), max(w // 4, 1), generator=g), size=(h, w), mode="bilinear")
    return (0.8 * low + 0.2 * torch.rand(b, c, h, w, generator=g)).clamp(0, 1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_and_constants_agree():
    assert set(CORRUPTIONS) == set(SEVERITY_PARAMS)
    assert all(len(v) == 5 for v in SEVERITY_PARAMS.values())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("size", [(6, 3, 32, 32), (1, 1, 13, 10), (3, 4, 8, 17)])
def test_shape_dtype_range_and_no_mutation(name, dtype, size):
    x = images(*size).to(dtype)
    before = x.clone()
    out = corrupt(x, name, 3, generator=gen())
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    assert torch.equal(x, before)


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_kept(name):
    x = images().contiguous(memory_format=torch.channels_last)
    out = corrupt(x, name, 2, generator=gen())
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, corrupt(x.contiguous(), name, 2, generator=gen()), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_determinism(name):
    x = images()
    first = corrupt(x, name, 4, generator=gen(1))
    assert torch.equal(first, corrupt(x, name, 4, generator=gen(1)))
    other = corrupt(x, name, 4, generator=gen(2))
    assert torch.equal(first, other) != (name in RANDOM)


@pytest.mark.parametrize("name", NAMES)
def test_severity_monotonic(name):
    x = images(8)
    change = [float((corrupt(x, name, s, generator=gen(s)) - x).abs().mean()) for s in range(1, 6)]
    assert all(a < b for a, b in zip(change, change[1:])), change
    assert change[0] > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_corrupt_dispatches(name):
    x = images(2)
    assert torch.equal(corrupt(x, name, 5, generator=gen()), CORRUPTIONS[name](x, 5, generator=gen()))


def test_errors():
    x = images(2)
    for severity in (0, 6, 2.0, True, "3"):
        with pytest.raises(mixkit.HyperParameterError, match="severity must be an integer in 1..5"):
            contrast(x, severity)  # type: ignore[arg-type]
    with pytest.raises(mixkit.UnknownMethodError, match="Did you mean 'gaussian_noise'"):
        corrupt(x, "gausian_noise", 1)
    with pytest.raises(mixkit.DTypeError, match="floating point"):
        jpeg((x * 255).to(torch.uint8), 1)
    with pytest.raises(mixkit.ShapeError, match=r"\(B, C, H, W\)"):
        gaussian_blur(x[0], 1)
    with pytest.raises(TypeError, match="generator"):
        gaussian_noise(x, 1, generator=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("severity", range(1, 6))
def test_gaussian_noise_statistics(severity):
    x = torch.full((4, 3, 64, 64), 0.5)
    noise = gaussian_noise(x, severity, generator=gen()) - x
    sigma = SEVERITY_PARAMS["gaussian_noise"][severity - 1]
    assert float(noise.std()) == pytest.approx(sigma, rel=0.03)
    assert abs(float(noise.mean())) < 3 * sigma / noise.numel() ** 0.5 * 2


@pytest.mark.parametrize("severity", range(1, 6))
def test_shot_noise_statistics(severity):
    x = torch.full((4, 3, 64, 64), 0.5)
    out = shot_noise(x, severity, generator=gen())
    photons = SEVERITY_PARAMS["shot_noise"][severity - 1]
    assert float(out.mean()) == pytest.approx(0.5, abs=0.005)
    assert float(out.var()) == pytest.approx(0.5 / photons, rel=0.05)
    assert torch.allclose(out * photons, (out * photons).round(), atol=1e-3)  # counts / c


def test_blur_of_constant_image_is_the_image():
    x = torch.full((2, 3, 11, 9), 0.37)
    for severity in range(1, 6):
        assert torch.allclose(gaussian_blur(x, severity), x, atol=1e-6)


@pytest.mark.parametrize("severity", range(1, 6))
def test_blur_matches_padded_convolution(severity):
    x = images(3, 3, 12, 9).double()
    sigma = SEVERITY_PARAMS["gaussian_blur"][severity - 1]
    r = int(4 * sigma + 0.5)
    taps = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
    taps = taps / taps.sum()
    padded = F.pad(x.reshape(9, 1, 12, 9), (r, r, r, r), mode="replicate")
    ref = F.conv2d(padded, torch.outer(taps, taps).view(1, 1, 2 * r + 1, 2 * r + 1)).view_as(x)
    assert torch.allclose(gaussian_blur(x, severity), ref, atol=1e-12)


@pytest.mark.parametrize("severity", range(1, 6))
def test_contrast_formula(severity):
    x = images(4).double()
    c = SEVERITY_PARAMS["contrast"][severity - 1]
    out = contrast(x, severity)
    mean = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(out.mean(dim=(2, 3), keepdim=True), mean, atol=1e-12)
    assert torch.allclose(out - mean, c * (x - mean), atol=1e-12)


@pytest.mark.parametrize("severity", range(1, 6))
def test_brightness_equals_hsv_round_trip(severity):
    colors = pytest.importorskip("matplotlib.colors")
    x = images(4).double()
    x[0, :, :4, :4] = 0.0  # black pixels: saturation 0, they turn grey
    hsv = colors.rgb_to_hsv(x.permute(0, 2, 3, 1).numpy())
    hsv[..., 2] = (hsv[..., 2] + SEVERITY_PARAMS["brightness"][severity - 1]).clip(0, 1)
    ref = torch.from_numpy(colors.hsv_to_rgb(hsv)).permute(0, 3, 1, 2)
    assert torch.allclose(brightness(x, severity), ref, atol=1e-12)


@pytest.mark.parametrize("channels", [3, 1])
def test_jpeg_keeps_blockwise_constant_images(channels):
    g = gen(3)
    blocks = torch.rand(4, channels, 4, 5, generator=g)
    x = blocks.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)  # (4, C, 32, 40)
    textured = images(4, channels, 32, 40)
    for severity in range(1, 6):
        # Only the DC terms are rounded, by at most half a step: <= 1.31/255 per pixel of Y, Cb
        # and Cr at quality 40, <= 3.6/255 once the colour transform mixes them.
        assert float((jpeg(x, severity) - x).abs().max()) < 4 / 255
        assert float((jpeg(textured, severity) - textured).abs().mean()) > 4 / 255


def test_jpeg_close_to_pil_without_chroma_subsampling():
    image_mod = pytest.importorskip("PIL.Image")
    x = (images(4) * 255).round() / 255
    for severity, quality in enumerate(SEVERITY_PARAMS["jpeg"], start=1):
        ref = []
        for img in x:
            buffer = io.BytesIO()
            array = (img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            image_mod.fromarray(array).save(buffer, "JPEG", quality=int(quality), subsampling=0)
            decoded = torch.from_numpy(np.array(image_mod.open(buffer))).double()
            ref.append(decoded.permute(2, 0, 1) / 255)
        ref = torch.stack(ref).float()
        gap, change = float((jpeg(x, severity) - ref).abs().mean()), float((ref - x).abs().mean())
        assert gap < 0.25 * change, (severity, gap, change)
