"""How long each step of a chapter took: the timing table at the end of every chapter.

Taught in: every chapter (each states its measured time to run from this table).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import pandas as pd


class Timings(dict):
    """Wall-clock seconds per step (``timings[name]``) and process CPU seconds (``timings.cpu[name]``).

    ``with timings("score answers"): ...`` records one step; a repeated name adds up."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - wall
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu

    def table(self, *, total: bool = True) -> pd.DataFrame:
        """One row per step (wall and CPU seconds); ``total`` adds the process CPU time so far."""
        df = pd.DataFrame({"wall s": pd.Series(dict(self), dtype=float),
                           "CPU s": pd.Series(self.cpu, dtype=float)})
        df.index.name = "step"
        if total:
            df.loc["whole notebook so far (process CPU)"] = [float("nan"), time.process_time()]
        return df
