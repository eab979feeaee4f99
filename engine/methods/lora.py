"""LoRA (FedLR) through peft: low-rank updates B @ A added to chosen linear layers."""

from __future__ import annotations

from typing import Literal

import pydantic
import torch

from engine.methods.base import Method, MethodParams
from engine.methods.common import check_task, family, head_names, wrap_with_peft
from engine.methods.targets import attention_query_value, check_targets, no_targets

# Llama's family: every attention and MLP projection, the usual choice for causal LMs (QLoRA).
# Every other architecture: the attention's query and value projections, as in the LoRA paper and
# FedPETuning, found by their names (engine/methods/targets.py).
DEFAULT_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


class LoraParams(MethodParams):
    name: Literal["lora"] = "lora"
    r: int = pydantic.Field(default=8, ge=1)
    alpha: float = pydantic.Field(default=16, gt=0)
    dropout: float = pydantic.Field(default=0.0, ge=0.0, lt=1.0)
    # None -> DEFAULT_TARGETS for the architecture, else its attention's query and value projections.
    target_modules: list[str] | None = pydantic.Field(default=None, min_length=1)


def apply_lora(
    model: torch.nn.Module,
    task: str,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    target_modules: list[str] | None = None,
) -> torch.nn.Module:
    from peft import LoraConfig

    check_task(task)
    skip = tuple(head_names(model, task))
    if target_modules:
        check_targets(model, target_modules, skip)
    targets = target_modules or DEFAULT_TARGETS.get(family(model) or "")
    if not targets:
        targets = attention_query_value(model, skip)
        if targets is None:
            raise no_targets(model, "attention query / value projections", skip)
    return wrap_with_peft(
        model,
        task,
        LoraConfig,
        "method.target_modules",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
    )


# FedPETuning: best federated LoRA learning rates 1e-3..5e-3.
METHOD = Method(name="lora", params_type=LoraParams, default_lr=1e-3, apply=apply_lora)
