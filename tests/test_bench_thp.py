"""bench/thp.py runs the three allocation settings, each in a process of its own, and writes them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "thp.py"


def test_thp_benchmark_tiny_run(tmp_path):
    out = tmp_path / "thp.json"
    subprocess.run([sys.executable, str(BENCH), "--size", "8", "--repeats", "1", "--no-step", "--out", str(out)],
                   check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    assert set(result["settings"]) == {"off", "mixkit", "on"}
    for figures in result["settings"].values():
        assert set(figures) == {"clone_ms", "mixup_ms", "cutmix_ms"}
        assert all(v >= 0 for v in figures.values())
    assert result["batch"] == [128, 3, 8, 8]
