"""LoRA (FedLR) through peft: low-rank updates B @ A added to chosen linear layers."""

from __future__ import annotations

from typing import Literal

import pydantic
import torch

from engine.methods.base import Method, MethodParams
from engine.methods.common import check_task, family, wrap_with_peft

# BERT: peft's own default (query, value), as in the LoRA paper and FedPETuning.
# Llama: every attention and MLP projection, the usual choice for causal LMs (QLoRA).
DEFAULT_TARGETS = {
    "bert": ["query", "value"],
    "vit": ["q_proj", "v_proj"],  # transformers 5 names ViT attention like llama
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


class LoraParams(MethodParams):
    name: Literal["lora"] = "lora"
    r: int = pydantic.Field(default=8, ge=1)
    alpha: float = pydantic.Field(default=16, gt=0)
    dropout: float = pydantic.Field(default=0.0, ge=0.0, lt=1.0)
    # None -> DEFAULT_TARGETS for the architecture, else peft's default for the model type.
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
    targets = target_modules or DEFAULT_TARGETS.get(family(model) or "")
    return wrap_with_peft(
        model,
        task,
        LoraConfig,
        "method.target_modules",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(targets) if targets else None,
    )


# FedPETuning: best federated LoRA learning rates 1e-3..5e-3.
METHOD = Method(name="lora", params_type=LoraParams, default_lr=1e-3, apply=apply_lora)
