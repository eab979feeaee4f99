"""Full fine-tuning (FedFT): every parameter of the model trains."""

from __future__ import annotations

from typing import Literal

import torch

from engine.methods.base import Method, MethodParams
from engine.methods.common import check_task


class FullParams(MethodParams):
    name: Literal["full"] = "full"


def apply_full(model: torch.nn.Module, task: str) -> torch.nn.Module:
    check_task(task)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


# FedPETuning's best federated learning rate for full fine-tuning.
METHOD = Method(name="full", params_type=FullParams, default_lr=5e-5, apply=apply_full)
