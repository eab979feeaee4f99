"""Split an encoder classifier (BERT family, ViT) into a prompted client head, a server body and a client tail.

    head = embeddings (+ soft prompts after the first token) + the first `head_layers` blocks
    body = the middle blocks (frozen, on the server)
    tail = the last `tail_layers` blocks + final norm / pooler + classifier

The unsplit reference is `tail(body(head(x)))`; the split path runs the same modules, only in
three places. Prompts are inserted after the [CLS] token (as in VPT), so [CLS] pooling and the
real tokens' position embeddings are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine.errors import ConfigError
from engine.methods.common import BERT_FAMILY, model_type
from engine.pooling import MaskedMeanPooler

# model_type -> attribute of the base model inside the task model
_BASES = {**{t: t.replace("-", "_") for t in BERT_FAMILY}, "vit": "vit"}
_BASES["xlm-roberta"] = "roberta"
_BASES["camembert"] = "roberta"


@dataclass(frozen=True)
class SplitSpec:
    head_layers: int = 0
    tail_layers: int = 0
    prompt_length: int = 10


def supported(model: nn.Module) -> bool:
    return model_type(model) in _BASES


def depth(model: nn.Module) -> int:
    return len(_blocks(_base(model)))


def _blocks(base: nn.Module) -> nn.ModuleList:
    """The transformer blocks: BERT keeps them in encoder.layer, ViT (transformers 5) in layers."""
    encoder = getattr(base, "encoder", None)
    return encoder.layer if encoder is not None else base.layers


def _base(model: nn.Module) -> nn.Module:
    mtype = model_type(model)
    if mtype not in _BASES:
        raise ConfigError(
            "model.name",
            f"SFPrompt cannot split a {mtype!r} model; use a BERT-family or ViT classifier",
        )
    return getattr(model, _BASES[mtype])


def check_split(model: nn.Module, spec: SplitSpec, max_length: int | None) -> None:
    """Refuse a split with an empty body, or prompts the model's position budget cannot hold."""
    budget = getattr(model.config, "max_position_embeddings", None)
    check_split_shape(model_type(model), depth(model), budget, spec, max_length)


def check_split_shape(
    mtype: str, n: int, budget: int | None, spec: SplitSpec, max_length: int | None
) -> None:
    """`check_split` from the model's config alone (type, number of blocks, position budget)."""
    if mtype not in _BASES:
        raise ConfigError(
            "model.name",
            f"SFPrompt cannot split a {mtype!r} model; use a BERT-family or ViT classifier",
        )
    if spec.head_layers + spec.tail_layers >= n:
        raise ConfigError(
            "split.head_layers",
            f"head_layers + tail_layers = {spec.head_layers + spec.tail_layers} >= the model's "
            f"{n} blocks leaves the server no body; lower them",
        )
    if max_length is not None and budget is not None and max_length + spec.prompt_length > budget:
        raise ConfigError(
            "split.prompt_length",
            f"{spec.prompt_length} prompts + model.max_length {max_length} > the model's "
            f"{budget} positions; shorten one of them",
        )


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """[b, T] 1/0 mask -> [b, 1, 1, T] additive attention bias; None when nothing is masked."""
    if bool(mask.all()):
        return None
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def run_blocks(blocks: nn.ModuleList, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    bias = additive_mask(mask, hidden.dtype)
    for block in blocks:
        out = block(hidden, bias)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


class Body(nn.Module):
    """The server's part: forward(hidden [b, T, h], mask [b, T]) -> hidden [b, T, h]."""

    def __init__(self, blocks: nn.ModuleList) -> None:
        super().__init__()
        self.blocks = blocks

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.blocks, hidden, mask)


class _TextFinal(nn.Module):
    """BERT-style end: ([CLS] pooler | masked mean over real tokens) -> dropout -> classifier."""

    def __init__(self, model: nn.Module, base: nn.Module) -> None:
        super().__init__()
        pooler = getattr(base, "pooler", None)
        self.mean = isinstance(pooler, MaskedMeanPooler)
        self.pooler = None if self.mean else pooler
        self.dropout = getattr(model, "dropout", nn.Identity())
        self.classifier = model.classifier
        self.roberta_head = model_type(model) != "bert" and not hasattr(model, "dropout")

    def forward(self, hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        if self.roberta_head:  # RobertaClassificationHead pools [CLS] itself
            return self.classifier(hidden)
        if self.mean:
            m = real.to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        else:
            pooled = self.pooler(hidden)
        return self.classifier(self.dropout(pooled))


class _VitFinal(nn.Module):
    """ViT end: final layer norm -> classifier on [CLS]."""

    def __init__(self, model: nn.Module, base: nn.Module) -> None:
        super().__init__()
        self.layernorm = base.layernorm
        self.classifier = model.classifier

    def forward(self, hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layernorm(hidden)[:, 0])


class ClientModel(nn.Module):
    """What a client holds: embeddings, soft prompts, head blocks; tail blocks, final norm and classifier."""

    def __init__(self, model: nn.Module, spec: SplitSpec) -> None:
        super().__init__()
        base = _base(model)
        blocks = _blocks(base)
        n = len(blocks)
        self.is_vit = model_type(model) == "vit"
        self.embeddings = base.embeddings
        self.head_blocks = nn.ModuleList(blocks[: spec.head_layers])
        self.tail_blocks = nn.ModuleList(blocks[n - spec.tail_layers :] if spec.tail_layers else [])
        self.final = _VitFinal(model, base) if self.is_vit else _TextFinal(model, base)
        hidden = model.config.hidden_size
        self.prompt_length = spec.prompt_length
        if spec.prompt_length:
            # Initialised like the embeddings (N(0, initializer_range)), seeded by the caller.
            std = float(getattr(model.config, "initializer_range", 0.02))
            self.prompt = nn.Parameter(torch.randn(spec.prompt_length, hidden) * std)
        else:
            self.register_parameter("prompt", None)

    def head(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Client inputs -> (smashed activations [b, 1 + P + t - 1, h], mask [b, T])."""
        if self.is_vit:
            hidden = self.embeddings(batch["pixel_values"])
            mask = torch.ones(hidden.shape[:2], dtype=torch.long)
        else:
            hidden = self.embeddings(input_ids=batch["input_ids"])
            mask = batch["attention_mask"].long()
        if self.prompt is not None:
            b = hidden.shape[0]
            prompts = self.prompt.unsqueeze(0).expand(b, -1, -1)
            hidden = torch.cat([hidden[:, :1], prompts, hidden[:, 1:]], dim=1)
            ones = mask.new_ones(b, self.prompt_length)
            mask = torch.cat([mask[:, :1], ones, mask[:, 1:]], dim=1)
        return run_blocks(self.head_blocks, hidden, mask), mask

    def tail(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Body output [b, T, h] -> logits [b, num_labels]."""
        hidden = run_blocks(self.tail_blocks, hidden, mask)
        real = mask.clone()
        if self.prompt is not None:  # pooling sees the real tokens only, as without prompts
            real[:, 1 : 1 + self.prompt_length] = 0
        return self.final(hidden, real)

    def local_forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Head straight into the tail, skipping the body (the local-loss phase, scoring)."""
        return self.tail(*self.head(batch))


def split_model(model: nn.Module, spec: SplitSpec) -> tuple[ClientModel, Body]:
    """Cut `model` in three; the parts share the model's modules (no copies)."""
    base = _base(model)
    blocks = _blocks(base)
    n = len(blocks)
    check_split(model, spec, None)
    body = Body(nn.ModuleList(blocks[spec.head_layers : n - spec.tail_layers]))
    return ClientModel(model, spec), body


def set_trainable(
    client: ClientModel, train_head: bool, train_tail: bool
) -> list[tuple[str, nn.Parameter]]:
    """Freeze the client model except prompts and the chosen parts; returns the trainable params."""
    for name, p in client.named_parameters():
        in_head = name.startswith(("embeddings.", "head_blocks."))
        in_tail = name.startswith(("tail_blocks.", "final."))
        p.requires_grad_(name == "prompt" or (in_head and train_head) or (in_tail and train_tail))
    return [(n, p) for n, p in client.named_parameters() if p.requires_grad]
