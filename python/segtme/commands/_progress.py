"""Progress of a CLI run: one line per stage, and a counter for the model's tiles.

On a terminal the tile counter is a tqdm bar; otherwise (a log file, a pipe, QuPath or a batch
scheduler starting the CLI) it is plain lines — ``segmenting: 40/120 tiles (33 %, 12.1 s)`` at
most every 10 % or 5 s — so a long run is never silent. Stage lines (reading, model, cells,
GeoJSON, CSV, overlay) are printed in both cases, prefixed with the elapsed time. All on stderr.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Callable


class RunProgress:
    """enabled: False prints nothing (``--no-progress``). stream: default stderr."""

    def __init__(self, enabled: bool = True, stream: IO[str] | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self._bar = None

    def stage(self, message: str) -> None:
        """One line ``[  12.3 s] message``."""
        if not self.enabled:
            return
        line = f"[{time.perf_counter() - self.t0:7.1f} s] {message}"
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def counter(self, total: int, unit: str, desc: str) -> Callable[[int], None] | None:
        """A callback taking increments (``n`` finished items) for ``total`` items, or None when
        disabled. Call ``close()`` when done."""
        if not self.enabled:
            return None
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=unit, desc=desc, file=self.stream)
            return self._bar.update
        state = {"k": 0, "t": time.perf_counter(), "pct": -10.0}
        t_start = time.perf_counter()
        self.stage(f"{desc}: {total} {unit}s")

        def update(n: int = 1) -> None:
            state["k"] += int(n)
            k = state["k"]
            pct = 100.0 * k / max(total, 1)
            now = time.perf_counter()
            if k >= total or pct - state["pct"] >= 10.0 or now - state["t"] >= 5.0:
                state["pct"], state["t"] = pct, now
                self.stage(f"{desc}: {k}/{total} {unit}s ({pct:.0f} %, {now - t_start:.1f} s)")

        return update

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
