"""BitFit (FedBF): only the bias terms (and the classification head) train."""

from __future__ import annotations

from typing import Literal

import torch

from engine.errors import ConfigError
from engine.methods.base import Method, MethodParams
from engine.methods.common import check_task, head_names, model_type, train_only


class BitFitParams(MethodParams):
    name: Literal["bitfit"] = "bitfit"


def _is_bias(name: str) -> bool:
    return name == "bias" or name.endswith(".bias")


def apply_bitfit(model: torch.nn.Module, task: str) -> torch.nn.Module:
    check_task(task)
    heads = tuple(f"{h}." for h in head_names(model, task))
    body_biases = [
        n for n, _ in model.named_parameters() if _is_bias(n) and not n.startswith(heads)
    ]
    if not body_biases:
        raise ConfigError(
            "method.name",
            f"bitfit trains bias terms, but {model_type(model)} has none outside its head; "
            "use lora, ia3 or adapter",
        )
    return train_only(model, task, _is_bias)


# FedPETuning: best federated BitFit learning rates 1e-3..5e-3.
METHOD = Method(name="bitfit", params_type=BitFitParams, default_lr=1e-3, apply=apply_bitfit)
