"""Helpers the method files share: tasks, architecture families, the head, freezing, peft wrapping."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from engine.errors import ConfigError

TASKS = ("classification", "causal_lm")
# Heads of AutoModelForSequenceClassification-style models, trainable in every method.
HEAD_NAMES = ("pre_classifier", "classifier", "score")
# Model types sharing BERT's module names (attention.self.query, attention.output.dense, ...).
BERT_FAMILY = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra"})
# Model types sharing Llama's module names (self_attn.q_proj, mlp.down_proj, ...).
LLAMA_FAMILY = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"})


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")


def model_type(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "model_type", type(model).__name__))


def family(model: torch.nn.Module) -> str | None:
    """ "bert", "llama", "vit" or None for an architecture whose module names we do not know."""
    mtype = model_type(model)
    if mtype in BERT_FAMILY:
        return "bert"
    if mtype in LLAMA_FAMILY:
        return "llama"
    if mtype == "vit":
        return "vit"
    return None


def head_names(model: torch.nn.Module, task: str) -> list[str]:
    """Names of the classification head's top-level modules; [] for causal LMs."""
    if task != "classification":
        return []
    names = [n for n, _ in model.named_children() if n in HEAD_NAMES]
    if not names:
        raise ConfigError(
            "model.name",
            f"{type(model).__name__} has no classification head ({', '.join(HEAD_NAMES)}) fedray "
            "can train; use a model transformers builds with AutoModelForSequenceClassification",
        )
    return names


def train_only(model: torch.nn.Module, task: str, keep: Callable[[str], bool]) -> torch.nn.Module:
    """Make exactly the parameters whose name satisfies `keep`, plus the head, require grad."""
    heads = tuple(f"{h}." for h in head_names(model, task))
    for name, p in model.named_parameters():
        p.requires_grad_(keep(name) or name.startswith(heads))
    return model


def peft_task_type(task: str) -> Any:
    from peft import TaskType

    check_task(task)
    return TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM


def wrap_with_peft(
    model: torch.nn.Module, task: str, config_type: type, key: str, **fields: Any
) -> torch.nn.Module:
    """`get_peft_model(model, config_type(...))` with the head trainable (a peft modules_to_save copy).

    peft's own errors about the user's fields (e.g. target modules not found) become a ConfigError
    on `key`.
    """
    from peft import get_peft_model

    heads = head_names(model, task)
    if heads:
        fields["modules_to_save"] = heads
    config = config_type(task_type=peft_task_type(task), **fields)
    with warnings.catch_warnings():
        # transformers 5 deprecates an attribute peft still reads; not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        try:
            return get_peft_model(model, config)
        except ValueError as e:
            raise ConfigError(key, f"{e} (model_type {model_type(model)})") from e
