"""The body server next to an in-process backend, and how a checkpoint carries a trained body."""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.ledger import deserialize_state, serialize_state
from engine.split.server import BodyRuntime, LocalLink, ServerSpec

SERVER_PREFIX = "server/"  # checkpoint keys of the body a server trains (never sent to clients)


def merge_state(client_blob: bytes, body_blob: bytes | None) -> bytes:
    """One checkpoint payload: the clients' global state plus the server's trained body, if any."""
    if not body_blob:
        return client_blob
    body = {SERVER_PREFIX + k: v for k, v in deserialize_state(body_blob).items()}
    return serialize_state({**deserialize_state(client_blob), **body})


def split_state(blob: bytes) -> tuple[bytes, bytes | None]:
    """Inverse of `merge_state`: (client global state, body state or None)."""
    state = deserialize_state(blob)
    body = {k[len(SERVER_PREFIX) :]: v for k, v in state.items() if k.startswith(SERVER_PREFIX)}
    if not body:
        return blob, None
    client = {k: v for k, v in state.items() if not k.startswith(SERVER_PREFIX)}
    return serialize_state(client), serialize_state(body)


class LocalBodyServer:
    """A BodyRuntime in this process (debugging, unit tests); it cannot die on its own.

    At ZeRO stage 0 (the default) the body runs on plain torch, so an in-process run needs no
    DeepSpeed; stages 1-3 run DeepSpeed here too."""

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
