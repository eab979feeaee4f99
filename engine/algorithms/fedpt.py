"""FedPT: its config checks, and starting its server side.

A round is FedAvg's (clients LoRA-tune the small LM); then the FL server (engine/lm/server.py)
builds the proxy-tuned large LM, large + alpha * (small_tuned - small_base), from the black box's
logits and distils it into the aggregated small LM on server-side public text; what it returns is
the next round's global state. The clients' small LM is the configured one or a layer-drop emulator
of the large LM (engine/lm/small.py). On Ray the server side runs in the black box's actor, on its
device (actors/lm_server.py); in process, in the driver.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

from engine.algorithms.base import Algorithm, ServerRequest
from engine.config import RunConfig
from engine.errors import ConfigError
from engine.lm.emulator import parse_layers
from engine.lm.small import load_lm
from engine.models import TINY_MODELS, load_tokenizer, resolve_model_path


def check_fedpt(cfg: RunConfig) -> None:
    """FedPT's user errors, before anything starts (the tokenizer check needs both tokenizers)."""
    if cfg.model.task != "causal_lm":
        raise ConfigError("model.task", "fedpt tunes language models; use task: causal_lm")

    depth, budget = _shape(cfg.model.name)
    if cfg.fedpt.small_model is None:
        try:
            parse_layers(cfg.fedpt.emulator_layers, depth)
        except ValueError as exc:
            raise ConfigError("fedpt.emulator_layers", str(exc)) from None
    if budget is not None and cfg.model.max_length > budget:
        raise ConfigError(
            "model.max_length", f"{cfg.model.max_length} > the large LM's context of {budget}"
        )
    if cfg.fedpt.small_model is not None:
        check_same_tokenizer(cfg.model.name, cfg.fedpt.small_model)
    on_cpu = "the black box runs on CPUs (fedpt.server_num_gpus: 0)"
    if cfg.fedpt.server_dtype == "bf16" and not cfg.fedpt.server_num_gpus:
        raise ConfigError(
            "fedpt.server_dtype", f"bf16 needs a GPU but {on_cpu}; set it, or use auto or fp32"
        )
    if cfg.fedpt.kernel_inject and not cfg.fedpt.server_num_gpus:
        raise ConfigError(
            "fedpt.kernel_inject",
            f"DeepSpeed's kernels need a GPU but {on_cpu}; set it or turn it off",
        )


def _shape(name: str) -> tuple[int, int | None]:
    """(decoder layers, context length) from the config alone."""
    if name in TINY_MODELS:
        conf = TINY_MODELS.get(name)("causal_lm", 0, 8).config
    else:
        from transformers import AutoConfig

        conf = AutoConfig.from_pretrained(resolve_model_path(name))
    return int(conf.num_hidden_layers), getattr(conf, "max_position_embeddings", None)


def check_same_tokenizer(large: str, small: str) -> None:
    """Proxy-tuning adds logits id by id: the pair must share one vocabulary."""
    a, b = load_tokenizer(large).get_vocab(), load_tokenizer(small).get_vocab()
    if a != b:
        diff = len(set(a.items()) ^ set(b.items()))
        raise ConfigError(
            "fedpt.small_model",
            f"{small!r} and {large!r} have different vocabularies ({diff} entries differ); "
            "use a same-tokenizer pair",
        )


def start_fedpt(cfg: RunConfig, prep: Any, spec: Any, backend: Any) -> tuple[Any, Any]:
    """The FedPT server (with the black box and the clients' small LM, built first), where the
    backend hosts servers (one Ray actor on the black box's device, or this process), and the
    clients' spec on that small LM."""
    factory = partial(load_lm, cfg.model.name, cfg.seed, prep.pad_id)
    f = cfg.fedpt
    blackbox = {
        "logits_dtype": f.logits_dtype,
        "dtype": f.server_dtype,
        "kernel_inject": f.kernel_inject,
    }
    small, server = backend.hosting.fedpt_server(cfg, prep, factory, blackbox)
    return replace(spec, model_name=small), server


def fedpt_metrics(cfg: RunConfig) -> set[str]:
    """What FedPT's server evaluates beside the small LM: the proxy, the large LM, the base small
    LM, and the proxy at every alpha of fedpt.eval_alphas."""
    out: set[str] = set()
    for name in ("proxy", "large", "small_base"):
        out |= {f"eval/{name}_perplexity", f"eval/{name}_accuracy"}
    for a in cfg.fedpt.eval_alphas:
        out |= {f"eval/proxy@{a:g}_perplexity", f"eval/proxy@{a:g}_accuracy"}
    return out


FEDPT = Algorithm(
    name="fedpt",
    check=check_fedpt,
    public_text=True,
    client_model=lambda cfg: cfg.fedpt.small_model or cfg.model.name,  # else a layer-drop emulator
    server=lambda cfg: ServerRequest(
        cfg.fedpt.server_num_cpus, cfg.fedpt.server_num_gpus, "fedpt.server_num_gpus"
    ),
    start=start_fedpt,
    server_faults=True,
    metrics=fedpt_metrics,
)
