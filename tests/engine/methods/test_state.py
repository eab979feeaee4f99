"""The `{name: ndarray}` exchange format: round trips, rejections, no aliasing, parameter counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.methods import count_parameters, load_trainable_state, trainable_state
from tests.engine.methods.test_methods import CASES, IDS
from tests.engine.methods.tiny_models import adapted, logits, train


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_round_trip_into_a_fresh_model_reproduces_the_logits(case):
    params, _, _ = CASES[case]
    arch = case[1]
    sender = adapted(arch, params, seed=1)
    train(sender, arch, steps=2, lr=1e-3)
    receiver = adapted(arch, params, seed=2)  # same frozen base, other method init
    assert not torch.equal(logits(sender, arch), logits(receiver, arch))
    state = trainable_state(sender)
    for arr in state.values():  # as Ray's object store hands them over
        arr.setflags(write=False)
    kept = {k: v.copy() for k, v in state.items()}
    load_trainable_state(receiver, state)
    assert torch.equal(logits(sender, arch), logits(receiver, arch))
    assert all(np.array_equal(state[k], kept[k]) for k in state)


def _lora_pair():
    from engine.methods import LoraParams

    return adapted("bert", LoraParams(r=2)), adapted("bert", LoraParams(r=2))


def test_load_rejects_unknown_missing_and_misshapen_tensors():
    model, _ = _lora_pair()
    state = trainable_state(model)
    name = next(iter(state))
    frozen = next(n for n, p in model.named_parameters() if not p.requires_grad)
    with pytest.raises(ValueError, match="unknown keys"):
        load_trainable_state(model, {**state, "nope.weight": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match=f"unknown keys \\['{frozen}'\\]"):
        load_trainable_state(model, {**state, frozen: np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match=f"missing keys \\['{name}'\\]"):
        load_trainable_state(model, {k: v for k, v in state.items() if k != name})
    with pytest.raises(ValueError, match="shape"):
        load_trainable_state(model, {**state, name: state[name].T.copy()})


def test_a_rejected_load_copies_nothing():
    model, _ = _lora_pair()
    state = trainable_state(model)
    name = list(state)[-1]
    bad = {k: v + 1 for k, v in state.items()}
    bad[name] = np.zeros((1, 1), np.float32)
    with pytest.raises(ValueError):
        load_trainable_state(model, bad)
    after = trainable_state(model)
    assert all(np.array_equal(after[k], state[k]) for k in state)


def test_state_is_a_copy_not_a_view_of_the_parameters():
    model, _ = _lora_pair()
    state = trainable_state(model)
    name, p = next((n, p) for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        p.add_(1.0)
    assert not np.array_equal(state[name], p.detach().numpy())


def test_bfloat16_round_trips_through_float32():
    model = torch.nn.Linear(3, 2).to(torch.bfloat16)
    state = trainable_state(model)
    assert state["weight"].dtype == np.float32
    other = torch.nn.Linear(3, 2).to(torch.bfloat16)
    load_trainable_state(other, state)
    assert torch.equal(other.weight, model.weight) and other.weight.dtype == torch.bfloat16


def test_count_parameters_by_hand():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))  # 8 + 3
    model[0].bias.requires_grad_(False)
    assert count_parameters(model) == (9, 11)
    tied = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 2, bias=False))
    tied[1].weight = tied[0].weight  # shared parameters count once
    assert count_parameters(tied) == (4, 4)
