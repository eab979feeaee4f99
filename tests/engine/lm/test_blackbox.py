"""The black-box LM: exact logits through DeepSpeed inference, concurrent callers batched."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from engine.ledger import deserialize_state, serialize_state
from engine.lm.blackbox import BlackBoxLM


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=256)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def _ids(b: int, t: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, size=(b, t)).astype(np.int32)


def test_logits_equal_the_models_and_padding_does_not_leak():
    ref = _llama()
    lm = BlackBoxLM(_llama())
    ids = _ids(2, 7, 0)
    mask = np.ones_like(ids)
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(ids).long()).logits.numpy()
    np.testing.assert_allclose(lm.logits(ids, mask), want, atol=1e-5)
    # a request batched with a longer one is right-padded: its own positions are unchanged
    out = lm._forward(np.concatenate([np.pad(ids, ((0, 0), (0, 3))), _ids(1, 10, 1)]),
                      np.concatenate([np.pad(mask, ((0, 0), (0, 3))), np.ones((1, 10))]))  # fmt: skip
    np.testing.assert_allclose(out[:2, :7], want, atol=1e-5)


def test_concurrent_callers_share_forwards_and_get_their_own_rows():
    lm = BlackBoxLM(_llama())
    reqs = [(_ids(1 + i % 2, 4 + i, i), None) for i in range(6)]
    solo = [lm._forward(ids, np.ones_like(ids)) for ids, _ in reqs]
    lm.forwards = 0
    out: dict[int, np.ndarray] = {}
    gate = threading.Barrier(len(reqs))

    def call(i: int) -> None:
        ids = reqs[i][0]
        gate.wait()
        out[i] = lm.logits(ids, np.ones_like(ids))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(len(reqs)):
        np.testing.assert_allclose(out[i], solo[i], atol=1e-5)
    assert 1 <= lm.forwards <= len(reqs)


def test_wire_form_round_trips_and_fp16_halves_the_bytes():
    ids = _ids(2, 5, 3)
    req = serialize_state({"ids": ids, "mask": np.ones_like(ids)})
    full = BlackBoxLM(_llama()).logits_blob(req)
    half = BlackBoxLM(_llama(), logits_dtype="fp16").logits_blob(req)
    a, b = deserialize_state(full)["logits"], deserialize_state(half)["logits"]
    assert a.dtype == np.float32 and b.dtype == np.float16 and a.shape == (2, 5, 256)
    np.testing.assert_allclose(b.astype(np.float32), a, atol=1e-2)
    assert len(half) < 0.6 * len(full)


def test_the_dtype_is_decided_on_the_black_boxs_own_device():
    assert BlackBoxLM(_llama(), dtype="auto").precision == (
        "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    )
    if not torch.cuda.is_available():  # a CPU black box: no bf16, no DeepSpeed kernels
        for kwargs in ({"dtype": "bf16"}, {"kernel_inject": True}):
            with pytest.raises(ValueError, match="need a GPU"):
                BlackBoxLM(_llama(), **kwargs)
