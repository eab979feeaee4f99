"""The layer-drop emulator of a causal LM (Offsite-Tuning): layer selection, the cut, distillation."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence

import torch

from engine.lm.proxy import kd_loss

_TOKEN = re.compile(r"(first|last|every)(\d+)|(\d+)")
TRAINABLE = ("layers", "all")


def parse_layers(spec: str | Sequence[int], depth: int) -> list[int]:
    """The sorted decoder-layer indices a spec selects out of `depth` layers.

    A spec is a list of indices or a string of `+`/`,`-joined parts: `firstN`, `lastN`,
    `everyN` (layers 0, N, 2N, ...) or an index, e.g. "first2+last2", "every3", "0,1,28,29".
    Out-of-range indices, a layer selected twice and an empty selection are ValueErrors.
    """
    if depth < 1:
        raise ValueError(f"a model needs at least 1 layer to select from (depth {depth})")
    chosen = _parse_string(spec, depth) if isinstance(spec, str) else _check_ints(spec)
    if not chosen:
        raise ValueError(f"layer spec {spec!r} selects no layer")
    for i in chosen:
        if not 0 <= i < depth:
            raise ValueError(
                f"layer {i} out of range for a model with {depth} layers (0..{depth - 1})"
            )
    seen: set[int] = set()
    for i in chosen:
        if i in seen:
            raise ValueError(f"layer {i} selected twice by {spec!r} (depth {depth})")
        seen.add(i)
    return sorted(chosen)


def _check_ints(spec: Sequence[int]) -> list[int]:
    out = []
    for i in spec:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ValueError(f"layer indices must be ints, got {i!r} in {list(spec)!r}")
        out.append(int(i))
    return out


def _parse_string(spec: str, depth: int) -> list[int]:
    out: list[int] = []
    for part in re.split(r"[+,]", spec.strip().lower()):
        m = _TOKEN.fullmatch(part.strip())
        if m is None:
            raise ValueError(
                f"cannot parse {part.strip()!r} in layer spec {spec!r}: use firstN, lastN, everyN "
                "or layer indices, joined by + or , (e.g. first2+last2, every3, 0,1,28,29)"
            )
        kind, n = m.group(1), int(m.group(2) or m.group(3))
        if kind is None:
            out.append(n)
            continue
        if not 1 <= n <= depth:
            raise ValueError(f"{part.strip()!r} in {spec!r}: N must be in 1..{depth}")
        if kind == "first":
            out.extend(range(n))
        elif kind == "last":
            out.extend(range(depth - n, depth))
        else:
            out.extend(range(0, depth, n))
    return out


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layer list of a Llama-like causal LM (`model.model.layers`)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__} has no model.layers: layer_drop supports Llama-like causal "
            "LMs (Llama, Mistral, Qwen2, SmolLM, ...)"
        )
    return layers


def layer_drop(model: torch.nn.Module, keep: Sequence[int] | str) -> torch.nn.Module:
    """A new model (deep copy) that keeps only the decoder layers `keep`, in order.

    Embeddings, final norm and head are copied unchanged; config.num_hidden_layers (and
    layer_types, where present) follow the cut; attention layer_idx are renumbered 0..k-1 so a
    KV cache of k layers works. The source model is neither modified nor shared with the copy.
    """
    full = decoder_layers(model)
    keep = parse_layers(keep, len(full))
    # Pre-filling the memo with the dropped layers makes deepcopy skip them (no copy, no memory).
    memo: dict[int, object] = {id(layer): layer for i, layer in enumerate(full) if i not in keep}
    small = copy.deepcopy(model, memo)
    kept = [decoder_layers(small)[i] for i in keep]
    small.model.layers = torch.nn.ModuleList(kept)
    cfg = small.config
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None and len(layer_types) == len(full):
        cfg.layer_types = [layer_types[i] for i in keep]
    cfg.num_hidden_layers = len(keep)
    cfg.emulator_layers = list(keep)  # provenance, saved with the config
    for new_idx, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    return small


def distill_emulator(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    batches: list[torch.Tensor],
    steps: int,
    lr: float,
    temperature: float,
    seed: int,
    trainable: str = "layers",
    optimizer: torch.optim.Optimizer | None = None,
    start: int = 0,
) -> list[float]:
    """Train `student` in place towards `teacher`'s next-token distribution; the loss per step.

    Loss: T^2 * KL(teacher || student) at temperature T over every position of a batch of token
    ids [b, t] (no padding). AdamW, batches visited in a seeded random order per epoch. By
    default only the student's decoder layers train (embeddings, norm and head stay equal to the
    teacher's); trainable="all" trains every parameter. Deterministic given `seed`.
    `optimizer` (over those parameters) continues an earlier run; default a fresh AdamW(lr).
    `start` continues a run of the same batches and seed that stopped after `start` steps (with its
    optimizer): steps start..steps-1 see the batches a fresh run of `steps` steps would (exact for a
    dropout-free student such as a llama-family emulator).
    """
    if trainable not in TRAINABLE:
        raise ValueError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
    if not batches:
        raise ValueError("distill_emulator needs at least one batch")
    if not 0 <= start <= steps:
        raise ValueError(f"need 0 <= start <= steps, got start={start}, steps={steps}")
    params = _select_trainable(student, trainable)
    flags = {id(p): p.requires_grad for p in student.parameters()}
    modes = (student.training, teacher.training)
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    opt = optimizer if optimizer is not None else torch.optim.AdamW(params, lr=lr)
    losses: list[float] = []
    student.train()
    teacher.eval()
    try:
        with torch.random.fork_rng(devices=[]):  # any dropout draws from `seed`, not global state
            torch.manual_seed(seed)
            for step, ids in enumerate(_batch_order(batches, steps, gen)):
                if step < start:
                    continue  # drawn only to keep the order of a run that starts at 0
                with torch.no_grad():
                    target = teacher(input_ids=ids).logits  # [b, t, V]
                loss = kd_loss(student(input_ids=ids).logits, target, temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
    finally:
        for p in student.parameters():
            p.requires_grad_(flags[id(p)])
        student.train(modes[0])
        teacher.train(modes[1])
    return losses


def _select_trainable(student: torch.nn.Module, trainable: str) -> list[torch.nn.Parameter]:
    if trainable == "all":
        return list(student.parameters())
    return list(decoder_layers(student).parameters())


def _batch_order(
    batches: list[torch.Tensor], steps: int, gen: torch.Generator
) -> Iterator[torch.Tensor]:
    """`steps` batches: each epoch a fresh seeded permutation of `batches`."""
    order: list[int] = []
    for _ in range(steps):
        if not order:
            order = torch.randperm(len(batches), generator=gen).tolist()
        yield batches[order.pop()]
