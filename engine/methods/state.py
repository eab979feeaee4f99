"""The exchange format of trainable tensors: `{name: ndarray}` over requires_grad parameters."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy copy of `t` that never aliases the live parameter (bf16 becomes float32)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
        return t.float().cpu().numpy()
    if t.device.type == "cpu":
        return t.numpy().copy()
    return t.cpu().numpy()


def trainable_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """`{name: array}` for every parameter that requires grad, in `named_parameters` order.

    The arrays are copies: training on after the call does not change them.
    """
    return {n: _to_numpy(p) for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Copy `state` into the model's trainable parameters in place, without mutating `state`.

    Raises ValueError when a key is not a trainable parameter, a trainable parameter is missing, or
    a shape differs; nothing is copied in those cases.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    unknown = sorted(set(state) - set(params))
    missing = sorted(set(params) - set(state))
    if unknown or missing:
        raise ValueError(
            f"trainable state does not match the model: unknown keys {unknown[:5]}"
            f"{' ...' if len(unknown) > 5 else ''}, missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}"
        )
    for name, p in params.items():
        shape = tuple(np.shape(state[name]))
        if shape != tuple(p.shape):
            raise ValueError(f"{name}: shape {shape} in the state, {tuple(p.shape)} in the model")
    with warnings.catch_warnings(), torch.no_grad():
        # Arrays from Ray's object store are read-only; we only read them, so torch's warning
        # about non-writable arrays does not apply.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        for name, p in params.items():
            src = torch.from_numpy(np.ascontiguousarray(state[name]))
            p.copy_(src.to(dtype=p.dtype, device=p.device))


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) parameters count once."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
