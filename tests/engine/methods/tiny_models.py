"""Tiny seeded BERT classifiers and Llama causal LMs, a fixed batch and a training loop for tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

from engine.methods import MethodParams, apply_method  # noqa: E402

VOCAB = 256
NUM_LABELS = 3
HIDDEN = 64
HEAD = HIDDEN * NUM_LABELS + NUM_LABELS  # BERT classifier weight + bias = 195
TASKS = {"bert": "classification", "llama": "causal_lm"}


def base_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A freshly built tiny model; the same seed gives the same weights. Dropout off."""
    torch.manual_seed(seed)
    if arch == "bert":
        config = BertConfig(
            num_hidden_layers=2,
            hidden_size=HIDDEN,
            num_attention_heads=2,
            intermediate_size=128,
            vocab_size=VOCAB,
            num_labels=NUM_LABELS,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        return BertForSequenceClassification(config)
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
    )
    return LlamaForCausalLM(config)


def adapted(arch: str, params: MethodParams, seed: int = 0, base_seed: int = 0) -> torch.nn.Module:
    """`params` applied to a fresh tiny model, with torch seeded to `seed` before the apply."""
    model = base_model(arch, base_seed)
    torch.manual_seed(seed)
    return apply_method(model, TASKS[arch], params)


def batch(arch: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(4, VOCAB, (4, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0  # one padded row, so the mask handling is exercised
    labels = torch.tensor([0, 1, 2, 1]) if arch == "bert" else ids
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train(model: torch.nn.Module, arch: str, steps: int, lr: float) -> list[float]:
    """`steps` Adam steps on the fixed batch; the losses before each step."""
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**batch(arch)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def logits(model: torch.nn.Module, arch: str) -> torch.Tensor:
    model.eval()
    b = batch(arch)
    with torch.no_grad():
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
