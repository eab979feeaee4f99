"""The SFPrompt client: prune its data, train locally (head -> tail), then train through the server body."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from engine.client import ClientResult, ClientTask, GlobalCache, WorkerSpec, load_base
from engine.cost import StepCostMeter, memory_estimate
from engine.data.batching import Encoded, batch_shape, collate, make_batches
from engine.device import Placement, device_peak_bytes
from engine.ledger import serialize_state
from engine.methods import count_parameters, load_trainable_state, trainable_state
from engine.pruning import keep_hardest, keep_hardest_per_class, keep_random, score_batch
from engine.split.model import (
    ClientModel,
    SplitSpec,
    param_groups,
    set_trainable,
    split_model,
)
from engine.split.wire import pack, unpack
from engine.train import (
    TrainResult,
    TrainSpec,
    evaluate_logits,
    make_optimizer,
    proximal_grad,
)

Key = tuple[int, int, int]  # (round, client, step): names one forward/backward pair on the server
EVAL_CLIENT = -1  # the client id evaluation requests use
SCORE_BATCH = 64  # pruning scores are forward-only: bigger batches than training


class Link(Protocol):
    """The client's connection to the body server (a Ray actor or an in-process runtime)."""

    def forward(self, key: Key, blob: bytes, keep_graph: bool) -> bytes: ...

    def backward(self, key: Key, blob: bytes) -> bytes: ...


@dataclass(frozen=True)
class SplitPlan:
    """SFPrompt's client-side settings (plain values from the config)."""

    head_layers: int = 0
    tail_layers: int = 0
    prompt_length: int = 10
    train_head: bool = False
    train_tail: bool = True
    compress: str = "none"
    prune: bool = True
    keep_ratio: float = 0.5
    score: str = "el2n"  # el2n | loss | random
    per_class: bool = True  # keep the same fraction of every label
    score_with: str = "local"  # local (head -> tail, no traffic) | split (through the server)
    local_loss: bool = True
    local_epochs: int = 1
    split_training: bool = True
    body_trains: bool = False  # the server trains its body (SplitFed): gradients must go up
    encoder_lr: float | None = None  # the client's pretrained encoder weights (None: train.lr)

    def split_spec(self) -> SplitSpec:
        return SplitSpec(self.head_layers, self.tail_layers, self.prompt_length)


def build_client_model(spec: WorkerSpec, plan: SplitPlan) -> ClientModel:
    """Load the base model and keep only the client's parts (the body's blocks are dropped)."""
    model = load_base(spec)
    torch.manual_seed(spec.seed)  # prompts start identical in every worker
    client, _body = split_model(model, plan.split_spec())
    set_trainable(client, plan.train_head, plan.train_tail)
    return client


class SplitClientRuntime:
    """Hosts one client model (head + tail + prompts); every task swaps in the global trainable state."""

    def __init__(
        self, spec: WorkerSpec, plan: SplitPlan, train: Encoded, test: Encoded, link: Link
    ) -> None:
        torch.set_num_threads(spec.torch_threads)
        self.spec, self.plan, self.link = spec, plan, link
        self.train_data, self.test_data = train, test
        # fp32 on the worker's own device (a GPU when Ray gave it one); tensors cross the split
        # through host memory (pack/unpack), so the body server may sit on another device.
        self.placement = Placement.here("fp32")
        self.model = build_client_model(spec, plan).to(self.placement.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable, self.total = count_parameters(self.model)
        every = list(self.model.parameters())
        self.meters = {k: StepCostMeter(every) for k in ("local", "head", "tail", "back", "score")}
        self._global = GlobalCache()

    # -- state -------------------------------------------------------------------------------
    def initial_state(self) -> bytes:
        self._global.reset()
        return serialize_state(trainable_state(self.model))

    def info(self) -> dict[str, int]:
        return {"trainable_params": self.trainable, "total_params": self.total}

    def _load_global(self, key: int, blob: bytes) -> None:
        load_trainable_state(self.model, self._global.get(key, blob))

    # -- one client's round -----------------------------------------------------------------
    def train_client(self, task: ClientTask, global_blob: bytes) -> ClientResult:
        t_wall, t_cpu = time.perf_counter(), time.thread_time()
        self._load_global(task.round - 1, global_blob)
        rng = np.random.default_rng(task.seed)
        torch.manual_seed(task.seed)
        run = _Run(task.round, task.client_id, Counter(), {"flops": 0.0, "act": 0})
        kept = self._prune(task.rows, rng, run)
        opt = make_optimizer(param_groups(self.model, self.plan.encoder_lr), task.spec)
        # FedProx: the tensors the client trains are pulled towards the global ones it received
        anchor = [p.detach().clone() for p in self.params] if task.spec.prox_mu else []
        local_losses: list[float] = []
        if self.plan.local_loss:
            local_spec = _with_epochs(task.spec, self.plan.local_epochs)
            local_losses = self._loop(kept, local_spec, rng, opt, run, self._local_step, anchor)
        split_losses: list[float] = []
        if self.plan.split_training:
            split_losses = self._loop(kept, task.spec, rng, opt, run, self._split_step, anchor)
        losses = split_losses or local_losses
        result = TrainResult(
            num_samples=len(task.rows),
            steps=len(split_losses) + len(local_losses),
            loss=float(np.mean(losses)) if losses else float("nan"),
            flops=run.cost["flops"],
            activation_bytes=int(run.cost["act"]),
            tokens=0,
        )
        peak = memory_estimate(self.total, self.trainable, activation_bytes=result.activation_bytes)
        return ClientResult(
            round=task.round,
            client_id=task.client_id,
            blob=serialize_state(trainable_state(self.model)),
            bytes_down=len(global_blob),
            train=result,
            peak_memory_bytes=peak,
            cpu_s=time.thread_time() - t_cpu,
            wall_s=time.perf_counter() - t_wall,
            traffic=dict(run.traffic),
            device_peak_bytes=device_peak_bytes(self.placement.device),
            extra={
                "kept_samples": len(kept),
                "local_loss": float(np.mean(local_losses)) if local_losses else float("nan"),
                "local_steps": len(local_losses),
                "split_steps": len(split_losses),
            },
        )

    def _loop(
        self, rows, spec: TrainSpec, rng, opt, run: _Run, step: Callable, anchor: list
    ) -> list[float]:
        """Epochs (or `spec.steps` steps) of `step` over length-grouped batches of `rows`;
        `anchor`: the received tensors FedProx's term pulls towards (empty without it)."""
        self.model.train()
        losses: list[float] = []
        epoch = 0
        while True:
            for rows_b in make_batches(
                rows, self.train_data.lengths, spec.batch_size, rng, spec.group_by_length
            ):
                batch = self.placement.to_device(collate(self.train_data, rows_b, spec.pad_id))
                losses.append(step(batch, run, len(losses)))
                if spec.prox_mu:
                    proximal_grad(self.params, anchor, spec.prox_mu)
                if spec.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.params, spec.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if spec.steps is not None and len(losses) >= spec.steps:
                    return losses
            epoch += 1
            if spec.steps is None and epoch >= spec.epochs:
                return losses

    def _local_step(self, batch: dict[str, torch.Tensor], run: _Run, _i: int) -> float:
        """Head straight into the tail with the local loss: no communication."""

        def step() -> float:
            loss = F.cross_entropy(self.model.local_forward(batch), batch["labels"])
            loss.backward()
            return float(loss.detach())

        return run.measure(self.meters["local"], batch, step)

    def _split_step(self, batch: dict[str, torch.Tensor], run: _Run, i: int) -> float:
        """head -> (up) server body (down) -> tail + loss; gradients back the same way."""
        key = (run.round, run.client, i)
        smashed, mask = run.measure(self.meters["head"], batch, lambda: self.model.head(batch))
        # The body backpropagates only for a trainable head/prompts or a body the server trains.
        backprop = smashed.requires_grad or self.plan.body_trains
        up = pack(self.plan.compress, hidden=smashed, mask=mask)
        body_out = run.send(self.link.forward, key, up, "activations", keep_graph=backprop)
        hidden = self._here(body_out["hidden"]).requires_grad_(True)

        def tail_step() -> float:
            loss = F.cross_entropy(self.model.tail(hidden, mask), batch["labels"])
            loss.backward()
            return float(loss.detach())

        loss = run.measure(self.meters["tail"], batch, tail_step)
        if backprop:
            grad_up = pack(self.plan.compress, grad=hidden.grad)
            grad_in = self._here(run.send(self.link.backward, key, grad_up, "gradients")["grad"])
            if smashed.requires_grad:  # finish backprop through the head on the client
                run.measure(self.meters["back"], batch, lambda: smashed.backward(grad_in))
        return loss

    # -- pruning ------------------------------------------------------------------------------
    def _prune(self, rows: np.ndarray, rng: np.random.Generator, run: _Run) -> np.ndarray:
        plan = self.plan
        if not plan.prune or plan.keep_ratio >= 1:
            return np.asarray(rows)
        if plan.score == "random":
            return keep_random(np.asarray(rows), plan.keep_ratio, rng)
        self.model.eval()
        scores = []
        size = SCORE_BATCH
        order = np.asarray(rows)
        with torch.no_grad():
            for i, start in enumerate(range(0, len(order), size)):
                rows_b = order[start : start + size]
                batch = self.placement.to_device(collate(self.train_data, rows_b, self.spec.pad_id))
                logits = run.measure(
                    self.meters["score"], batch, lambda b=batch, i=i: self._score_logits(b, run, i)
                )
                scores.append(score_batch(plan.score, logits.cpu(), batch["labels"].cpu()))
        scores = np.concatenate(scores)
        if plan.per_class:
            labels = self.train_data.labels[order]
            return keep_hardest_per_class(order, scores, labels, plan.keep_ratio)
        return keep_hardest(order, scores, plan.keep_ratio)

    def _score_logits(self, batch, run: _Run, i: int) -> torch.Tensor:
        if self.plan.score_with == "local":
            return self.model.local_forward(batch)
        return self._split_logits(batch, (run.round, run.client, -1 - i), run)

    def _split_logits(self, batch, key: Key, run: _Run | None = None) -> torch.Tensor:
        smashed, mask = self.model.head(batch)
        blob = pack(self.plan.compress, hidden=smashed, mask=mask)
        if run is None:
            body_out = unpack(self.link.forward(key, blob, False))["hidden"]
        else:
            body_out = run.send(self.link.forward, key, blob, "activations", keep_graph=False)[
                "hidden"
            ]
        return self.model.tail(self._here(body_out), mask)

    def _here(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor that came over the split (host memory), on this client's device."""
        return t if self.placement.device.type == "cpu" else t.to(self.placement.device)

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, version: int, global_blob: bytes, batches: list[np.ndarray]) -> list[dict]:
        self._load_global(version, global_blob)
        self.model.eval()
        counter = iter(range(1 << 30))

        def logits_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            key = (version, EVAL_CLIENT, next(counter))
            return self._split_logits(self.placement.to_device(batch), key).cpu()

        return evaluate_logits(
            logits_of,
            self.test_data,
            batches,
            self.spec.task,
            self.spec.pad_id,
            self.spec.num_labels,
        )


@dataclass
class _Run:
    """Per-task accumulators: split traffic by direction/kind and client compute."""

    round: int
    client: int
    traffic: Counter
    cost: dict[str, float]

    def measure(self, meter: StepCostMeter, batch: dict[str, torch.Tensor], fn: Callable[[], Any]):
        result, cost = meter.measure(batch_shape(batch), fn)
        self.cost["flops"] += cost.flops
        self.cost["act"] = max(self.cost["act"], cost.activation_bytes)
        return result

    def send(self, call: Callable[..., bytes], key: Key, blob: bytes, kind: str, **kw) -> dict:
        """One request/answer over the split; both payloads are counted as they were serialized."""
        self.traffic[f"up/{kind}"] += len(blob)
        answer = call(key, blob, **kw)
        self.traffic[f"down/{kind}"] += len(answer)
        return unpack(answer)


def _with_epochs(spec: TrainSpec, epochs: int) -> TrainSpec:
    from dataclasses import replace

    return replace(spec, epochs=epochs, steps=None)
