"""SFPrompt from config: the client plan, the server spec, the up-front checks and the body builder.

The round itself is the shared one (engine.rounds.run_round): clients prune, train locally
and train through the server body, then their prompts/tail are averaged. What differs lives in the
client runtime (engine.split.client) and in the body server (engine.split.server, actors.body_server).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import torch

from engine.algorithms.base import Algorithm, ServerRequest
from engine.client import WorkerSpec, load_base
from engine.config import RunConfig
from engine.errors import ConfigError
from engine.models import model_skeleton, resolve_pooling
from engine.split.client import SplitPlan
from engine.split.model import Body, SplitSpec, check_split, split_model
from engine.split.server import ServerSpec

# Prompts and a freshly initialised classifier learn at prompt-tuning rates (FedPETuning's
# prompt default); a trainable head or tail block is fine at it with AdamW and clipping.
DEFAULT_LR = 1e-2


def split_plan(cfg: RunConfig) -> SplitPlan:
    s, p = cfg.split, cfg.pruning
    return SplitPlan(
        head_layers=s.head_layers,
        tail_layers=s.tail_layers,
        prompt_length=s.prompt_length,
        train_head=s.train_head,
        train_tail=s.train_tail,
        compress=s.compress,
        prune=p.enabled,
        keep_ratio=p.keep_ratio,
        score=p.score,
        per_class=p.per_class,
        score_with=p.score_with,
        local_loss=cfg.local_loss.enabled,
        local_epochs=cfg.local_loss.epochs,
        split_training=s.split_training,
        body_trains=cfg.server.train_body,
        encoder_lr=s.encoder_lr,
    )


def server_spec(cfg: RunConfig) -> ServerSpec:
    v = cfg.server
    return ServerSpec(
        zero_stage=v.zero_stage, train_body=v.train_body, lr=v.lr, dtype=v.dtype, seed=cfg.seed
    )


def check_sfprompt(cfg: RunConfig) -> None:
    """Every SFPrompt-specific user error, from the model's config alone (no weights loaded)."""
    if cfg.model.task != "classification":
        raise ConfigError("model.task", "sfprompt splits a classifier; use task: classification")
    s = cfg.split
    if not (s.prompt_length or s.train_head or s.train_tail or cfg.server.train_body):
        raise ConfigError(
            "split.prompt_length", "nothing would train; set prompts, train_tail or train_head"
        )
    if cfg.train.precision not in ("auto", "fp32"):  # the split client trains in fp32 on its CPU
        raise ConfigError(
            "train.precision",
            f"{cfg.train.precision} is not available to sfprompt's split client yet; use auto or fp32",
        )
    if cfg.server.dtype == "bf16" and not cfg.server.num_gpus:
        raise ConfigError(
            "server.dtype",
            "bf16 needs the body server on a GPU: set server.num_gpus (e.g. 1), or use auto "
            "(bf16 wherever the server's GPU supports it) or fp32",
        )
    spec = SplitSpec(s.head_layers, s.tail_layers, s.prompt_length)
    check_split(split_skeleton(cfg), spec, cfg.model.max_length)


def split_skeleton(cfg: RunConfig) -> torch.nn.Module:
    """The model SFPrompt splits, on the meta device (no weights), pooled as the run asks."""
    name = cfg.model.name
    return model_skeleton(name, "classification", 2, 8, 0, resolve_pooling(name, cfg.model.pooling))


def build_body(spec: WorkerSpec, plan: SplitPlan) -> Body:
    """The server's part of the model: the same weights the clients' parts were cut from."""
    model = load_base(spec)
    _client, body = split_model(model, plan.split_spec())
    return body


def with_plan(spec: WorkerSpec, plan: SplitPlan) -> WorkerSpec:
    return replace(spec, split=plan)


def start_sfprompt(cfg: RunConfig, prep: Any, spec: WorkerSpec, backend: Any):
    """The body server, where the backend hosts servers, and the clients' spec with the split plan."""
    plan = split_plan(cfg)
    spec = with_plan(spec, plan)
    return spec, backend.hosting.body_server(partial(build_body, spec, plan), server_spec(cfg), cfg)


def split_label(cfg: RunConfig) -> str:
    """What trains where (e.g. prompt10+tail, head+tail+body): SFPrompt's method column."""
    s = cfg.split
    parts = [f"prompt{s.prompt_length}"] if s.prompt_length else []
    parts += [name for name, on in (("head", s.train_head), ("tail", s.train_tail)) if on]
    if cfg.server.train_body:
        parts.append("body")
    return "+".join(parts)


SFPROMPT = Algorithm(
    name="sfprompt",
    check=check_sfprompt,
    uses_method=False,  # prompts, head and tail train at SFPrompt's own rate
    default_lr=DEFAULT_LR,
    partial_work=False,  # its steps also wait on the body server
    packs_gpus=False,  # the split client stays on the CPU for now
    server=lambda cfg: ServerRequest(cfg.server.num_cpus, cfg.server.num_gpus, "server.num_gpus"),
    start=start_sfprompt,
    server_faults=True,
    label=split_label,
)
