"""The client runtime: one frozen base model, many virtual clients served by swapping trainable state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from engine.cost import StepCostMeter, memory_estimate
from engine.data.batching import Encoded
from engine.device import Placement, device_peak_bytes, device_total_bytes
from engine.errors import ClientOutOfMemory
from engine.ledger import deserialize_state, serialize_state
from engine.methods import (
    apply_method,
    count_parameters,
    get_method,
    load_trainable_state,
    trainable_state,
)
from engine.models import load_model, resolve_pooling
from engine.train import TrainResult, TrainSpec, evaluate_batches, local_train


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to build its model once (plain values from the config)."""

    model_name: str
    task: str
    num_labels: int
    vocab_size: int
    pad_id: int
    seed: int
    method: str
    method_fields: dict[str, Any]
    torch_threads: int = 1
    pooling: str = "cls"
    precision: str = "auto"  # train.precision, resolved against the worker's own device
    split: Any = None  # engine.split.client.SplitPlan for SFPrompt, else None


def worker_spec(cfg: Any, prep: Any) -> WorkerSpec:
    """What every client worker builds its model from: the run config and its prepared inputs."""
    fields = cfg.method.model_dump(exclude={"name", "lr"})
    return WorkerSpec(
        model_name=cfg.model.name,
        task=cfg.model.task,
        num_labels=prep.splits.num_labels,
        vocab_size=prep.vocab_size,
        pad_id=prep.pad_id,
        seed=cfg.seed,
        method=cfg.method.name,
        method_fields=fields,
        torch_threads=cfg.resources.torch_threads,
        pooling=resolve_pooling(cfg.model.name, cfg.model.pooling),
        precision=cfg.train.precision,
    )


def load_base(spec: WorkerSpec) -> torch.nn.Module:
    """The worker's base model, built from the spec (seeded: identical in every process)."""
    return load_model(
        spec.model_name,
        spec.task,
        spec.num_labels,
        spec.vocab_size,
        spec.seed,
        spec.pad_id,
        spec.pooling,
    )


@dataclass(frozen=True)
class ClientTask:
    round: int
    client_id: int
    rows: np.ndarray  # row indices of the client's local data in the train split
    seed: int
    spec: TrainSpec
    fault: str | None = None  # injected by faults.*: "kill" or "delay:<seconds>" (never on a retry)
    # federation.deadline_policy=partial: stop before the step that would exceed these FLOPs
    flops_budget: float | None = None
    # SCAFFOLD: the serialized c - c_i added to every local gradient (None for other strategies)
    correction: bytes | None = None


@dataclass
class ClientResult:
    round: int
    client_id: int
    blob: bytes  # the serialized trainable state the client uploads
    bytes_down: int  # size of the global state it received
    train: TrainResult
    # The analytic estimate (engine.cost.memory_estimate): device-independent.
    peak_memory_bytes: int
    cpu_s: float  # thread CPU time of the task (not polluted by other processes)
    wall_s: float
    # Split traffic besides the trainable state, "<up|down>/<kind>" -> bytes (SFPrompt).
    traffic: dict[str, int] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)  # algorithm-specific per-client figures
    # The worker's measured peak GPU memory so far (torch's allocator; None on the CPU).
    device_peak_bytes: int | None = None


@dataclass(frozen=True)
class MemoryProbe:
    """One client step on the largest batch a client can draw, as a worker measured it."""

    estimate_bytes: int  # engine.cost.memory_estimate from the step's saved activations
    device_peak_bytes: int | None  # torch's peak allocation on the worker's GPU (None on a CPU)
    device_total_bytes: int | None  # that GPU's memory


class GlobalCache:
    """The global state of one version, deserialized once: every task of a round restarts from it."""

    def __init__(self) -> None:
        self.key: int | None = None  # version = rounds completed when it was broadcast
        self.state: dict[str, np.ndarray] = {}

    def get(self, key: int, blob: bytes) -> dict[str, np.ndarray]:
        if key != self.key:
            self.state, self.key = deserialize_state(blob), key
        return self.state

    def reset(self) -> None:
        self.key = None


class ClientRuntime:
    """Holds one model instance; every task loads the global trainable state, trains, and uploads."""

    def __init__(self, spec: WorkerSpec, train: Encoded, test: Encoded) -> None:
        torch.set_num_threads(spec.torch_threads)
        self.spec = spec
        self.train_data = train
        self.test_data = test
        base = load_base(spec)
        method = get_method(spec.method)
        params = method.params_type(name=spec.method, **spec.method_fields)
        torch.manual_seed(spec.seed)  # method init (e.g. LoRA A) is identical in every worker
        # Built on the CPU (the same init everywhere), then moved once to the worker's device.
        self.placement = Placement.here(spec.precision)
        self.model = apply_method(base, spec.task, params).to(self.placement.device)
        self.trainable, self.total = count_parameters(self.model)
        self.meter = StepCostMeter(self.model.parameters())
        self._global = GlobalCache()

    def initial_state(self) -> bytes:
        """The model's current trainable state; a run starts from it (version 0), so the cache resets."""
        self._global.reset()
        return serialize_state(trainable_state(self.model))

    def info(self) -> dict[str, int]:
        return {"trainable_params": self.trainable, "total_params": self.total}

    def _load_global(self, key: int, blob: bytes) -> None:
        load_trainable_state(self.model, self._global.get(key, blob))

    def train_client(self, task: ClientTask, global_blob: bytes) -> ClientResult:
        t_wall, t_cpu = time.perf_counter(), time.thread_time()
        # Round r (1-based) trains from global version r - 1 (the state after r - 1 rounds).
        self._load_global(task.round - 1, global_blob)
        try:
            result = local_train(
                self.model,
                self.train_data,
                task.rows,
                task.spec,
                task.seed,
                self.meter,
                flops_budget=task.flops_budget,
                placement=self.placement,
                grad_offset=deserialize_state(task.correction) if task.correction else None,
            )
        except torch.OutOfMemoryError as exc:
            raise self._out_of_memory(task) from exc
        blob = serialize_state(trainable_state(self.model))
        peak = memory_estimate(self.total, self.trainable, activation_bytes=result.activation_bytes)
        return ClientResult(
            round=task.round,
            client_id=task.client_id,
            blob=blob,
            bytes_down=len(global_blob),
            train=result,
            peak_memory_bytes=peak,
            cpu_s=time.thread_time() - t_cpu,
            wall_s=time.perf_counter() - t_wall,
            device_peak_bytes=device_peak_bytes(self.placement.device),
        )

    def _out_of_memory(self, task: ClientTask) -> ClientOutOfMemory:
        """Free what the failed step held (the next task starts clean) and say what happened."""
        self.model.zero_grad(set_to_none=True)
        self._global.reset()  # the failed step may have left the weights half-updated
        device = self.placement.device
        where = "its worker's memory"
        if device.type == "cuda":
            torch.cuda.empty_cache()
            where = (
                f"its worker's GPU memory (peak {device_peak_bytes(device) / 2**20:.0f} MiB "
                f"of the GPU's {device_total_bytes(device) / 2**20:.0f} MiB)"
            )
        return ClientOutOfMemory(
            f"client {task.client_id} (round {task.round}) ran out of {where}: lower "
            "train.batch_size or model.max_length, or give each worker more of a GPU "
            "(resources.client_num_gpus)"
        )

    def probe_memory(self, spec: TrainSpec) -> MemoryProbe:
        """Train one step on the `spec.batch_size` longest training rows (the largest padded batch
        any client can draw) and report its memory; leaves the model trained: use a spare runtime."""
        device = self.placement.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        lengths = self.train_data.lengths
        rows = np.argsort(-lengths, kind="stable")[: spec.batch_size]
        one_step = replace(spec, steps=1, epochs=1)
        result = local_train(
            self.model, self.train_data, rows, one_step, 0, self.meter, placement=self.placement
        )
        estimate = memory_estimate(
            self.total, self.trainable, activation_bytes=result.activation_bytes
        )
        return MemoryProbe(estimate, device_peak_bytes(device), device_total_bytes(device))

    def evaluate(self, version: int, global_blob: bytes, batches: list[np.ndarray]) -> list[dict]:
        self._load_global(version, global_blob)
        return evaluate_batches(
            self.model,
            self.test_data,
            batches,
            self.spec.task,
            self.spec.pad_id,
            self.spec.num_labels,
            self.placement,
        )
