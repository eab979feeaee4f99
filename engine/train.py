"""A client's local training and the sharded evaluation of a model (the math every backend runs)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.cost import StepCostMeter
from engine.data.batching import Encoded, batch_shape, collate, make_batches
from engine.device import CPU_FP32, Placement


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends only on (seed, round, client, ...), never on scheduling."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


@dataclass(frozen=True)
class TrainSpec:
    """How a client trains locally (plain values built from the config)."""

    batch_size: int
    epochs: int
    steps: int | None
    lr: float
    optimizer: str
    weight_decay: float
    max_grad_norm: float | None
    group_by_length: bool
    task: str
    pad_id: int
    prox_mu: float = 0.0  # FedProx: (mu / 2) * ||w - w_global||^2 joins the local loss


def _lm_labels(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    return {**batch, "labels": labels}


def model_inputs(batch: dict[str, torch.Tensor], task: str) -> dict[str, torch.Tensor]:
    return _lm_labels(batch) if task == "causal_lm" else batch


def proximal_grad(params: list[torch.nn.Parameter], anchor: list[torch.Tensor], mu: float) -> None:
    """Add FedProx's term to unscaled gradients: the gradient of (mu / 2) * ||w - w_anchor||^2 is
    mu * (w - w_anchor), so the optimizer and the clipping see the proximal objective's gradient."""
    with torch.no_grad():
        for p, p0 in zip(params, anchor, strict=True):
            if p.grad is not None:
                p.grad.add_(p.detach() - p0, alpha=mu)


def _aligned(
    model: torch.nn.Module, by_name: Mapping[str, np.ndarray], placement: Placement
) -> list[torch.Tensor]:
    """`by_name` as tensors in the order of the model's trainable parameters, on their device."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if sorted(by_name) != sorted(n for n, _ in named):
        raise ValueError("grad_offset must hold exactly the model's trainable tensors")
    return [torch.from_numpy(np.asarray(by_name[n])).to(p.device, p.dtype) for n, p in named]


def make_optimizer(
    params: list[torch.nn.Parameter] | list[dict[str, Any]], spec: TrainSpec
) -> torch.optim.Optimizer:
    """`spec`'s optimizer over `params` (tensors, or groups whose own "lr" overrides spec.lr)."""
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


@dataclass(frozen=True)
class TrainResult:
    num_samples: int
    steps: int
    loss: float  # mean training loss over steps
    flops: float  # forward + backward FLOPs of all steps
    activation_bytes: int  # largest saved-for-backward footprint of any step
    tokens: int  # padded token positions processed
    partial: bool = False  # stopped early: the next step would have exceeded the FLOPs budget


def local_train(
    model: torch.nn.Module,
    enc: Encoded,
    rows: np.ndarray,
    spec: TrainSpec,
    seed: int,
    meter: StepCostMeter,
    flops_budget: float | None = None,
    placement: Placement = CPU_FP32,
    grad_offset: Mapping[str, np.ndarray] | None = None,
) -> TrainResult:
    """Train `model` in place on rows of `enc`; all randomness comes from `seed`.

    With `flops_budget`, training stops before the first step that would take the client's FLOPs
    past it (that step's gradient is computed to know its cost, then discarded, not applied).
    `placement`: the device `model` is on (batches are moved there) and the autocast precision.
    `grad_offset`: {trainable parameter name: array} added to every step's gradient (SCAFFOLD's
    c - c_i).
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # dropout
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if spec.prox_mu else []
    offset = _aligned(model, grad_offset, placement) if grad_offset is not None else []
    opt = make_optimizer(params, spec)
    scaler = placement.scaler()  # scales fp16 losses; a pass-through otherwise
    model.train()
    lengths = enc.lengths
    losses: list[float] = []
    flops = 0.0
    act = tokens = 0
    epoch = 0
    partial = False
    while True:
        batches = make_batches(rows, lengths, spec.batch_size, rng, spec.group_by_length)
        for rows_b in batches:
            batch = placement.to_device(model_inputs(collate(enc, rows_b, spec.pad_id), spec.task))

            def step(batch=batch) -> float:
                with placement.autocast():
                    loss = model(**batch).loss
                scaler.scale(loss).backward()
                return float(loss.detach())

            loss, cost = meter.measure(batch_shape(batch), step)
            if flops_budget is not None and flops + cost.flops > flops_budget:
                opt.zero_grad(set_to_none=True)
                partial = True
                break
            if spec.max_grad_norm is not None or spec.prox_mu or offset:
                scaler.unscale_(opt)  # clip the true gradients, not fp16-scaled ones
            if spec.prox_mu:
                proximal_grad(params, anchor, spec.prox_mu)
            for p, off in zip(params, offset, strict=False):
                if p.grad is not None:
                    p.grad.add_(off)
            if spec.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
            scaler.step(opt)  # fp16: skips the step when a gradient overflowed
            scaler.update()
            opt.zero_grad(set_to_none=True)
            losses.append(loss)
            flops += cost.flops
            act = max(act, cost.activation_bytes)
            tokens += int(np.prod(batch_shape(batch)))
            if spec.steps is not None and len(losses) >= spec.steps:
                break
        epoch += 1
        done_steps = spec.steps is not None and len(losses) >= spec.steps
        if partial or done_steps or (spec.steps is None and epoch >= spec.epochs):
            break
    return TrainResult(
        num_samples=len(rows),
        steps=len(losses),
        loss=float(np.mean(losses)) if losses else float("nan"),
        flops=flops,
        activation_bytes=act,
        tokens=tokens,
        partial=partial,
    )


def evaluate_batches(
    model: torch.nn.Module,
    enc: Encoded,
    batches: list[np.ndarray],
    task: str,
    pad_id: int,
    num_labels: int,
    placement: Placement = CPU_FP32,
) -> list[dict]:
    """Per-batch sums (loss_sum, count, hits, confusion), so any sharding merges to the same totals."""
    model.eval()

    def logits_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = placement.to_device({n: v for n, v in batch.items() if n != "labels"})
        with placement.autocast():
            return model(**inputs).logits.float().cpu()

    return evaluate_logits(logits_of, enc, batches, task, pad_id, num_labels)


@torch.no_grad()
def evaluate_logits(
    logits_of: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    enc: Encoded,
    batches: list[np.ndarray],
    task: str,
    pad_id: int,
    num_labels: int,
) -> list[dict]:
    """`evaluate_batches` for any function from a collated batch to logits (e.g. a split model)."""
    k = max(num_labels, 1)
    out = []
    for rows_b in batches:
        batch = model_inputs(collate(enc, rows_b, pad_id), task)
        logits = logits_of(batch)
        confusion = np.zeros((k, k), dtype=np.int64)
        if task == "causal_lm":
            # Next-token prediction: logits [b, t, v] at position i predict token i + 1.
            shift_logits, shift_labels = logits[:, :-1], batch["labels"][:, 1:]
            mask = shift_labels != -100
            ce = F.cross_entropy(shift_logits[mask].float(), shift_labels[mask], reduction="sum")
            count = int(mask.sum())
            hits = int((shift_logits.argmax(-1)[mask] == shift_labels[mask]).sum())
        else:
            labels = batch["labels"]
            ce = F.cross_entropy(logits.float(), labels, reduction="sum")
            count, hits = len(labels), 0
            np.add.at(confusion, (labels.numpy(), logits.argmax(-1).numpy()), 1)
        out.append({"loss_sum": float(ce), "count": count, "hits": hits, "confusion": confusion})
    return out


def merge_eval(parts: list[dict]) -> dict:
    """Add per-batch sums in batch order (the same order whatever the sharding)."""
    out = {"loss_sum": 0.0, "count": 0, "hits": 0, "confusion": None}
    for p in parts:
        out["loss_sum"] += p["loss_sum"]
        out["count"] += p["count"]
        out["hits"] += p["hits"]
        out["confusion"] = (
            p["confusion"] if out["confusion"] is None else out["confusion"] + p["confusion"]
        )
    return out


def eval_metrics(sums: dict, task: str) -> dict[str, float]:
    """accuracy, macro-F1 and mean loss (classification); loss, perplexity and token accuracy (LM)."""
    n = max(sums["count"], 1)
    loss = sums["loss_sum"] / n
    if task == "causal_lm":
        return {
            "loss": loss,
            "perplexity": float(np.exp(min(loss, 50.0))),
            "accuracy": sums["hits"] / n,
        }
    cm = np.asarray(sums["confusion"], dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    present = (support + predicted) > 0
    f1 = np.where(present, 2 * tp / np.maximum(support + predicted, 1), 0.0)
    return {
        "accuracy": float(tp.sum() / n),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "loss": loss,
    }
