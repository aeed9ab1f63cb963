"""A dependency-free progress bar and a JSON-lines log."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Progress", "JsonlLog"]


class Progress:
    """One line per epoch, redrawn in place on a terminal, printed every ~25% otherwise.

    Args:
        total: number of steps.
        desc: text before the bar.
        stream: where to draw (stderr by default).
        enabled: draw at all (rank 0 only in distributed runs).
    """

    def __init__(self, total: int, desc: str, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total, self.desc, self.enabled = max(total, 1), desc, enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.start = time.perf_counter()
        self._last_quarter = -1

    def update(self, n: int = 1, **values: float) -> None:
        self.done += n
        if not self.enabled:
            return
        quarter = 4 * self.done // self.total
        if self.tty or quarter > self._last_quarter or self.done == self.total:
            self._last_quarter = quarter
            self._draw(values)

    def _draw(self, values: dict[str, float]) -> None:
        width = 24
        filled = width * self.done // self.total
        elapsed = time.perf_counter() - self.start
        info = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
        line = f"{self.desc} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {elapsed:.0f}s  {info}"
        end = "" if self.tty and self.done < self.total else "\n"
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()


class JsonlLog:
    """Append one JSON object per line to a file (flushed at once, safe to tail)."""

    def __init__(self, path: str | Path, *, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")
