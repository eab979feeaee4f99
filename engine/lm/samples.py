"""Greedy samples of causal LMs on a run's first held-out texts: the shared prompts, the decoding
loop and the markdown every samples.md is written in (FedPT's server writes one at the end of a run;
`fedray samples RUN_DIR` writes one for a finished federated run of a causal LM)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine.data.batching import Encoded
from engine.errors import ConfigError

PROMPT_TOKENS = 16  # every sample continues the first 16 tokens of a held-out text
Logits = Callable[[torch.Tensor], torch.Tensor]  # ids [1, t] -> logits [1, t, V]
Sample = tuple[str, dict[str, str]]  # (the prompt, each model's continuation by its name)


def prompts(test: Encoded, n: int, prompt_tokens: int = PROMPT_TOKENS) -> list[np.ndarray]:
    """The token ids of the first n held-out texts, each cut to prompt_tokens."""
    return [
        test.ids[test.offsets[r] : test.offsets[r + 1]][:prompt_tokens]
        for r in range(min(n, len(test)))
    ]


@torch.no_grad()
def greedy(next_logits: Logits, prompt: torch.Tensor, tokens: int) -> torch.Tensor:
    """Greedy continuation of prompt [1, t] for `tokens` steps (the new ids, [1, tokens])."""
    ids = prompt
    for _ in range(tokens):
        nxt = next_logits(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids[:, prompt.shape[1] :]


def continue_all(
    next_logits: Logits, ids: list[np.ndarray], decode, tokens: int, device: torch.device
) -> list[str]:
    """One model's greedy continuation of each prompt, decoded."""
    out = []
    for p in ids:
        prompt = torch.from_numpy(p.astype(np.int64))[None].to(device)
        out.append(decode(greedy(next_logits, prompt, tokens)[0].cpu()))
    return out


def side_by_side(ids: list[np.ndarray], decode, outs: dict[str, list[str]]) -> list[Sample]:
    """Samples from the prompts and each model's continuations (in the prompts' order)."""
    return [
        (decode(p), {name: texts[i] for name, texts in outs.items()}) for i, p in enumerate(ids)
    ]


def to_markdown(title: str, samples: list[Sample]) -> str:
    lines = [f"# Greedy samples ({title})", ""]
    for i, (prompt, outs) in enumerate(samples, 1):
        lines += [f"## Sample {i}", "", f"prompt: {prompt!r}", ""]
        lines += [f"- {name}: {text!r}" for name, text in outs.items()]
        lines.append("")
    return "\n".join(lines)


_PROMPT = re.compile(r"^prompt: (.*)$")
_LINE = re.compile(r"^- ([^:]+): (.*)$")


def from_markdown(text: str) -> list[Sample]:
    """The samples of a samples.md written by to_markdown (its inverse)."""
    import ast

    out: list[Sample] = []
    for line in text.splitlines():
        if m := _PROMPT.match(line):
            out.append((ast.literal_eval(m.group(1)), {}))
        elif (m := _LINE.match(line)) and out:
            out[-1][1][m.group(1)] = ast.literal_eval(m.group(2))
    return out


def merge(*runs: list[Sample]) -> list[Sample]:
    """Several runs' samples on the same prompts, side by side (the prompts must be equal)."""
    first = [p for p, _ in runs[0]]
    for other in runs[1:]:
        if [p for p, _ in other] != first:
            raise ValueError("samples to merge continue different prompts")
    return [(p, {k: v for run in runs for k, v in run[i][1].items()}) for i, p in enumerate(first)]


def run_samples(run_dir: str | Path, n: int = 2, tokens: int = 24) -> Path:
    """`fedray samples RUN_DIR`: greedy continuations of the run's first n held-out texts by the base
    and the tuned model (the last checkpoint's state), written to RUN_DIR/samples.md."""
    from engine.checkpoint import atomic_write, latest_good_checkpoint, split_state
    from engine.config import load_config
    from engine.ledger import deserialize_state
    from engine.methods import apply_method, get_method, load_trainable_state
    from engine.models import load_model, load_tokenizer
    from engine.prepare import prepare

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
    if cfg.algorithm not in ("fedavg",):
        raise ConfigError(
            "RUN_DIR", f"{run} is a {cfg.algorithm} run; FedPT writes its samples.md itself "
            "(fedpt.generate), samples here are for federated runs (algorithm: fedavg)"
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
