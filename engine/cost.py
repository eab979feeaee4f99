"""What a client step costs: FLOPs and saved activations, measured once per batch shape; memory budget."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class StepCost:
    """FLOPs of one step (forward + backward when it trains) and bytes saved for backward."""

    flops: float
    activation_bytes: int


class _SavedTensorCounter:
    """Pack hook that sums the bytes of each distinct storage autograd saves, parameters excluded."""

    def __init__(self, excluded_storages: set[int]) -> None:
        self.excluded = excluded_storages
        self.seen: dict[int, torch.UntypedStorage] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        # Returned untouched, so numerics are exactly those of an uninstrumented step.
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without a plain storage
            return t
        ptr = storage.data_ptr()
        if ptr not in self.excluded and ptr not in self.seen:
            # Holding the storage keeps its address from being reused and counted twice.
            self.seen[ptr] = storage
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.seen.values())


class StepCostMeter:
    """Counts FLOPs (torch.utils.flop_counter.FlopCounterMode, forward + backward) and the bytes of
    tensors saved for backward (torch.autograd.graph.saved_tensors_hooks, unique storages counted
    once) for a training step, measured once per distinct batch shape key and cached, so
    steady-state steps run without instrumentation.

    `params`: tensors whose storages are weights, not activations (e.g. `model.parameters()`); a
    saved weight (Linear saves W.T to compute the input gradient) is then not counted as activation.
    The activation bytes are every distinct storage saved during `step_fn`, i.e. its peak if
    `step_fn` runs one forward + backward (with gradient accumulation it sums the micro-batches).
    """

    def __init__(self, params: Iterable[torch.Tensor] = ()) -> None:
        self._excluded = {p.untyped_storage().data_ptr() for p in params}
        self._cache: dict[Hashable, StepCost] = {}
        self._fits: dict[int, LengthFit] = {}
        self.instrumented_steps = 0  # how many steps ran under instrumentation

    def measure(self, key: Hashable, step_fn: Callable[[], Any]) -> tuple[Any, StepCost]:
        """Run `step_fn` (forward + backward), instrumented only if `key` is unseen; (result, cost).

        A key `(batch, length)` whose batch size has a verified `LengthFit` is predicted, not
        measured: with dynamic padding nearly every batch has a new length.
        """
        cost = self._cache.get(key)
        if cost is None and _is_shape(key) and (fit := self._fits.get(key[0])) and fit.ready:
            cost = self._cache[key] = fit.predict(key[1])
        if cost is not None:
            return step_fn(), cost
        counter = _SavedTensorCounter(self._excluded)
        with (
            FlopCounterMode(display=False) as flop_mode,
            torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack),
        ):
            result = step_fn()
        self.instrumented_steps += 1
        cost = StepCost(flops=float(flop_mode.get_total_flops()), activation_bytes=counter.nbytes)
        self._cache[key] = cost
        if _is_shape(key):
            self._fits.setdefault(key[0], LengthFit()).add(key[1], cost)
        return result, cost

    def cached(self, key: Hashable) -> StepCost | None:
        """The cost measured for `key`, if any."""
        return self._cache.get(key)


def _is_shape(key: Hashable) -> bool:
    return isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, int) for k in key)


class LengthFit:
    """Per-sequence cost of a transformer step at one batch size as a function of length t.

    Linear layers cost O(t), attention O(t^2), a pooled head O(1), so both FLOPs and saved bytes
    are exactly a*t + c*t^2 + d. Three measured lengths determine it; it is used only once a
    fourth (and every later) measurement agrees with the fit, so a model of another shape never
    gets a wrong prediction, only more measurements.
    """

    MIN_POINTS = 4

    def __init__(self) -> None:
        self.points: list[tuple[int, StepCost]] = []
        self.coef: tuple[np.ndarray, np.ndarray] | None = None
        self.ready = False

    def add(self, t: int, cost: StepCost) -> None:
        if any(t == p for p, _ in self.points):
            return
        self.points.append((t, cost))
        if len(self.points) < self.MIN_POINTS:
            return
        ts = np.array([p for p, _ in self.points], dtype=np.float64)
        design = np.stack([ts, ts**2, np.ones_like(ts)], axis=1)
        flops = np.array([c.flops for _, c in self.points])
        acts = np.array([c.activation_bytes for _, c in self.points], dtype=np.float64)
        fc, *_ = np.linalg.lstsq(design, flops, rcond=None)
        ac, *_ = np.linalg.lstsq(design, acts, rcond=None)
        exact = np.allclose(design @ fc, flops, rtol=1e-6) and np.allclose(
            design @ ac, acts, rtol=1e-3
        )
        self.coef, self.ready = (fc, ac), bool(exact)

    def predict(self, t: int) -> StepCost:
        assert self.coef is not None
        x = np.array([t, t * t, 1.0])
        fc, ac = self.coef
        return StepCost(flops=float(round(x @ fc)), activation_bytes=int(round(x @ ac)))


def forward_cost(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run a forward-only (eval/inference) step under FlopCounterMode: (result, FLOPs)."""
    with FlopCounterMode(display=False) as flop_mode:
        result = fn()
    return result, float(flop_mode.get_total_flops())


def memory_estimate(
    total_params: int,
    trainable_params: int,
    param_bytes: int = 4,
    optimizer_slots: int = 2,
    activation_bytes: int = 0,
) -> int:
    """Training memory in bytes: all params + grads of the trainable ones + optimizer state
    (`optimizer_slots` per trainable param: 2 for Adam's moments, 0 for plain SGD) + activations."""
    if min(total_params, trainable_params, param_bytes, optimizer_slots, activation_bytes) < 0:
        raise ValueError("memory_estimate arguments must be >= 0")
    if trainable_params > total_params:
        raise ValueError(f"trainable_params ({trainable_params}) > total_params ({total_params})")
    return (
        total_params * param_bytes
        + trainable_params * param_bytes * (1 + optimizer_slots)
        + activation_bytes
    )
