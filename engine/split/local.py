"""The body server next to an in-process backend (a checkpoint carries its trained body)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from engine.checkpoint import merge_state, split_state
from engine.ledger import deserialize_state, serialize_state
from engine.split.server import BodyRuntime, LocalLink, ServerSpec


class LocalBodyServer:
    """A BodyRuntime in this process (debugging, unit tests); it cannot die on its own.

    At ZeRO stage 0 (the default) the body runs on plain torch, so an in-process run needs no
    DeepSpeed; stages 1-3 run DeepSpeed here too."""

    link: LocalLink  # what the clients call: this process's body

    def __init__(self, factory: Callable[[], torch.nn.Module], spec: ServerSpec) -> None:
        self.runtime = BodyRuntime(factory(), spec, use_deepspeed=spec.zero_stage > 0)
        self.link = LocalLink(self.runtime)
        self.trains = spec.train_body

    def lost(self, result: object) -> bool:
        return False

    def recover(self) -> None:
        raise RuntimeError("an in-process body server cannot be lost")

    def end_round(self, weights: dict[int, float], state: dict, round: int) -> tuple[dict, dict]:
        self.runtime.end_round(weights)
        return state, {}

    def evaluate(self, state: dict, batch_size: int) -> dict[str, float]:
        return {}  # the clients' evaluation runs the body through the link

    def write_samples(self, state: dict, path: Path) -> None:
        return None

    def crash_after(self) -> None:
        """Fault injection (faults.server_kill_round): nothing to kill in process."""

    def with_state(self, client_blob: bytes) -> bytes:
        body = serialize_state(self.runtime.body_state()) if self.trains else None
        return merge_state(client_blob, body)

    def restore(self, blob: bytes) -> bytes:
        client, body = split_state(blob)
        if body is not None:
            self.runtime.load_body_state(deserialize_state(body))
        return client

    def shutdown(self) -> None:
        self.runtime = None  # type: ignore[assignment]
