"""What the one-thread kernel benchmarks (``bench/fastmath.py``, ``bench/layout.py``) share:
the header of their JSON result and writing it."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch


def header(script: str, argv: list[str] | None, **fields: Any) -> dict[str, Any]:
    """The command that made the result, when, on what machine and torch, one thread, and
    ``fields``."""
    command = f"python bench/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
    return {"command": command.strip(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": 1, **fields}


def write(out: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write ``result`` as JSON to ``out`` (folders made as needed) and say so; returns it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result
