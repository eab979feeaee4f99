"""(IA)^3 through peft: learned per-channel scales on keys, values and feed-forward inputs."""

from __future__ import annotations

from typing import Literal

import pydantic
import torch

from engine.methods.base import Method, MethodParams
from engine.methods.common import check_task, head_names, model_type, wrap_with_peft
from engine.methods.targets import check_targets, ia3_modules, no_targets


class IA3Params(MethodParams):
    name: Literal["ia3"] = "ia3"
    # None -> peft's defaults for the model type (BERT: key, value, output.dense; Llama: k_proj,
    # v_proj, down_proj, with output.dense / down_proj as feed-forward modules); for a type peft does
    # not list, its keys, values and feed-forward output found by name (methods/targets.py).
    target_modules: list[str] | None = pydantic.Field(default=None, min_length=1)
    feedforward_modules: list[str] | None = None

    @pydantic.model_validator(mode="after")
    def _feedforward_within_targets(self) -> IA3Params:
        ff = self.feedforward_modules
        if ff is not None and self.target_modules is None:
            raise ValueError("feedforward_modules needs target_modules too")
        if ff is not None and not set(ff) <= set(self.target_modules or []):
            extra = sorted(set(ff) - set(self.target_modules or []))
            raise ValueError(f"feedforward_modules {extra} are not in target_modules")
        return self


def _peft_feedforward_default(model: torch.nn.Module) -> list[str]:
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF

    return list(FF.get(model_type(model), []))


def apply_ia3(
    model: torch.nn.Module,
    task: str,
    target_modules: list[str] | None = None,
    feedforward_modules: list[str] | None = None,
) -> torch.nn.Module:
    from peft import IA3Config

    check_task(task)
    if target_modules is not None:
        check_targets(model, target_modules, tuple(head_names(model, task)))
    if target_modules is not None and feedforward_modules is None:
        # peft would take its default feed-forward list, which need not lie within the targets.
        feedforward_modules = [m for m in _peft_feedforward_default(model) if m in target_modules]
    if target_modules is None and not _peft_feedforward_default(model):
        # peft knows no modules for this architecture: keys, values and FFN output, by name
        found = ia3_modules(model, tuple(head_names(model, task)))
        if found is None:
            raise no_targets(
                model, "keys, values and a feed-forward output", tuple(head_names(model, task))
            )
        target_modules, feedforward_modules = found
    return wrap_with_peft(
        model,
        task,
        IA3Config,
        "method.target_modules",
        target_modules=target_modules,
        feedforward_modules=feedforward_modules,
    )


# peft's (IA)^3 examples use 3e-3..1e-2; the scales start at 1 and need a larger step than LoRA.
METHOD = Method(name="ia3", params_type=IA3Params, default_lr=5e-3, apply=apply_ia3)
