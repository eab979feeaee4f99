"""A sweep's wall time across `fedray tune --resume`: kept in the sweep directory while it runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

from engine.checkpoint import atomic_write
from engine.poller import Poller

ELAPSED_FILE = "elapsed.json"  # {"wall_s": seconds the sweep has run so far, every invocation}
SAVE_EVERY_S = 10.0


class SweepClock(Poller):
    """The sweep's wall time: what ELAPSED_FILE held when this invocation started plus this
    invocation's own time. While the `with` block runs it is saved every SAVE_EVERY_S seconds and
    once more at its end (Ctrl-C and errors included), so a resumed sweep counts the time of the
    one it continues (a SIGKILL loses at most the last SAVE_EVERY_S)."""

    def __init__(self, sweep_dir: Path, every_s: float = SAVE_EVERY_S) -> None:
        super().__init__(every_s)
        self.path = Path(sweep_dir) / ELAPSED_FILE
        self.before = json.loads(self.path.read_text())["wall_s"] if self.path.is_file() else 0.0
        self._t0 = time.perf_counter()

    def total(self) -> float:
        return self.before + time.perf_counter() - self._t0

    def save(self) -> None:
        atomic_write(self.path, json.dumps({"wall_s": self.total()}) + "\n")

    tick = save

    def __enter__(self) -> SweepClock:
        self._t0 = time.perf_counter()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.save()
