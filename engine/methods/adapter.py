"""Houlsby bottleneck adapters (FedAP), our own module since peft has none.

An adapter h -> h + up(act(down(h))) follows the attention output projection and the FFN output
projection of every layer, before the residual add and LayerNorm. `up` starts at zero, so the
adapted model computes exactly what the base model computes until it trains.
"""

from __future__ import annotations

from typing import Literal

import pydantic
import torch
from torch import nn

from engine.errors import ConfigError
from engine.methods.base import Method, MethodParams
from engine.methods.common import check_task, head_names, model_type, train_only
from engine.methods.targets import adapter_positions, is_linear, linear_leaves, matches, no_targets

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


class AdapterParams(MethodParams):
    name: Literal["adapter"] = "adapter"
    dim: int = pydantic.Field(default=16, ge=1)  # bottleneck size
    activation: Literal["gelu", "relu", "silu", "tanh"] = "gelu"
    # None -> the attention and feed-forward output projections, found by name (methods/targets.py);
    # names match as dotted suffixes of module names.
    target_modules: list[str] | None = pydantic.Field(default=None, min_length=1)


class Bottleneck(nn.Module):
    """x + up(act(down(x))): hidden -> dim -> hidden, with `up` zero-initialised."""

    def __init__(self, hidden: int, dim: int, activation: str, like: torch.Tensor) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, dim, device=like.device, dtype=like.dtype)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(dim, hidden, device=like.device, dtype=like.dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., hidden)
        return x + self.up(self.act(self.down(x)))


class AdaptedLinear(nn.Module):
    """A frozen projection followed by its adapter; `base` keeps the original Linear."""

    def __init__(self, base: nn.Linear, dim: int, activation: str) -> None:
        super().__init__()
        self.base = base
        out = base.out_features if isinstance(base, nn.Linear) else base.nf  # GPT-2's Conv1D
        self.adapter = Bottleneck(out, dim, activation, base.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


def _targets(model: nn.Module, task: str, suffixes: list[str]) -> list[str]:
    heads = tuple(head_names(model, task))
    return [
        n
        for n, m in model.named_modules()
        if is_linear(m) and any(matches(n, s) for s in suffixes) and n.split(".")[0] not in heads
    ]


def apply_adapter(
    model: nn.Module,
    task: str,
    dim: int = 16,
    activation: str = "gelu",
    target_modules: list[str] | None = None,
) -> nn.Module:
    check_task(task)
    skip = tuple(head_names(model, task))
    suffixes = target_modules or adapter_positions(model, skip)
    if not suffixes:
        raise no_targets(model, "attention and feed-forward output projections", skip)
    names = _targets(model, task, list(suffixes))
    if not names:
        raise ConfigError(
            "method.target_modules",
            f"no linear module of {model_type(model)} matches {suffixes}; its linear modules: "
            f"{', '.join(linear_leaves(model, skip))}",
        )
    for name in names:  # named_modules order, so the adapters' init draws are deterministic
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, AdaptedLinear(getattr(parent, child), dim, activation))
    prefixes = tuple(f"{n}.adapter." for n in names)
    return train_only(model, task, lambda n: n.startswith(prefixes))


# FedPETuning: best federated adapter learning rates 5e-4..1e-3.
METHOD = Method(name="adapter", params_type=AdapterParams, default_lr=1e-3, apply=apply_adapter)
