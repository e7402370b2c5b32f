"""A minimal progress bar on stderr (one line, redrawn in place; silent when disabled)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Counts work units of named steps: ``update(n, step=...)``; ``close()`` ends the line."""

    def __init__(self, total: int, label: str, enabled: bool = True, stream=None, width: int = 24):
        self.total = max(int(total), 1)
        self.label = label
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.done = 0
        self.start = time.perf_counter()
        self.step = ""

    def update(self, count: int = 1, step: str | None = None) -> None:
        """Advance by ``count`` units and redraw, showing the current ``step``."""
        self.done = min(self.done + count, self.total)
        if step is not None:
            self.step = step
        if not self.enabled:
            return
        filled = int(self.width * self.done / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {self.step:<10} {elapsed:6.1f}s")
        self.stream.flush()

    def close(self) -> None:
        """Finish the line."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
