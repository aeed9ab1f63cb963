"""Shared helpers for the test suite: a tiny model with named stages and a generic caller."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mixkit


class TinyNet(nn.Module):
    """A small CNN with stages named like the mixkit/torchvision ResNets."""

    def __init__(self, in_ch: int = 3, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_ch, 4, 3, padding=1)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer2(self.layer1(self.stem(x))))


def mixes(name: str) -> bool:
    """Whether the method mixes at random (False for the ERM baseline, which has no ``p``)."""
    return "p" in mixkit.method_info(name).defaults


def make(name: str, **hparams):
    """Create a method; the shared options p and mode are dropped where it has none (ERM)."""
    defaults = mixkit.method_info(name).defaults
    for shared in ("p", "mode"):
        if shared not in defaults:
            hparams.pop(shared, None)
    return mixkit.create(name, **hparams)


def needs_model(name: str) -> bool:
    return "model" in mixkit.method_info(name).needs


def run_method(method, x, y, *, generator=None, model=None):
    """Call a method the way its metadata says; return (mixed tensor, target, params).

    For model-aware methods the 'mixed tensor' is the model output.
    """
    if needs_model(method.name):
        torch.manual_seed(0)
        model = model or TinyNet(x.shape[1], 5).to(x.device, x.dtype)
        out = method(x, y, model=model, generator=generator)
        return out.logits, out.target, out.params
    out = method(x, y, generator=generator)
    return out.x, out.target, out.params


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet()


def load_bench(name: str):
    """The module ``bench/<name>.py``, loaded from its file (``sys.path`` left as it was)."""
    import importlib.util
    import sys
    from pathlib import Path

    path, saved = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py", list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module
