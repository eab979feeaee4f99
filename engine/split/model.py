"""Split an encoder classifier into a prompted client head, a server body and a client tail.

    head = embeddings (+ soft prompts after the first token) + the first `head_layers` blocks
    body = the middle blocks (frozen, on the server)
    tail = the last `tail_layers` blocks + pooling + the model's own classification head

Any encoder splits whose blocks form one `nn.ModuleList` of `num_hidden_layers` blocks inside its
base model (found, not listed by family) and run as `block(hidden, mask)`: BERT, RoBERTa,
XLM-RoBERTa, ELECTRA, DistilBERT, ViT and the models built like them. Blocks that also need
context their encoder computes (DeBERTa's relative positions, MPNet's position bias, ModernBERT's
rotary embeddings) or that are shared (ALBERT) are refused with the reason.

The unsplit reference is `tail(body(head(x)))`; the split path runs the same modules, only in
three places. Prompts are inserted after the [CLS] token (as in VPT), so [CLS] pooling and the
real tokens' position embeddings are unchanged.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.errors import ConfigError
from engine.methods.common import model_type
from engine.models import IMAGE_MODEL_TYPES, position_limit
from engine.pooling import MaskedMeanPooler

# Block arguments that carry context the encoder computes once for all blocks: a block that takes
# one cannot run from hidden states and a mask alone.
ENCODER_CONTEXT = ("relative_pos", "rel_embeddings", "position_bias", "position_embeddings",
                   "rotary_pos_emb", "position_ids", "sliding_window_mask")  # fmt: skip
SPLITTABLE = "BERT, RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT, ViT and encoders built like them"


@dataclass(frozen=True)
class SplitSpec:
    head_layers: int = 0
    tail_layers: int = 0
    prompt_length: int = 10


def _refuse(model: nn.Module, why: str) -> ConfigError:
    return ConfigError(
        "model.name", f"SFPrompt cannot split {model_type(model)}: {why}; it splits {SPLITTABLE}"
    )


def _base(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", model)
    if base is model:
        raise _refuse(model, "it has no base model apart from its head")
    return base


def _blocks(model: nn.Module) -> nn.ModuleList:
    """The base model's one list of num_hidden_layers blocks that each run as block(hidden, mask)."""
    base = _base(model)
    n = int(getattr(model.config, "num_hidden_layers", 0))
    found = [m for _, m in base.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n > 0]
    if not found:
        raise _refuse(model, f"no single list of its {n} blocks (are they shared or grouped?)")
    blocks = found[0]
    params = inspect.signature(blocks[0].forward).parameters
    context = [p for p in ENCODER_CONTEXT if p in params]
    if context:
        raise _refuse(model, f"its blocks also take {', '.join(context)}, computed by its encoder")
    return blocks


def depth(model: nn.Module) -> int:
    return len(_blocks(model))


def check_split(model: nn.Module, spec: SplitSpec, max_length: int | None) -> None:
    """Refuse a model that cannot be split, a split with an empty body, or prompts the model's
    positions cannot hold (checked on the driver on a meta-device skeleton: no weights)."""
    n = depth(model)
    if spec.head_layers + spec.tail_layers >= n:
        raise ConfigError(
            "split.head_layers",
            f"head_layers + tail_layers = {spec.head_layers + spec.tail_layers} >= the model's "
            f"{n} blocks leaves the server no body; lower them",
        )
    budget = position_limit(model) if model_type(model) not in IMAGE_MODEL_TYPES else None
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


class _StatesOnly(nn.Module):
    """Stands in for the base model while the classifier's own forward runs on given states."""

    def __init__(self, out) -> None:
        super().__init__()
        self.out = out

    def forward(self, *args, **kwargs):
        return self.out


class _TextFinal(nn.Module):
    """The end of an encoder classifier: its pooler (or masked mean over the real tokens) and its own
    head, run by the classifier's forward with its base model standing aside (any family's head:
    BERT's dropout + classifier, RoBERTa's or ELECTRA's classification head, DistilBERT's
    pre_classifier, ...). Only the head's modules (and the pooler) are registered here, under the
    classifier's own names (final.classifier.weight, ...)."""

    def __init__(self, model: nn.Module, base: nn.Module) -> None:
        super().__init__()
        pooler = getattr(base, "pooler", None)
        self.replaced_pooler = isinstance(pooler, MaskedMeanPooler)  # BERT's pooler -> the mean
        self.mean = self.replaced_pooler or getattr(model, "mean_pooled_states", False)
        self.pooler = None if self.replaced_pooler else pooler
        for name, module in model.named_children():  # the head, under its own names
            if module is not base:
                self.add_module(name, module)
        self.base_name = next(n for n, m in model.named_children() if m is base)
        object.__setattr__(self, "model", model)  # not a submodule: its blocks live elsewhere

    def forward(self, hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        pooled = self.pooler(hidden) if self.pooler is not None else None
        if self.mean:  # over the real tokens: where a pooler was, or every position the head reads
            m = real.to(hidden.dtype).unsqueeze(-1)
            mean = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
            if self.replaced_pooler:
                pooled = mean
            else:
                hidden = mean.unsqueeze(1).expand_as(hidden)
        out = BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)
        base = getattr(self.model, self.base_name)
        setattr(self.model, self.base_name, _StatesOnly(out))
        try:
            return self.model(input_ids=None, attention_mask=real).logits
        finally:
            setattr(self.model, self.base_name, base)


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
        blocks = _blocks(model)
        n = len(blocks)
        self.is_vit = model_type(model) in IMAGE_MODEL_TYPES
        self.embeddings = base.embeddings
        # ELECTRA projects embeddings narrower than its blocks; part of the client's head
        self.embeddings_project = getattr(base, "embeddings_project", None) or nn.Identity()
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
            hidden = self.embeddings_project(self.embeddings(input_ids=batch["input_ids"]))
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
    blocks = _blocks(model)
    n = len(blocks)
    check_split(model, spec, None)
    body = Body(nn.ModuleList(blocks[spec.head_layers : n - spec.tail_layers]))
    return ClientModel(model, spec), body


# The client's parts that come from the pretrained encoder; the rest is the prompt and the task
# head the model adds on top (classifier, DistilBERT's pre_classifier, ...), freshly initialised.
ENCODER_PREFIXES = (
    "embeddings.",
    "embeddings_project.",
    "head_blocks.",
    "tail_blocks.",
    "final.pooler.",  # BERT-style pooler (text)
    "final.layernorm.",  # ViT's final norm
)


def param_groups(client: ClientModel, encoder_lr: float | None) -> list[dict[str, Any]]:
    """The client's trainable tensors as optimizer groups: with `encoder_lr`, the pretrained encoder
    weights in a group of their own at that rate (the others take the optimizer's rate)."""
    trainable = [(n, p) for n, p in client.named_parameters() if p.requires_grad]
    if encoder_lr is None:
        return [{"params": [p for _, p in trainable]}]
    encoder = [p for n, p in trainable if n.startswith(ENCODER_PREFIXES)]
    rest = [p for n, p in trainable if not n.startswith(ENCODER_PREFIXES)]
    groups = [{"params": rest}] if rest else []
    return groups + ([{"params": encoder, "lr": encoder_lr}] if encoder else [])


def set_trainable(
    client: ClientModel, train_head: bool, train_tail: bool
) -> list[tuple[str, nn.Parameter]]:
    """Freeze the client model except prompts and the chosen parts; returns the trainable params."""
    for name, p in client.named_parameters():
        in_head = name.startswith(("embeddings.", "embeddings_project.", "head_blocks."))
        in_tail = name.startswith(("tail_blocks.", "final."))
        p.requires_grad_(name == "prompt" or (in_head and train_head) or (in_tail and train_tail))
    return [(n, p) for n, p in client.named_parameters() if p.requires_grad]
