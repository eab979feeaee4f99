"""Default target modules for any architecture, derived from the model's own module names.

LoRA's default (as in the LoRA paper and FedPETuning) is the attention's query and value
projections, whatever a family calls them (query/value, q/v, q_proj/v_proj, q_lin/v_lin,
query_proj/value_proj), or its fused query-key-value projection (c_attn, Wqkv, qkv, ...) where it
has no separate ones. Adapters follow the attention's output projection and the feed-forward
output projection; (IA)^3 scales keys, values and the feed-forward output. When nothing matches,
the error lists the linear modules the model has.
"""

from __future__ import annotations

import torch

from engine.errors import ConfigError

QUERY = ("query", "q", "q_proj", "q_lin", "query_proj")
VALUE = ("value", "v", "v_proj", "v_lin", "value_proj")
KEY = ("key", "k", "k_proj", "k_lin", "key_proj")
FUSED_QKV = ("c_attn", "Wqkv", "qkv", "qkv_proj", "query_key_value", "W_pack", "in_proj")
# Dotted suffixes of the attention's output projection and of the feed-forward output projection
# (BERT's `output.dense` also matches its `attention.output.dense`, as peft's (IA)^3 default does).
ATTENTION_OUT = ("attention.output.dense", "attention.dense", "o_proj", "out_lin", "attn.o",
                 "attn.Wo", "attn.c_proj", "self_attn.out_proj")  # fmt: skip
FFN_OUT = ("output.dense", "down_proj", "lin2", "ffn_output", "mlp.Wo", "mlp.c_proj", "fc2",
           "dense_4h_to_h")  # fmt: skip
LINEAR_TYPES = ("Linear", "Conv1D")  # torch's and GPT-2's (transformers.pytorch_utils.Conv1D)


def linear_leaves(model: torch.nn.Module, skip: tuple[str, ...] = ()) -> list[str]:
    """The distinct last names of the model's linear modules (outside the top-level `skip` ones)."""
    seen: dict[str, None] = {}
    for name, module in model.named_modules():
        if is_linear(module) and name.split(".")[0] not in skip:
            seen.setdefault(name.rsplit(".", 1)[-1], None)
    return list(seen)


def is_linear(module: torch.nn.Module) -> bool:
    return type(module).__name__ in LINEAR_TYPES


def matches(name: str, suffix: str) -> bool:
    """peft's and the adapter's rule: a module is named by its name or its last dotted parts."""
    return name == suffix or name.endswith("." + suffix)


def present(
    model: torch.nn.Module, suffixes: tuple[str, ...], skip: tuple[str, ...] = ()
) -> list[str]:
    """The suffixes that name at least one linear module (outside the top-level `skip` ones)."""
    names = [n for n, m in model.named_modules() if is_linear(m) and n.split(".")[0] not in skip]
    return [s for s in suffixes if any(matches(n, s) for n in names)]


def adapter_positions(model: torch.nn.Module, skip: tuple[str, ...] = ()) -> list[str] | None:
    """The attention output and feed-forward output projections (both must exist), else None."""
    attention, ffn = present(model, ATTENTION_OUT, skip), present(model, FFN_OUT, skip)
    return [*attention, *ffn] if attention and ffn else None


def ia3_modules(
    model: torch.nn.Module, skip: tuple[str, ...] = ()
) -> tuple[list[str], list[str]] | None:
    """(target_modules, feedforward_modules) for (IA)^3: keys, values (or the fused projection)
    and the feed-forward output, which (IA)^3 scales on its input; None if any is missing."""
    leaves, ffn = linear_leaves(model, skip), present(model, FFN_OUT, skip)
    k, v = [n for n in KEY if n in leaves], [n for n in VALUE if n in leaves]
    attention = [k[0], v[0]] if k and v else [n for n in FUSED_QKV if n in leaves][:1]
    return ([*attention, *ffn], ffn) if attention and ffn else None


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
    missing = [t for t in targets if not any(matches(n, t) for n in names)]
    if missing:
        mtype = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ConfigError(
            "method.target_modules",
            f"{missing} match no module of {mtype}; its linear modules: "
            f"{', '.join(linear_leaves(model, skip)) or 'none'}",
        )
