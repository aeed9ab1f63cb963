"""bench/vs_timm.py: one operation against timm, call by call (timm lives in the benchmark's
own environment: without it the script says what to do)."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import load_bench


def test_vs_timm_runs_or_says_how_to_get_timm(capsys):
    vs = load_bench("vs_timm")
    args = ["--op", "cutmix", "--size", "8", "--calls", "3", "--inplace", "--evict"]
    if importlib.util.find_spec("timm") is None:
        with pytest.raises(SystemExit, match="timm is not available.*make bench-ops"):
            vs.main(args)
        return
    out = vs.main(args)
    assert out["timm_us"] > 0 and out["mixkit_us"] > 0 and out["ratio"] > 0
    assert "cutmix 8 float32 batch in place, cold caches" in capsys.readouterr().out
