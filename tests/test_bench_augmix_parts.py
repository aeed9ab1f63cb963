"""bench/augmix_parts.py times AugMix's kernels inside a call, and leaves them as they were."""

from __future__ import annotations

import json

import torch

from conftest import load_bench
from mixkit.functional import augment_chains, augment_dispatch, augment_values


def test_augmix_parts_tiny_run(tmp_path):
    parts = load_bench("augmix_parts")
    kernels = dict(augment_values.VALUE_OPS)
    out = tmp_path / "parts.json"
    result = parts.main(["--calls", "2", "--warmup", "1", "--batch", "4", "--out", str(out)])
    shares = result["mean_per_call_ms"]
    assert {"run_kernels", "mixture", "sort"} <= set(shares) and all(v > 0 for v in shares.values())
    assert shares["run_kernels"] <= result["median_call_ms"] * 2  # a part of the call, not more
    assert json.loads(out.read_text())["mean_per_call_ms"] == shares
    # the wrappers are gone: the modules hold their own functions again
    assert augment_dispatch.torch is torch and augment_values.VALUE_OPS == kernels
    assert augment_chains.run_kernels is augment_dispatch.run_kernels
