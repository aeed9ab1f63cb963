"""bench/malloc.py runs both allocator settings, each in a process of its own, and writes them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "malloc.py"


def test_malloc_benchmark_tiny_run(tmp_path):
    out = tmp_path / "malloc.json"
    subprocess.run([sys.executable, str(BENCH), "--size", "8", "--repeats", "1", "--no-step", "--methods",
                    "hmix:elem", "erm:-", "--out", str(out)], check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    assert set(result["settings"]) == {"default", "keep_freed"}
    assert result["settings"]["default"]["applied"] is None
    assert result["settings"]["keep_freed"]["applied"] in (True, False)
    for figures in result["settings"].values():
        assert set(figures["methods"]) == {"hmix:elem", "erm:-"}
        assert all(v["ms"] >= 0 and v["faults_per_call"] >= 0 for v in figures["methods"].values())
    assert result["batch"] == [128, 3, 8, 8]
