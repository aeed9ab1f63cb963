"""PixMix's mixing pictures: the fractal set, folders of images, and fitting, channel matching
and cropping them to a batch.

Follows Hendrycks et al., "PixMix: Dreamlike Pictures Comprehensively Improve Safety Measures"
(CVPR 2022; github.com/andyzoujm/pixmix): pictures resized to 9/8 of the images' size, then
randomly cropped (``Resize(36)`` + ``RandomCrop(32)`` on CIFAR).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from mixkit._device import upload
from mixkit.errors import ShapeError
from mixkit.functional.fractals import fractal_images

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
_LUMA = (0.299, 0.587, 0.114)


@functools.lru_cache(maxsize=2)
def _fractal_set(n: int, hw: tuple[int, int], channels: int, seed: int) -> Tensor:
    """``(n, C, H, W)`` uint8 fractals, shared by every PixMix with the same set."""
    g = torch.Generator().manual_seed(seed)
    parts = [fractal_images(min(256, n - i), hw, channels=channels, generator=g) for i in range(0, n, 256)]
    return torch.cat([(p * 255).round_().to(torch.uint8) for p in parts])


def _image_paths(folder: Path) -> list[Path]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise FileNotFoundError(
            f"mixing_set: no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) in {str(folder)!r} or its sub-folders"
        )
    return paths


def _load_images(paths: list[Path]) -> list[Tensor]:
    """Decode the pictures as ``(3, h, w)`` uint8 RGB tensors (Pillow, imported here)."""
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError(
            "PixMix needs Pillow to read a folder of mixing pictures: pip install mixkit[data] "
            "(or pip install pillow)"
        ) from err
    out = []
    for path in paths:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
            out.append(data.view(rgb.height, rgb.width, 3).permute(2, 0, 1))
    return out


def _fit(pics: Tensor, hw: tuple[int, int]) -> Tensor:
    """Resize (aspect kept, antialiased) to cover ``hw``, then centre-crop: uint8 ``(N, C, *hw)``."""
    h, w = pics.shape[-2:]
    scale = max(hw[0] / h, hw[1] / w)
    size = (max(hw[0], math.ceil(h * scale - 1e-6)), max(hw[1], math.ceil(w * scale - 1e-6)))
    out = pics.float()
    if size != (h, w):
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    top, left = (size[0] - hw[0]) // 2, (size[1] - hw[1]) // 2
    out = out[..., top : top + hw[0], left : left + hw[1]]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _match_channels(pics: Tensor, channels: int) -> Tensor:
    """uint8 pictures with ``channels`` channels (RGB to luma for grey-scale data)."""
    c = pics.shape[1]
    if c == channels:
        return pics
    if c == 3 and channels == 1:
        luma = torch.tensor(_LUMA).view(1, 3, 1, 1)
        return (pics.float() * luma).sum(1, keepdim=True).round_().to(torch.uint8)
    if c == 1:
        return pics.expand(-1, channels, -1, -1).contiguous()
    raise ShapeError(f"mixing_set pictures have {c} channels but the batch has {channels}")


def _crop(pics: Tensor, index: Tensor, offsets: Tensor, hw: tuple[int, int]) -> Tensor:
    """Crop pictures ``pics[index]`` (``pics`` is ``(P, C, Hp, Wp)``) to ``(B, C, *hw)`` at
    per-sample offsets in [0, 1) of the slack: one indexing of the view of every crop window
    (no copy of the whole pictures first)."""
    (hp, wp), (h, w) = pics.shape[-2:], hw
    slack = torch.tensor([hp - h + 1, wp - w + 1], dtype=torch.float64)
    start = upload((offsets * slack).long(), pics.device)
    windows = pics.unfold(2, h, 1).unfold(3, w, 1)  # (P, C, Hp - h + 1, Wp - w + 1, h, w), a view
    return windows[upload(index, pics.device), :, start[:, 0], start[:, 1]]
