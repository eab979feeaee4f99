"""What the benchmarks share: an offline environment, one real fedray run read back, and a
background poller for memory samplers."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "RAY_AUTH_MODE": "disabled",
    "TRANSFORMERS_VERBOSITY": "error",
}


def offline() -> None:
    """No hub, no W&B, no Ray auth: set before Ray or transformers start (a user's values win)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # run as a script from anywhere


def run_experiment(base: Path, overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """One real fedray run in-process (on the local Ray): summary, records, client rows, wall time."""
    from actors.launch import start_run
    from engine.config import apply_overrides, read_yaml, validate_config

    cfg = validate_config(apply_overrides(read_yaml(base), overrides))
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the run's table would mix with ours
        out_dir = start_run(cfg, out=str(run_dir))

    def lines(name: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in (out_dir / name).read_text().splitlines()]

    return {
        "summary": json.loads((out_dir / "summary.json").read_text()),
        "records": lines("metrics.jsonl"),
        "clients": lines("clients.jsonl"),
        "wall_s": time.perf_counter() - t0,
    }


class Poller:
    """Calls `tick()` on a daemon thread every `period_s` while its `with` block runs."""

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
