"""`resources.client_num_gpus: auto`: how many client workers share a GPU, from measured memory.

Before the pool starts, a probe task with a whole GPU builds the client model and trains one step
on the largest batch a client can draw (engine.client.ClientRuntime.probe_memory); the workers per
GPU follow from that peak, with headroom, and every worker is then capped at its share
(engine.device.memory_cap) so one that outgrows it fails alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ray
import torch
from ray.exceptions import GetTimeoutError, RayTaskError

from engine.client import MemoryProbe, WorkerSpec
from engine.data.batching import Encoded
from engine.device import CONTEXT_BYTES, HEADROOM
from engine.errors import ConfigError, FedRayRuntimeError
from engine.runtime import make_runtime
from engine.train import TrainSpec

_FIX = (
    "lower train.batch_size or model.max_length, pick a smaller model, or set "
    "resources.client_num_gpus: 0 to train clients on CPUs"
)
# Over the probe's peak: allocator rounding and what a step does that the probe's did not.
MARGIN = 1.25
MAX_WORKERS_PER_GPU = 64  # beyond this the GPU is not the limit; CPUs and clients per round are
_RAY_GRAIN = 10_000  # Ray accounts GPU fractions to 1e-4


@dataclass(frozen=True)
class GpuShare:
    """The packing `auto` chose: `per_gpu` workers on each GPU, each asking Ray for `num_gpus`."""

    per_gpu: int
    num_gpus: float
    peak_bytes: int  # one client step's measured peak (the probe's)
    gpu_bytes: int  # the GPU's memory

    def describe(self) -> str:
        return (
            f"{self.per_gpu} client worker(s) per GPU: one client step peaks at "
            f"{_gib(self.peak_bytes)} of the GPU's {_gib(self.gpu_bytes)} (resources.client_num_gpus: auto)"
        )

    def record(self) -> dict[str, float | int]:
        return {
            "workers_per_gpu": self.per_gpu,
            "client_num_gpus": self.num_gpus,
            "probe_peak_bytes": self.peak_bytes,
            "gpu_bytes": self.gpu_bytes,
        }


def pack_gpu(
    peak_bytes: int,
    gpu_bytes: int,
    headroom: float = HEADROOM,
    margin: float = MARGIN,
    context_bytes: int = CONTEXT_BYTES,
    max_per_gpu: int = MAX_WORKERS_PER_GPU,
) -> GpuShare:
    """Workers per GPU = floor(gpu x (1 - headroom) / (peak x margin + context)), at most
    `max_per_gpu`; each asks Ray for 1 / that, rounded down to Ray's 1e-4 grain.

    A ConfigError when even one worker does not fit a GPU.
    """
    usable = gpu_bytes * (1 - headroom)
    need = peak_bytes * margin + context_bytes
    if need > usable:
        raise ConfigError(
            "resources.client_num_gpus",
            f"one client step needs {_gib(peak_bytes)} of GPU memory (measured; with margin and the "
            f"CUDA context {_gib(need)}) but a GPU has {_gib(gpu_bytes)} ({_gib(usable)} usable); "
            f"{_FIX}",
        )
    per_gpu = max(1, min(max_per_gpu, math.floor(usable / need)))
    num_gpus = math.floor(_RAY_GRAIN / per_gpu) / _RAY_GRAIN
    return GpuShare(per_gpu, num_gpus, peak_bytes, gpu_bytes)


def measure_share(
    spec: WorkerSpec, train_spec: TrainSpec, train: Encoded, test: Encoded, timeout_s: float
) -> GpuShare:
    """Probe one client step on a whole GPU (a task of its own, gone afterwards) and pack from it."""
    ref = _probe.options(num_gpus=1, num_cpus=0).remote(spec, train_spec, train, test)
    try:
        probe: MemoryProbe = ray.get(ref, timeout=timeout_s)
    except GetTimeoutError:
        raise FedRayRuntimeError(
            f"measuring a client step on a GPU took longer than resources.task_timeout_s="
            f"{timeout_s:g}s (is a whole GPU free?)"
        ) from None
    except RayTaskError as exc:
        if isinstance(exc.cause, torch.cuda.OutOfMemoryError):
            raise ConfigError(
                "resources.client_num_gpus",
                "one client step does not fit a whole GPU (CUDA out of memory while measuring it); "
                f"{_FIX}",
            ) from None
        raise
    if probe.device_peak_bytes is None or probe.device_total_bytes is None:
        raise ConfigError(
            "resources.client_num_gpus",
            "Ray lists GPUs but a task given one sees no CUDA device (a CPU-only torch?); "
            "set resources.client_num_gpus: 0, or install a CUDA build of torch",
        )
    return pack_gpu(probe.device_peak_bytes, probe.device_total_bytes)


@ray.remote(max_retries=0)
def _probe(spec: WorkerSpec, train_spec: TrainSpec, train: Encoded, test: Encoded) -> MemoryProbe:
    return make_runtime(spec, train, test).probe_memory(train_spec)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
