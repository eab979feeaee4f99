"""Greedy samples: the decoding loop, the markdown round trip, merging runs on the same prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.data.batching import Encoded
from engine.lm.samples import (
    continue_all,
    from_markdown,
    greedy,
    merge,
    prompts,
    side_by_side,
    to_markdown,
)


def _next_is_plus_one(vocab: int = 7):
    """Logits whose argmax after token t is (t + 1) % vocab."""

    def fn(ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(ids.shape[0], ids.shape[1], vocab)
        out.scatter_(-1, ((ids + 1) % vocab).unsqueeze(-1), 1.0)
        return out

    return fn


def test_greedy_follows_the_argmax_and_returns_only_new_tokens() -> None:
    out = greedy(_next_is_plus_one(), torch.tensor([[2, 4]]), 5)
    assert out.tolist() == [[5, 6, 0, 1, 2]]


def test_prompts_are_the_first_texts_cut_to_the_prompt_length() -> None:
    ids = np.arange(20, dtype=np.int32)
    enc = Encoded(ids=ids, offsets=np.array([0, 3, 12, 20]), labels=np.zeros(3, np.int64))
    got = prompts(enc, 5, prompt_tokens=4)  # n beyond the texts: all three
    assert [p.tolist() for p in got] == [[0, 1, 2], [3, 4, 5, 6], [12, 13, 14, 15]]


def test_markdown_round_trips_quotes_colons_and_line_breaks() -> None:
    samples = [
        ("He said: 'no'", {"base": ' "yes"\nand: so', "tuned (fedavg, lora)": "x"}),
        ("second", {"base": "", "tuned (fedavg, lora)": "- y: z"}),
    ]
    text = to_markdown("run", samples)
    assert text.startswith("# Greedy samples (run)")
    assert from_markdown(text) == samples


def test_merge_puts_runs_side_by_side_and_refuses_other_prompts() -> None:
    ids = [np.array([1, 2]), np.array([3])]
    decode = lambda p: "".join(chr(97 + int(t)) for t in p)  # noqa: E731
    a = side_by_side(ids, decode, {"base large": ["u", "v"], "proxy-tuned large": ["w", "x"]})
    b = side_by_side(ids, decode, {"tuned": ["y", "z"]})
    assert merge(a, b) == [
        ("bc", {"base large": "u", "proxy-tuned large": "w", "tuned": "y"}),
        ("d", {"base large": "v", "proxy-tuned large": "x", "tuned": "z"}),
    ]
    with pytest.raises(ValueError, match="different prompts"):
        merge(a, side_by_side(ids[::-1], decode, {"tuned": ["y", "z"]}))


def test_continue_all_decodes_each_prompt_in_order() -> None:
    ids = [np.array([0]), np.array([3, 5])]
    out = continue_all(_next_is_plus_one(), ids, lambda t: t.tolist(), 3, torch.device("cpu"))
    assert out == [[1, 2, 3], [6, 0, 1]]
