"""Masked mean pooling by hand, and the pooling a sentence-transformers checkpoint declares."""

from __future__ import annotations

import json

import torch

from engine.pooling import MaskedMeanPooler, declared_pooling, use_mean_pooling


def test_masked_mean_by_hand() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # [1, 3, 2]
    pooler = MaskedMeanPooler()
    pooler.mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(pooler(hidden), torch.tensor([[2.0, 3.0]]))
    pooler.mask = torch.tensor([[1, 1, 1, 1, 0]])  # prefix tuning: 2 virtual columns first
    torch.testing.assert_close(pooler(hidden), torch.tensor([[2.0, 3.0]]))
    pooler.mask = None
    torch.testing.assert_close(pooler(hidden), torch.tensor([[104 / 3, 106 / 3]]))


def test_declared_pooling(tmp_path) -> None:
    assert declared_pooling(str(tmp_path)) == "cls"
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_mean_tokens": True})
    )
    assert declared_pooling(str(tmp_path)) == "mean"


def test_mean_pooled_classifier_ignores_padding() -> None:
    from engine.models import load_model

    # tiny-bert-random keeps BERT's [CLS] pooler (pooling="cls"); swap it here by hand.
    model = load_model("tiny-bert-random", "classification", 2, 100, seed=0, pad_token_id=0).eval()
    assert use_mean_pooling(model)
    ids = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[5, 6, 7, 0, 0]])
    a = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    b = model(input_ids=padded, attention_mask=torch.tensor([[1, 1, 1, 0, 0]])).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
