"""DeepSpeed in one process: the import (slow, so at first use) and a world of one, shared by the servers that
host a model behind it (SFPrompt's body, FedPT's black box)."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import torch


def start_deepspeed() -> tuple[Any, Any]:
    """Import deepspeed (slow: done at first use) with the CPU-only fixes and a one-process group;
    returns (deepspeed, accelerator)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # silences the accelerator warning
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()
    if accel.device_name() == "cpu":
        # Otherwise the first init JIT-compiles the shm comm op in C++ (80-127 s on 2 cores).
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its INFO lines flood the logs
    if not torch.distributed.is_initialized():
        # A file rendezvous: two actors on one fixed MASTER_PORT would clash (EADDRINUSE).
        fd, path = tempfile.mkstemp(prefix="fedray-ds-")
        os.close(fd)
        os.unlink(path)
        deepspeed.init_distributed(
            dist_backend=accel.communication_backend_name(),
            init_method="file://" + path,
            rank=0,
            world_size=1,
            auto_mpi_discovery=False,  # else it looks for mpi4py
        )
    if torch.distributed.get_world_size() == 1:
        # DeepSpeedEngine asserts LOCAL_RANK is set; only launchers set it, init_distributed does not.
        os.environ.setdefault("LOCAL_RANK", "0")
    return deepspeed, accel
