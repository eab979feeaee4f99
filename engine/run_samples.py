"""`fedray samples RUN_DIR`: greedy samples of a finished federated causal-LM run's base and tuned
model on the run's first held-out texts (the prompts FedPT's samples.md continues)."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.algorithms import get_algorithm, supporting
from engine.checkpoint import atomic_write, latest_good_checkpoint, split_state
from engine.config import load_config
from engine.errors import ConfigError
from engine.ledger import deserialize_state
from engine.lm.samples import continue_all, prompts, side_by_side, to_markdown
from engine.methods import apply_method, get_method, load_trainable_state
from engine.models import load_model, load_tokenizer
from engine.prepare import prepare


def run_samples(run_dir: str | Path, n: int = 2, tokens: int = 24) -> Path:
    """`fedray samples RUN_DIR`: greedy continuations of the run's first n held-out texts by the base
    and the tuned model (the last checkpoint's state), written to RUN_DIR/samples.md."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise ConfigError("RUN_DIR", f"{run} holds no config.yaml; give a fedray run directory")
    if n < 1 or tokens < 1:
        raise ConfigError("--n/--tokens", "give at least one prompt and one token")
    cfg = load_config(run / "config.yaml")
    if cfg.model.task != "causal_lm":
        raise ConfigError(
            "RUN_DIR", f"{run} trained a {cfg.model.task} model; samples need causal_lm"
        )
    if not get_algorithm(cfg.algorithm).samples:
        raise ConfigError(
            "RUN_DIR", f"{run} is a {cfg.algorithm} run; FedPT writes its samples.md itself "
            f"(fedpt.generate), samples here are for {', '.join(supporting('samples'))} runs"
        )  # fmt: skip
    found = latest_good_checkpoint(run / "checkpoints")
    if found is None:
        raise ConfigError("RUN_DIR", f"{run} has no checkpoint yet; run or resume it first")
    state = deserialize_state(split_state(found[1])[0])
    prep = prepare(cfg)
    tok, cpu = load_tokenizer(cfg.model.name), torch.device("cpu")
    ids = prompts(prep.test, n)

    def build() -> torch.nn.Module:
        return load_model(cfg.model.name, "causal_lm", 0, prep.vocab_size, cfg.seed, prep.pad_id)

    outs = {}
    model = build().eval()  # one model in memory at a time: the base, then the tuned one
    outs["base"] = continue_all(lambda x: model(input_ids=x).logits, ids, tok.decode, tokens, cpu)
    del model
    params = get_method(cfg.method.name).params_type(**cfg.method.model_dump())
    torch.manual_seed(cfg.seed)
    model = apply_method(build(), "causal_lm", params).eval()
    load_trainable_state(model, state)
    name = f"tuned ({cfg.algorithm}, {cfg.method.name})"
    outs[name] = continue_all(lambda x: model(input_ids=x).logits, ids, tok.decode, tokens, cpu)
    samples = side_by_side(ids, tok.decode, outs)
    path = run / "samples.md"
    atomic_write(path, to_markdown(cfg.name, samples))
    return path
