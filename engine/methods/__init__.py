"""Fine-tuning methods (FedPETuning's PETuning modules): one file per method, registered here."""

from __future__ import annotations

from engine.methods import adapter, bitfit, full, ia3, lora, prefix, prompt
from engine.methods.adapter import AdapterParams
from engine.methods.base import (
    METHODS,
    Method,
    MethodParams,
    apply_method,
    get_method,
    learning_rate,
    method_params_union,
    register_method,
)
from engine.methods.bitfit import BitFitParams
from engine.methods.full import FullParams
from engine.methods.ia3 import IA3Params
from engine.methods.lora import LoraParams
from engine.methods.prefix import PrefixParams
from engine.methods.prompt import PromptParams
from engine.methods.state import count_parameters, load_trainable_state, trainable_state

register_method(full.METHOD)
register_method(lora.METHOD)
register_method(adapter.METHOD)
register_method(prefix.METHOD)
register_method(prompt.METHOD)
register_method(bitfit.METHOD)
register_method(ia3.METHOD)

__all__ = [
    "METHODS",
    "AdapterParams",
    "BitFitParams",
    "FullParams",
    "IA3Params",
    "LoraParams",
    "Method",
    "MethodParams",
    "PrefixParams",
    "PromptParams",
    "apply_method",
    "count_parameters",
    "get_method",
    "learning_rate",
    "load_trainable_state",
    "method_params_union",
    "register_method",
    "trainable_state",
]
