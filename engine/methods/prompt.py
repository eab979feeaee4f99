"""Prompt tuning through peft: learned virtual-token embeddings prepended to the input.

For causal LMs peft returns logits for the virtual tokens too: `logits[:, -seq_len:]` are the
input's (peft's own loss already accounts for this).
"""

from __future__ import annotations

from typing import Literal

import pydantic
import torch

from engine.errors import ConfigError
from engine.methods.base import Method, MethodParams
from engine.methods.common import check_task, model_type, wrap_with_peft


class PromptParams(MethodParams):
    name: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = pydantic.Field(default=16, ge=1)


def apply_prompt(
    model: torch.nn.Module, task: str, num_virtual_tokens: int = 16
) -> torch.nn.Module:
    from peft import PromptTuningConfig, PromptTuningInit

    check_task(task)
    try:
        return wrap_with_peft(
            model,
            task,
            PromptTuningConfig,
            "method.name",
            num_virtual_tokens=num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.RANDOM,
        )
    except ConfigError as e:  # peft cannot size the prompt for this architecture
        raise ConfigError(
            "method.name",
            f"prompt tuning is not supported for {model_type(model)} in this peft version "
            f"({e.message}); use lora or adapter",
        ) from e


# Prompt tuning needs far larger steps than other methods (Lester et al. use 0.3 with Adafactor;
# peft's AdamW examples 1e-2..3e-2): 1e-2 with AdamW.
METHOD = Method(name="prompt", params_type=PromptParams, default_lr=1e-2, apply=apply_prompt)
