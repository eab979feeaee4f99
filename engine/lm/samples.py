"""Greedy samples of causal LMs on a run's first held-out texts: the shared prompts, the decoding
loop and the markdown every samples.md is written in (FedPT's server writes one at the end of a run;
`fedray samples RUN_DIR`, engine/run_samples.py, writes one for a finished federated causal-LM run)."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import torch

from engine.data.batching import Encoded

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
