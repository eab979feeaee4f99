"""Every model-dependent config error, found on the driver before Ray starts or anything is written.

The run's client model is built on the meta device (modules and shapes, no weights) exactly as the
workers build it, its pooling applied, its positions compared with model.max_length, and its method
applied: an unsupported pooling, unknown target modules, a missing head, a task the architecture
cannot do or a length beyond its positions is a one-line ConfigError naming the key and the fix,
instead of a worker dying in its constructor.
"""

from __future__ import annotations

import torch

from engine.algorithms import get_algorithm
from engine.config import RunConfig
from engine.errors import ConfigError
from engine.methods import apply_method, get_method
from engine.models import model_skeleton, position_limit, resolve_pooling


def client_model_name(cfg: RunConfig) -> str:
    """The model the clients train (FedPT's small LM when it names one), by the algorithm."""
    return get_algorithm(cfg.algorithm).client_model(cfg)


def check_model(cfg: RunConfig, num_labels: int, vocab_size: int, pad_id: int | None) -> int | None:
    """Build the clients' model without weights and apply the run's method to it (see module doc);
    returns how many token ids its input embedding holds (None for an image model).

    SFPrompt's method section does not apply: only the skeleton is built here, and its splitter
    checks the rest (engine/algorithms/sfprompt.py: check_sfprompt)."""
    name, task = client_model_name(cfg), cfg.model.task
    if name != cfg.model.name:  # FedPT's black box is a causal LM too
        model_skeleton(cfg.model.name, task, num_labels, vocab_size, pad_id, "cls")
    pooling = resolve_pooling(name, cfg.model.pooling)
    model = model_skeleton(name, task, num_labels, vocab_size, pad_id, pooling)
    rows = _embedding_rows(model)
    if not get_algorithm(cfg.algorithm).uses_method:  # SFPrompt's splitter checks its own model
        return rows
    check_positions(model, name, cfg.model.max_length, virtual_tokens(cfg))
    prefix = int(getattr(cfg.method, "num_virtual_tokens", 0)) if cfg.method.name == "prefix" else 0
    limit = position_limit(model)
    if limit is not None and prefix > limit:  # keys/values every layer attends to, per token
        raise ConfigError(
            "method.num_virtual_tokens",
            f"a prefix of {prefix} tokens is longer than the {limit} positions {name} attends "
            f"over; use at most {limit}",
        )
    params = get_method(cfg.method.name).params_type(**cfg.method.model_dump())
    before = _numel(model)
    with torch.device("meta"):
        model = apply_method(model, task, params)
    check_size(cfg.method.name, _numel(model) - before, _numel(model))
    return rows


# The field that sizes what each method adds (a huge value allocates that much in every worker).
SIZE_FIELD = {"lora": "r", "adapter": "dim", "prefix": "num_virtual_tokens",
              "prompt": "num_virtual_tokens"}  # fmt: skip


def _numel(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def host_memory_bytes() -> int | None:
    """This machine's physical memory (None where the OS does not say)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_size(method: str, added: int, total: int, memory: int | None = None) -> None:
    """A model whose fp32 parameters alone exceed this machine's memory cannot be built by any
    worker: one line naming the method's size field, before anything starts."""
    memory = host_memory_bytes() if memory is None else memory
    if memory is not None and 4 * total > memory:
        key = f"method.{SIZE_FIELD.get(method, 'name')}"
        raise ConfigError(
            key,
            f"{method} adds {added:,} parameters: the model would hold {4 * total / 2**30:,.1f} GiB "
            f"of fp32 weights, more than this machine's {memory / 2**30:,.1f} GiB; lower it",
        )


def _embedding_rows(model: torch.nn.Module) -> int | None:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return int(embeddings.num_embeddings) if isinstance(embeddings, torch.nn.Embedding) else None


def check_token_ids(name: str, largest_id: int, rows: int | None) -> None:
    """Every token id the tokenizer produced must have a row in the model's input embedding."""
    if rows is not None and largest_id >= rows:
        raise ConfigError(
            "model.name",
            f"the tokenizer gives token id {largest_id} but {name} embeds only {rows} tokens; "
            "save the model's own tokenizer beside its weights",
        )


def virtual_tokens(cfg: RunConfig) -> int:
    """Positions a method prepends to every input (prompt tuning's soft tokens), else 0."""
    return int(getattr(cfg.method, "num_virtual_tokens", 0)) if cfg.method.name == "prompt" else 0


def check_positions(model: torch.nn.Module, name: str, max_length: int, extra: int = 0) -> None:
    limit = position_limit(model)
    if limit is not None and extra >= limit:
        raise ConfigError(
            "method.num_virtual_tokens",
            f"{extra} soft prompt tokens leave no position of the {limit} {name} can embed; "
            f"use far fewer (and model.max_length + them <= {limit})",
        )
    if limit is not None and max_length + extra > limit:
        soft = f" + {extra} soft prompt tokens" if extra else ""
        raise ConfigError(
            "model.max_length",
            f"{max_length}{soft} positions exceed the {limit} {name} can embed; "
            f"use model.max_length <= {limit - extra}",
        )
