"""Tests for engine/cost.py: FLOPs and saved-activation bytes of a step, the cache, memory estimates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import engine.cost
from engine.cost import FlopCount, StepCost, StepCostMeter, forward_cost, memory_estimate
from tests.engine.methods.tiny_models import base_model, batch

B, IN, OUT = 4, 3, 5


def _linear_step(lin: nn.Linear, x: torch.Tensor):
    def step() -> torch.Tensor:
        loss = lin(x).sum()
        loss.backward()
        return loss.detach()

    return step


def test_linear_flops_forward_plus_weight_grad() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(IN, OUT, bias=False)
    x = torch.randn(B, IN)  # no input grad: backward computes only dW = dY^T x
    _, cost = StepCostMeter().measure("k", _linear_step(lin, x))
    assert cost.flops == 2 * B * IN * OUT + 2 * B * IN * OUT


def test_linear_flops_with_input_grad() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(IN, OUT, bias=False)
    x = torch.randn(B, IN, requires_grad=True)  # backward also computes dX = dY W
    _, cost = StepCostMeter().measure("k", _linear_step(lin, x))
    assert cost.flops == 3 * (2 * B * IN * OUT)


def _mlp_and_step(freeze_first: bool = False, act: type[nn.Module] = nn.ReLU, rows: int = B):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(IN, OUT), act(), nn.Linear(OUT, 2))
    mlp[0].requires_grad_(not freeze_first)
    x = torch.randn(rows, IN)

    def step() -> torch.Tensor:
        loss = mlp(x).sum()
        loss.backward()
        return loss.detach()

    return mlp, step


def test_mlp_activation_bytes_by_hand() -> None:
    mlp, step = _mlp_and_step()
    _, cost = StepCostMeter(params=mlp.parameters()).measure("k", step)
    # saved: x [B, IN] by layer 0 (for dW0); the ReLU output [B, OUT] by ReLU and by layer 2
    # (one storage, counted once); layer 2's W.T is a parameter, not an activation; sum saves nothing.
    assert cost.activation_bytes == B * IN * 4 + B * OUT * 4
    # flops: each linear's forward + weight grad, plus layer 2's input grad to reach layer 0
    assert cost.flops == 2 * (2 * B * IN * OUT) + 3 * (2 * B * OUT * 2)


def test_parameters_count_unless_excluded() -> None:
    _, step = _mlp_and_step()
    _, cost = StepCostMeter().measure("k", step)
    assert cost.activation_bytes == B * IN * 4 + B * OUT * 4 + OUT * 2 * 4  # + layer 2's weight


def test_frozen_first_layer_saves_less() -> None:
    mlp, step = _mlp_and_step(freeze_first=True)
    _, cost = StepCostMeter(params=mlp.parameters()).measure("k", step)
    assert cost.activation_bytes == B * OUT * 4  # only the ReLU output, for layer 2's dW
    assert cost.flops == 2 * B * IN * OUT + 2 * (2 * B * OUT * 2)


@pytest.mark.parametrize("act", [nn.ReLU, nn.SiLU])  # SiLU: FlopCounterMode decomposed its backward
def test_instrumentation_does_not_change_numerics(act: type[nn.Module]) -> None:
    results = []
    for instrumented in (False, True):
        mlp, step = _mlp_and_step(act=act, rows=4096)
        loss = StepCostMeter(mlp.parameters()).measure("k", step)[0] if instrumented else step()
        results.append((loss, [p.grad.clone() for p in mlp.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


def test_cache_hit_runs_without_instrumentation(monkeypatch: pytest.MonkeyPatch) -> None:
    modes = []
    real_mode = engine.cost.FlopCount

    def counting_mode(*args, **kwargs):
        modes.append(1)
        return real_mode(*args, **kwargs)

    monkeypatch.setattr(engine.cost, "FlopCount", counting_mode)
    calls = []
    lin = nn.Linear(IN, OUT, bias=False)
    meter = StepCostMeter(lin.parameters())

    def step_for(batch: int):
        def step() -> int:
            calls.append(batch)
            lin(torch.randn(batch, IN)).sum().backward()
            return batch

        return step

    r1, c1 = meter.measure((B, IN), step_for(B))
    r2, c2 = meter.measure((B, IN), step_for(B))
    r3, c3 = meter.measure((2 * B, IN), step_for(2 * B))
    assert (r1, r2, r3) == (B, B, 2 * B) and calls == [B, B, 2 * B]  # every step really ran
    assert len(modes) == 2 and meter.instrumented_steps == 2
    assert c1 == c2 == StepCost(flops=4 * B * IN * OUT, activation_bytes=B * IN * 4)
    assert c3.flops == 2 * c1.flops and meter.cached((2 * B, IN)) == c3
    assert meter.cached("unseen") is None


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_a_measured_transformer_step_counts_as_torch_and_trains_as_unmeasured(kind: str) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    model, inputs = base_model(kind), batch(kind)  # Llama: SiLU MLPs, grouped-query attention
    params = list(model.parameters())

    def step() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    plain = step()
    with FlopCounterMode(display=False) as torch_mode:
        step()
    measured, cost = StepCostMeter(params).measure(tuple(inputs["input_ids"].shape), step)
    assert cost.flops == torch_mode.get_total_flops() > 0  # the same formulas, the same ops
    assert torch.equal(measured[0], plain[0])
    assert all(torch.equal(a, b) for a, b in zip(measured[1], plain[1], strict=True))


def test_flop_count_runs_ops_as_they_are() -> None:
    x = torch.randn(64, 64)
    with FlopCount() as mode:
        y = x @ x
    assert mode.flops == 2 * 64**3 and torch.equal(y, x @ x)


def test_forward_cost() -> None:
    lin = nn.Linear(IN, OUT, bias=False)
    with torch.no_grad():
        y, flops = forward_cost(lambda: lin(torch.ones(B, IN)))
    assert y.shape == (B, OUT) and flops == 2 * B * IN * OUT


def test_memory_estimate_by_hand() -> None:
    # 1000 params (4 B each) + 10 trainable: grad + 2 Adam slots -> 3 * 40 B; + 500 B activations
    assert memory_estimate(1000, 10, activation_bytes=500) == 4000 + 120 + 500
    assert memory_estimate(1000, 10, param_bytes=2, optimizer_slots=0) == 2000 + 20
    assert memory_estimate(1000, 1000) == 4000 * 4
    with pytest.raises(ValueError, match="trainable_params"):
        memory_estimate(10, 11)
    with pytest.raises(ValueError):
        memory_estimate(10, 1, activation_bytes=-1)


def test_length_fit_predicts_exactly_what_it_would_measure() -> None:
    """After 4 measured lengths, unseen (batch, length) shapes are predicted, matching a measurement."""
    from engine.models import load_model

    model = load_model("tiny-bert-random", "classification", 2, 50, seed=0, pad_token_id=0)

    def step(b: int, t: int):
        ids = torch.randint(1, 50, (b, t))

        def fn():
            loss = model(input_ids=ids, labels=torch.zeros(b, dtype=torch.long)).loss
            loss.backward()

        return fn

    meter = StepCostMeter(model.parameters())
    for b, t in [(4, 5), (4, 9), (3, 12), (4, 20)]:
        meter.measure((b, t), step(b, t))
    assert meter.instrumented_steps == 4
    for b, t in [(4, 31), (2, 7), (5, 16)]:
        _, predicted = meter.measure((b, t), step(b, t))
        _, measured = StepCostMeter(model.parameters()).measure("fresh", step(b, t))
        assert predicted == measured
    assert meter.instrumented_steps == 4  # the predictions ran uninstrumented
