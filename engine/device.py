"""Where a worker's model lives and the precision it trains in, decided inside the process that trains."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Of each GPU's memory, the part no worker's cap hands out (allocator fragmentation, stray buffers).
HEADROOM = 0.10
# What a process holds on a GPU outside torch's caching allocator (CUDA context, kernel images):
# not covered by the allocator cap, so taken off every worker's share first.
CONTEXT_BYTES = 512 * 2**20
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def local_device() -> torch.device:
    """cuda:0 when this process sees a CUDA device, else the CPU.

    A Ray worker sees exactly the GPUs Ray assigned it (CUDA_VISIBLE_DEVICES; actors/ hides every GPU
    from a worker that asked for none), so its first visible device is its own.
    """
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def resolve_precision(
    precision: str, device: torch.device, bf16_supported: bool | None = None
) -> str:
    """Resolve auto: bf16 on a GPU that supports it, else fp32 (always fp32 on a CPU); others stay.

    `bf16_supported`: the device's answer (torch.cuda.is_bf16_supported() when None and on CUDA).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return "bf16" if bf16_supported else "fp32"


def memory_cap(share: float, gpu_bytes: int) -> float | None:
    """The fraction of a GPU's memory a worker given `share` of it may allocate (None: no cap).

    A whole GPU (or none) is not capped; a fraction f gets f x (1 - HEADROOM) of the memory less
    one CUDA context, so the workers sharing a GPU together stay below it and one that outgrows its
    share fails alone (torch.cuda.OutOfMemoryError in its own task) instead of its neighbours.
    """
    if not 0 < share < 1:
        return None
    return max(share * (1 - HEADROOM) - CONTEXT_BYTES / gpu_bytes, 0.0)


def cap_gpu_memory(share: float) -> float | None:
    """Apply memory_cap to this process's GPU (a no-op without CUDA); returns the fraction set."""
    if not torch.cuda.is_available():
        return None
    cap = memory_cap(share, device_total_bytes(torch.device("cuda", 0)))
    if cap is not None:
        torch.cuda.set_per_process_memory_fraction(cap, 0)
    return cap


def device_total_bytes(device: torch.device) -> int | None:
    """The memory of the GPU `device` (None on the CPU)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(device).total_memory)


def device_peak_bytes(device: torch.device) -> int | None:
    """The most memory torch allocated on `device` since the last reset (None on the CPU)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.max_memory_allocated(device))


@dataclass(frozen=True)
class Placement:
    """A resolved device and precision: forward passes run under `autocast()`, fp16 steps through `scaler`.

    Weights, gradients and optimizer state stay fp32 (autocast computes in the low precision), so
    the trainable state a client uploads has the same dtype and bytes whatever the precision.
    """

    device: torch.device
    precision: str  # fp32, bf16 or fp16 (never auto)

    @classmethod
    def here(cls, precision: str) -> Placement:
        device = local_device()
        return cls(device, resolve_precision(precision, device))

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that scales only for fp16 (bf16 and fp32 need none: it passes through)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch on this device (host -> GPU copies are non-blocking; a no-op on the CPU)."""
        if self.device.type == "cpu":
            return batch
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


CPU_FP32 = Placement(torch.device("cpu"), "fp32")
