"""Sentence pooling for encoder classifiers: the [CLS] pooler or the masked mean a sentence encoder was trained with."""

from __future__ import annotations

import json
from pathlib import Path

import torch

POOLINGS = ("auto", "cls", "mean")


def declared_pooling(model_path: str) -> str:
    """The pooling a sentence-transformers checkpoint declares (1_Pooling/config.json), else cls."""
    cfg = Path(model_path) / "1_Pooling" / "config.json"
    if cfg.is_file():
        try:
            if json.loads(cfg.read_text()).get("pooling_mode_mean_tokens"):
                return "mean"
        except (OSError, json.JSONDecodeError):
            pass
    return "cls"


class MaskedMeanPooler(torch.nn.Module):
    """Mean of the token states where the attention mask is 1: [b, t, h] -> [b, h].

    BERT calls its pooler with hidden states only, so the encoder's forward pre-hook hands this
    module the attention mask of the current call. With prefix tuning the mask also covers the
    virtual tokens (which have no hidden states): only its last t columns are used.
    """

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    def capture(self, _module, args, kwargs):
        mask = kwargs.get("attention_mask")
        self.mask = mask if mask is not None and mask.dim() == 2 else None
        return None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        b, t, _ = hidden.shape
        mask = self.mask
        if mask is None:
            mask = hidden.new_ones(b, t)
        elif mask.shape[1] >= t:
            mask = mask[:, -t:]
        else:  # prompt tuning prepends virtual tokens the mask may not list: they count
            mask = torch.cat([mask.new_ones(b, t - mask.shape[1]), mask], dim=1)
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def use_mean_pooling(model: torch.nn.Module) -> bool:
    """Swap the [CLS] pooler of a BERT-style classifier for masked mean pooling; False if it has none."""
    for child in model.children():
        if getattr(child, "pooler", None) is not None:
            pooler = MaskedMeanPooler()
            child.pooler = pooler
            child.register_forward_pre_hook(pooler.capture, with_kwargs=True)
            return True
    return False
