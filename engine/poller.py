"""A background thread that calls `tick()` at a fixed period while a `with` block runs (memory
samplers in the benchmarks, a sweep's saved wall time)."""

from __future__ import annotations

import threading


class Poller:
    """Calls `tick()` on a daemon thread at once and then every `period_s` while its `with` block
    runs; the block's end stops and joins the thread."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def tick(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.period_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
