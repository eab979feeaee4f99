"""Sentence pooling for classifiers: the model's own (first-token / [CLS], or a decoder's last token)
or the masked mean a sentence encoder was trained with, for any architecture."""

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


class MeanOverPositions(MaskedMeanPooler):
    """A forward hook on a base model: its last hidden states [b, t, h] become their masked mean at
    every position, so the family's own head reads the mean wherever it looks (the first token for
    RoBERTa, DeBERTa, MPNet or DistilBERT, the last real token for a decoder)."""

    def replace(self, _module, _args, _kwargs, output):
        states = output[0]
        mean = self(states).unsqueeze(1).expand_as(states)
        if isinstance(output, tuple):
            return (mean, *output[1:])
        output.last_hidden_state = mean
        return output


def use_mean_pooling(model: torch.nn.Module) -> bool:
    """Masked mean pooling for a classifier of any family.

    A pooler that takes the whole sequence (BERT's) is replaced by the mean. Otherwise the token
    states the pooler or the head reads become their mean at every position: the encoder's output
    under a Linear pooler (ALBERT's reads token 0), else the base model's output. False if the model
    has no base model apart from its head."""
    base = getattr(model, "base_model", model)
    if base is model:
        return False
    pooler = getattr(base, "pooler", None)
    if pooler is not None and not isinstance(pooler, torch.nn.Linear):  # a Linear reads token 0
        mean = MaskedMeanPooler()
        base.pooler = mean
        base.register_forward_pre_hook(mean.capture, with_kwargs=True)
        return True
    # A Linear pooler inside the base model (ALBERT's) reads the encoder's output: the mean goes there.
    states = base.encoder if pooler is not None and hasattr(base, "encoder") else base
    hook = MeanOverPositions()
    model.mean_pooled_states = (
        True  # SFPrompt's tail, which runs the head without the base, reads it
    )
    base.register_forward_pre_hook(hook.capture, with_kwargs=True)
    states.register_forward_hook(hook.replace, with_kwargs=True)
    return True
