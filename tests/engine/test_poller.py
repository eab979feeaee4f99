"""engine/poller.py: tick() runs at once, then every period, and never after the block ends."""

from __future__ import annotations

import time

from engine.poller import Poller


class Counter(Poller):
    def __init__(self, period_s: float) -> None:
        super().__init__(period_s)
        self.ticks = 0

    def tick(self) -> None:
        self.ticks += 1


def test_ticks_at_once_then_every_period_and_stops_with_the_block() -> None:
    with Counter(60.0) as slow:
        time.sleep(0.05)
    assert slow.ticks == 1  # the first tick, then a wait the block's end cuts short
    with Counter(0.01) as fast:
        deadline = time.monotonic() + 5
        while fast.ticks < 3:
            assert time.monotonic() < deadline
            time.sleep(0.005)
    done = fast.ticks
    time.sleep(0.05)
    assert fast.ticks == done and not fast._thread.is_alive()
