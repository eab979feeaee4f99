"""What a run evaluates: the test split (eval/* metrics) and, under eval.select: validation, the
held-out training rows too (val/* metrics). The workers hold both as one split, so one load of the
global state scores both and the backends' evaluate call is unchanged."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.data.batching import Encoded, Pixels, eval_batches
from engine.train import eval_metrics, merge_eval

TEST, VALIDATION = "eval", "val"  # metric prefixes


@dataclass(frozen=True)
class EvalSets:
    data: Encoded | Pixels  # what the workers evaluate: the sets one after another
    ranges: tuple[tuple[str, int, int], ...]  # (metric prefix, first row in data, rows)

    def batches(self, batch_size: int) -> list[tuple[str, list[np.ndarray]]]:
        """Each set's fixed eval batches (eval_batches, longest first) as rows of `data`."""
        lengths = self.data.lengths
        return [
            (prefix, [b + start for b in eval_batches(n, lengths[start : start + n], batch_size)])
            for prefix, start, n in self.ranges
        ]


def eval_sets(test: Encoded | Pixels, validation: Encoded | Pixels | None) -> EvalSets:
    """The test split alone, or the test split then the validation rows."""
    if validation is None:
        return EvalSets(test, ((TEST, 0, len(test)),))
    return EvalSets(
        concat(test, validation), ((TEST, 0, len(test)), (VALIDATION, len(test), len(validation)))
    )


def concat(a: Encoded | Pixels, b: Encoded | Pixels) -> Encoded | Pixels:
    """The rows of `a` then those of `b` as one split."""
    if isinstance(a, Pixels) and isinstance(b, Pixels):
        return Pixels(np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels]))
    if isinstance(a, Encoded) and isinstance(b, Encoded):
        offsets = np.concatenate([a.offsets, b.offsets[1:] + a.offsets[-1]])
        ids = np.concatenate([a.ids, b.ids]).astype(np.int32, copy=False)
        return Encoded(ids, offsets.astype(np.int64), np.concatenate([a.labels, b.labels]))
    raise TypeError(f"cannot join a {type(a).__name__} split and a {type(b).__name__} split")


def evaluate_sets(
    sets: EvalSets,
    batch_size: int,
    task: str,
    run: Callable[[list[np.ndarray]], list[dict]],
) -> dict[str, float]:
    """Every set's metrics under its prefix, and time/eval_wall_s: `run` evaluates a list of
    batches (rows of `sets.data`) and returns their sums in that order; each set's sums are merged
    in batch order, so eval/* is the same number with or without the validation rows beside it."""
    t0 = time.perf_counter()
    per_set = sets.batches(batch_size)
    sums = run([b for _, batches in per_set for b in batches])
    out: dict[str, float] = {}
    first = 0
    for prefix, batches in per_set:
        merged = merge_eval(sums[first : first + len(batches)])
        out.update({f"{prefix}/{k}": v for k, v in eval_metrics(merged, task).items()})
        first += len(batches)
    out["time/eval_wall_s"] = time.perf_counter() - t0
    return out
