"""A sweep trial's score, what ranks it: the mean of its last `score_window` values of the metric.

Kept apart from the sweep schema so that the report (which reads results.json, never a config)
names the score as `fedray tune` computed it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

TUNE_SCORE = "score"  # the key of a trial's running score in what it reports to Tune


def score(values: Sequence[float], window: int) -> float | None:
    """The mean of the last `window` values, in round order (all of them when a trial reported
    fewer, as one ASHA stopped); None with none."""
    if not values:
        return None
    tail = values[-window:]
    return math.fsum(tail) / len(tail)


def score_name(metric: str, window: int) -> str:
    """The score in words: 'final eval/accuracy', or 'eval/accuracy (mean of last 2)'."""
    return f"final {metric}" if window == 1 else f"{metric} (mean of last {window})"


def tune_metric(metric: str, window: int) -> str:
    """What Tune (and so ASHA) ranks trials by: the metric itself with a window of 1, else the
    trial's running score, so that early stopping ranks trials as the sweep's results do."""
    return metric if window == 1 else TUNE_SCORE


def row_score(row: Mapping[str, Any]) -> Any:
    """A results.json row's score; its final value in a results.json written before scores."""
    return row["score"] if "score" in row else row.get("final")
