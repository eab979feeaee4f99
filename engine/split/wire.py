"""What crosses the split: tensors packed into serialized payloads (optionally fp16) and back."""

from __future__ import annotations

import numpy as np
import torch

from engine.ledger import deserialize_state, serialize_state

COMPRESSIONS = ("none", "fp16")


def pack(compress: str, **tensors: torch.Tensor) -> bytes:
    """Serialize float tensors (cast to fp16 when compress == "fp16") and integer masks as int8."""
    if compress not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compress!r}; use one of {', '.join(COMPRESSIONS)}")
    out: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        t = t.detach()
        if t.is_floating_point():
            t = t.to(torch.float16 if compress == "fp16" else torch.float32)
        else:  # attention masks are 0/1
            t = t.to(torch.int8)
        out[name] = t.cpu().numpy()
    return serialize_state(out)


def unpack(blob: bytes) -> dict[str, torch.Tensor]:
    """Inverse of `pack`: float tensors come back as float32, masks as int64."""
    out = {}
    for name, a in deserialize_state(blob).items():
        t = torch.from_numpy(a)
        out[name] = t.float() if t.is_floating_point() else t.long()
    return out
