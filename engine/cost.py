"""What a client step costs: FLOPs and saved activations, measured once per batch shape; memory budget."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


@dataclass(frozen=True)
class StepCost:
    """FLOPs of one step (forward + backward when it trains) and bytes saved for backward."""

    flops: float
    activation_bytes: int


class FlopCount(TorchDispatchMode):
    """The FLOPs of the ops run inside it, by torch's own per-op formulas (`flop_registry`, forward
    and backward ops alike); every op runs exactly as it would without the mode.

    torch.utils.flop_counter.FlopCounterMode counts by the same formulas, but it first decomposes
    each op missing from them: silu_backward (Llama's and Qwen's MLPs) then ran as primitive ops
    that round differently, a measured step's gradients differed in their last bits from the same
    step unmeasured, and a run's numbers hung on which batch shapes its workers had measured before
    (a resumed run, another worker count). An op without a formula counts 0 here, as elementwise
    ops do there.
    """

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


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
    """Counts FLOPs (FlopCount, forward + backward) and the bytes of tensors saved for backward
    (torch.autograd.graph.saved_tensors_hooks, unique storages counted once) for a training step,
    measured once per distinct batch shape key and cached, so steady-state steps run without
    instrumentation (and an instrumented step trains exactly as one without).

    `params`: tensors whose storages are weights, not activations (e.g. `model.parameters()`); a
    saved weight (Linear saves W.T to compute the input gradient) is then not counted as activation.
    The activation bytes are every distinct storage saved during `step_fn`, i.e. its peak if
    `step_fn` runs one forward + backward (with gradient accumulation it sums the micro-batches).
    """

    def __init__(self, params: Iterable[torch.Tensor] = ()) -> None:
        self._excluded = {p.untyped_storage().data_ptr() for p in params}
        self._cache: dict[Hashable, StepCost] = {}
        self._flops = QuadraticFit()  # per-sample FLOPs vs length (exactly linear in batch size)
        self._bytes: dict[int, QuadraticFit] = {}  # saved bytes vs length, per batch size
        self.instrumented_steps = 0  # how many steps ran under FlopCount

    def measure(self, key: Hashable, step_fn: Callable[[], Any]) -> tuple[Any, StepCost]:
        """Run `step_fn` (forward + backward), instrumented only if `key` is unseen; (result, cost).

        For a key `(batch, length)` the costs are predicted once their fits are verified: with
        dynamic padding nearly every batch has a new length. FLOPs are exactly batch x per-sample
        cost; saved bytes also hold per-batch terms, so their fit is per batch size and, until it
        is verified, they are counted by the cheap saved-tensor hook alone.
        """
        cost = self._cache.get(key)
        if cost is not None:
            return step_fn(), cost
        shape = _is_shape(key)
        if shape and self._flops.ready:
            b, t = key
            flops = b * self._flops.predict(t)
            fit = self._bytes.setdefault(b, QuadraticFit())
            if fit.ready:
                cost = self._cache[key] = StepCost(flops, int(round(fit.predict(t))))
                return step_fn(), cost
            counter = _SavedTensorCounter(self._excluded)
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
                result = step_fn()
            fit.add(t, counter.nbytes)
            cost = self._cache[key] = StepCost(flops, counter.nbytes)
            return result, cost
        counter = _SavedTensorCounter(self._excluded)
        with (
            FlopCount() as flop_mode,
            torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack),
        ):
            result = step_fn()
        self.instrumented_steps += 1
        cost = StepCost(flops=float(flop_mode.flops), activation_bytes=counter.nbytes)
        self._cache[key] = cost
        if shape:
            b, t = key
            self._flops.add(t, cost.flops / b)
            self._bytes.setdefault(b, QuadraticFit()).add(t, cost.activation_bytes)
        return result, cost

    def cached(self, key: Hashable) -> StepCost | None:
        """The cost measured for `key`, if any."""
        return self._cache.get(key)


def _is_shape(key: Hashable) -> bool:
    return isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, int) for k in key)


class QuadraticFit:
    """value(t) = a*t + c*t^2 + d, the cost form of a transformer step in the sequence length t.

    Linear layers cost O(t), attention O(t^2), a pooled head O(1). Three lengths determine the fit;
    it is used only once a fourth and every later point agree with it (relative 1e-6), so a model
    whose costs take another form is never mispredicted, only measured more often.
    """

    MIN_POINTS = 4

    def __init__(self) -> None:
        self.points: dict[int, float] = {}
        self.coef: np.ndarray | None = None
        self.ready = False

    def add(self, t: int, value: float) -> None:
        self.points[t] = float(value)
        if len(self.points) < self.MIN_POINTS:
            return
        ts = np.array(list(self.points), dtype=np.float64)
        ys = np.array(list(self.points.values()))
        design = np.stack([ts, ts**2, np.ones_like(ts)], axis=1)
        self.coef, *_ = np.linalg.lstsq(design, ys, rcond=None)
        self.ready = bool(np.allclose(design @ self.coef, ys, rtol=1e-6))

    def predict(self, t: int) -> float:
        assert self.coef is not None
        return float(round(np.array([t, t * t, 1.0]) @ self.coef, 3))


def forward_cost(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run a forward-only (eval/inference) step under FlopCount: (result, FLOPs)."""
    with FlopCount() as flop_mode:
        result = fn()
    return result, float(flop_mode.flops)


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
