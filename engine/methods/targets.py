"""Default target modules for any architecture, derived from the model's own module names.

LoRA's default (as in the LoRA paper and FedPETuning) is the attention's query and value
projections, whatever a family calls them (query/value, q/v, q_proj/v_proj, q_lin/v_lin,
query_proj/value_proj), or its fused query-key-value projection (c_attn, Wqkv, qkv, ...) where it
has no separate ones. When nothing matches, the error lists the linear modules the model has.
"""

from __future__ import annotations

import torch

from engine.errors import ConfigError

QUERY = ("query", "q", "q_proj", "q_lin", "query_proj")
VALUE = ("value", "v", "v_proj", "v_lin", "value_proj")
FUSED_QKV = ("c_attn", "Wqkv", "qkv", "qkv_proj", "query_key_value", "W_pack", "in_proj")
LINEAR_TYPES = ("Linear", "Conv1D")  # torch's and GPT-2's (transformers.pytorch_utils.Conv1D)


def linear_leaves(model: torch.nn.Module, skip: tuple[str, ...] = ()) -> list[str]:
    """The distinct last names of the model's linear modules (outside the top-level `skip` ones)."""
    seen: dict[str, None] = {}
    for name, module in model.named_modules():
        if type(module).__name__ in LINEAR_TYPES and name.split(".")[0] not in skip:
            seen.setdefault(name.rsplit(".", 1)[-1], None)
    return list(seen)


def attention_query_value(model: torch.nn.Module, skip: tuple[str, ...] = ()) -> list[str] | None:
    """The names of the attention's query and value projections (or its fused one); None if none."""
    leaves = linear_leaves(model, skip)
    q = [n for n in QUERY if n in leaves]
    v = [n for n in VALUE if n in leaves]
    if q and v:
        return [q[0], v[0]]
    fused = [n for n in FUSED_QKV if n in leaves]
    return fused[:1] or None


def no_targets(model: torch.nn.Module, what: str, skip: tuple[str, ...] = ()) -> ConfigError:
    """The one-line error when no default target matches: which linear modules exist."""
    mtype = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    leaves = ", ".join(linear_leaves(model, skip)) or "none"
    return ConfigError(
        "method.target_modules",
        f"{mtype} has no module fedray recognises as {what}; set target_modules to some of its "
        f"linear modules: {leaves}",
    )


def check_targets(model: torch.nn.Module, targets: list[str], skip: tuple[str, ...] = ()) -> None:
    """Every name in a user's target_modules must name some module (peft's rule: the module's name
    or its last dotted parts); those that do not are one line listing the linear modules."""
    names = [n for n, _ in model.named_modules() if n and n.split(".")[0] not in skip]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        mtype = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ConfigError(
            "method.target_modules",
            f"{missing} match no module of {mtype}; its linear modules: "
            f"{', '.join(linear_leaves(model, skip)) or 'none'}",
        )
