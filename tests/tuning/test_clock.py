"""tuning/clock.py: a sweep's wall time is saved while it runs and carried across --resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tuning.clock import ELAPSED_FILE, SweepClock


def saved(d: Path) -> float:
    return json.loads((d / ELAPSED_FILE).read_text())["wall_s"]


def test_the_clock_is_saved_while_the_sweep_runs_and_at_its_end(tmp_path) -> None:
    with SweepClock(tmp_path, every_s=0.05) as clock:
        deadline = time.monotonic() + 5
        while not (tmp_path / ELAPSED_FILE).is_file():  # the periodic save, before the end
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.1)
    assert clock.before == 0.0
    assert 0.1 <= saved(tmp_path) <= clock.total()


def test_a_resumed_sweep_counts_the_time_of_the_one_it_continues(tmp_path) -> None:
    (tmp_path / ELAPSED_FILE).write_text(json.dumps({"wall_s": 100.0}))
    with SweepClock(tmp_path) as clock:
        time.sleep(0.05)
    assert clock.before == 100.0
    assert 100.05 <= saved(tmp_path) <= clock.total() < 110.0


def test_a_stopped_sweep_saves_its_time_on_the_way_out(tmp_path) -> None:
    with pytest.raises(KeyboardInterrupt), SweepClock(tmp_path, every_s=60):
        time.sleep(0.05)
        raise KeyboardInterrupt
    assert saved(tmp_path) >= 0.05
    with SweepClock(tmp_path) as again:  # what the resume starts from
        pass
    assert again.before >= 0.05
