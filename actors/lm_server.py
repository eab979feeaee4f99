"""FedPT's server side on Ray: one actor holds the black-box large LM and, beside it on the same device,
the FL server's work (the emulator build, the per-round proxy + distillation, evaluation, samples);
the driver talks to it through a handle that replaces a host that died (FedPTHostLink).

The FL server reaches the large LM only through `LocalLMLink` (logits for token ids, bytes counted),
exactly as it would across processes: sharing the actor puts the server's small LMs on the black
box's GPU without giving the server anything but logits.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from actors.body_server import wait_ready
from actors.cluster import fence_gpus
from engine.config import RunConfig
from engine.device import local_device
from engine.errors import FedRayRuntimeError
from engine.lm.blackbox import BlackBoxLM, LocalLMLink
from engine.lm.server import FedPTRoundServer, FedPTServer, Memory
from engine.lm.small import small_model_path


class _FaultyLink(LocalLMLink):
    """LocalLMLink with fault injection: the process dies inside its `crash_in`-th next request."""

    crash_in = 0

    def logits(self, ids: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        self.crash_in -= 1
        if self.crash_in == 0:
            os._exit(1)  # a real crash: no cleanup, the driver's call is in flight
        return super().logits(ids, mask)


# Not restarted by Ray: FedPTHostLink starts a new one itself (the data it needs is the driver's).
@ray.remote(max_restarts=0, max_task_retries=0)
class FedPTHost:
    """The black box and the FL server, on the GPU Ray gave this actor (fedpt.server_num_gpus)."""

    def __init__(
        self,
        cfg: RunConfig,
        data: tuple,  # (public text, its rows, test split, pad id)
        factory: Callable[[], torch.nn.Module],
        blackbox: dict[str, Any],  # BlackBoxLM's keyword arguments
        torch_threads: int,
    ) -> None:
        fence_gpus()  # fedpt.server_num_gpus: 0 keeps it off every GPU; a fraction caps it
        torch.set_num_threads(torch_threads)
        public, public_rows, test, pad_id = data
        device = local_device()
        # The emulator (if any) is built first, so the large LM is not held twice meanwhile.
        self.small = small_model_path(cfg, public, public_rows, pad_id, device)
        self.link = _FaultyLink(BlackBoxLM(factory(), **blackbox))
        self.server = FedPTServer(
            cfg, self.small, self.link, public, public_rows, test, pad_id, device
        )

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "small_model": self.small, "device": str(self.server.device)}

    def crash_after(self, requests: int) -> None:
        self.link.crash_in = requests

    def end_round(self, *args: Any) -> tuple[dict, dict, Memory]:
        return self.server.end_round(*args)

    def evaluate(self, *args: Any) -> dict[str, float]:
        return self.server.evaluate(*args)

    def samples(self, *args: Any) -> str | None:
        return self.server.samples(*args)


class FedPTHostLink(FedPTRoundServer):
    """The driver's FedPT server: every call goes to the FedPTHost actor; a call the actor died in
    is made once more against a new one (each is a function of its arguments, the memory
    included, so the answer is the one the first attempt would have given).

    `start()` creates a FedPTHost; it is called again to replace one that died.
    """

    def __init__(self, start: Callable[[], Any], timeout_s: float) -> None:
        self.start, self.timeout_s = start, timeout_s
        self.handle = start()
        self.memory: Memory = {}
        info = self._wait_ready()
        self.small_model: str = info["small_model"]

    def crash_after(self, requests: int = 2) -> None:
        """Fault injection (faults.server_kill_round): the actor dies inside a later request."""
        ray.get(self.handle.crash_after.remote(requests), timeout=self.timeout_s)

    def shutdown(self) -> None:
        ray.kill(self.handle, no_restart=True)

    # -- calls ----------------------------------------------------------------------------------
    def _call(self, method: str, *args: Any) -> tuple[Any, int]:
        """(the answer, restarts it took: 0 or 1)."""
        for attempt in (0, 1):
            try:
                ref = getattr(self.handle, method).remote(*args)
                return ray.get(ref, timeout=self.timeout_s), attempt
            except (RayActorError, ActorUnavailableError, GetTimeoutError) as exc:
                if attempt:
                    raise FedRayRuntimeError(f"the FedPT server failed twice: {exc}") from None
                with contextlib.suppress(Exception):
                    ray.kill(self.handle, no_restart=True)  # a hung one too
                self.handle = self.start()
                self._wait_ready()
        raise AssertionError("unreachable")

    def _wait_ready(self) -> dict[str, Any]:
        try:
            return wait_ready(self.handle, self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure here ends the run (resumable)
            raise FedRayRuntimeError(f"the FedPT server did not come up: {exc}") from None
