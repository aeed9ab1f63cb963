"""bench/harness_overhead.py's per-batch component timing runs the engine's own input preparation."""

from __future__ import annotations

from pathlib import Path

import torch

import mixkit.train.engine as engine
from conftest import load_bench


def test_component_times_call_the_engines_preparation(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))  # plain_loop
    calls = []
    real = engine._prepare_batch

    def counted(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out)
        return out

    monkeypatch.setattr(engine, "_prepare_batch", counted)
    bench = load_bench("harness_overhead")
    times = bench.component_times(1, "cpu")
    assert set(times) == {"prepare_plain", "prepare_harness", "mix_loss_plain", "mix_loss_harness"}
    assert all(v > 0 for v in times.values())
    assert len(calls) == 3  # two warm-up rounds and one timed
    assert calls[0].shape == (128, 3, 32, 32) and calls[0].is_contiguous(memory_format=torch.channels_last)
