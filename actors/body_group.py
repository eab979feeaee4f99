"""The driver's handle on SFPrompt's body server actor: start, restart recovery, round end, state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import ray
import torch
from ray.exceptions import GetTimeoutError

from actors.body_server import BodyServer, ServerLink, wait_ready
from actors.placement import server_placement
from engine.checkpoint import merge_state, split_state
from engine.errors import FedRayRuntimeError
from engine.split.server import ServerLost, ServerSpec, server_lost

# Ray restarts a dead server (re-running its constructor) this many times in a run.
MAX_RESTARTS = 3


class RayBodyServer:
    """SFPrompt's round server on Ray: the body in a restartable actor (actors/body_server.py)."""

    link: ServerLink  # what the clients call: the actor, through Ray

    def __init__(
        self,
        factory: Callable[[], torch.nn.Module],
        spec: ServerSpec,
        num_cpus: float,
        num_gpus: float,
        torch_threads: int,
        timeout_s: float,
    ) -> None:
        self.spec, self.timeout_s = spec, timeout_s
        self.handle = BodyServer.options(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            max_restarts=MAX_RESTARTS,
            **server_placement(num_cpus, num_gpus),
        ).remote(factory, spec, torch_threads)
        self.link = ServerLink(self.handle, timeout_s)
        self.info = self._get(self.handle.ready.remote(), "starting the body server")
        # The body at the start of the round: what a restarted server must be given back.
        self._body: bytes | None = self._body_state() if spec.train_body else None

    def _get(self, ref, what: str):
        try:
            return ray.get(ref, timeout=self.timeout_s)
        except GetTimeoutError:
            raise FedRayRuntimeError(
                f"{what} took longer than resources.task_timeout_s={self.timeout_s:g}s"
            ) from None

    def _body_state(self) -> bytes:
        return self._get(self.handle.body_state.remote(), "reading the server's body")

    def lost(self, result: object) -> bool:
        return server_lost(result)

    def recover(self) -> None:
        """Wait until Ray has restarted the server, then give it back the round's starting body."""
        try:
            self.info = wait_ready(self.handle, self.timeout_s)
        except ServerLost as exc:
            raise FedRayRuntimeError(f"the body server did not come back: {exc}") from None
        if self._body is not None:
            self._get(self.handle.load_body_state.remote(self._body), "restoring the body")

    def end_round(self, weights: dict[int, float], state: dict, round: int) -> tuple[dict, dict]:
        self._get(self.handle.end_round.remote(weights), "updating the server's body")
        if self.spec.train_body:
            self._body = self._body_state()
        return state, {}

    def evaluate(self, state: dict, batch_size: int) -> dict[str, float]:
        return {}  # the clients' evaluation runs the body through the link

    def write_samples(self, state: dict, path: Path) -> None:
        return None

    def with_state(self, client_blob: bytes) -> bytes:
        return merge_state(client_blob, self._body)

    def restore(self, blob: bytes) -> bytes:
        client, body = split_state(blob)
        if body is not None:
            self._get(self.handle.load_body_state.remote(body), "restoring the body")
            self._body = body
        return client

    def crash_after(self, requests: int = 3) -> None:
        """Fault injection (faults.server_kill_round): the actor dies inside a later request."""
        self._get(self.handle.crash_after.remote(requests), "arming the server fault")

    def shutdown(self) -> None:
        ray.kill(self.handle)
