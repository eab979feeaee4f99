"""FedPT's black-box large LM as a Ray actor, and the driver's link to it (restart-aware)."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import ray
import torch
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from actors.cluster import fence_gpus
from engine.errors import FedRayRuntimeError
from engine.ledger import deserialize_state, serialize_state
from engine.lm.blackbox import BlackBoxLM

MAX_RESTARTS = 3


@ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=0, max_concurrency=4)
class LargeLMServer:
    """Loads the large LM once behind BlackBoxLM; threaded so concurrent callers get batched."""

    def __init__(
        self, factory: Callable[[], torch.nn.Module], blackbox: dict, torch_threads: int
    ) -> None:
        fence_gpus()  # fedpt.server_num_gpus: 0 keeps it off every GPU; a fraction caps it
        torch.set_num_threads(torch_threads)
        self.threads = torch_threads
        self.lm = BlackBoxLM(factory(), **blackbox)  # BlackBoxLM's keyword arguments

    def ready(self) -> dict:
        return {"pid": os.getpid(), "vocab_size": self.lm.vocab_size, "params": self.lm.num_params}

    def crash_after(self, calls: int) -> None:
        """Fault injection: this process dies in the middle of its `calls`-th next request."""
        self._crash_in = calls

    def logits(self, blob: bytes) -> bytes:
        self._crash_in = getattr(self, "_crash_in", 0) - 1
        if self._crash_in == 0:
            os._exit(1)  # a real crash: no cleanup, the caller's request is in flight
        torch.set_num_threads(self.threads)  # per calling thread (OpenMP), as in BodyServer
        return self.lm.logits_blob(blob)


class LargeLMLink:
    """The server side's handle: logits for token ids; one retry after a restart; bytes counted."""

    def __init__(self, handle, timeout_s: float) -> None:
        self.handle, self.timeout_s = handle, timeout_s
        self.bytes_up = self.bytes_down = 0
        self.restarts = 0

    def logits(self, ids: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        blob = serialize_state({"ids": ids.astype(np.int32), "mask": mask.astype(np.int8)})
        for attempt in (0, 1):
            try:
                out = ray.get(self.handle.logits.remote(blob), timeout=self.timeout_s)
                break
            except (RayActorError, ActorUnavailableError, GetTimeoutError) as exc:
                if attempt:
                    raise FedRayRuntimeError(f"the large-LM server failed twice: {exc}") from None
                self.restarts += 1
                self._wait_ready()
        self.bytes_up += len(blob)
        self.bytes_down += len(out)
        return torch.from_numpy(deserialize_state(out)["logits"].astype(np.float32))

    def _wait_ready(self) -> None:
        from actors.body_server import wait_ready

        try:
            wait_ready(self.handle, self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure here ends the run (resumable)
            raise FedRayRuntimeError(f"the large-LM server did not come back: {exc}") from None

    def shutdown(self) -> None:
        ray.kill(self.handle)
