"""The small interface algorithms use to run client work, and an in-process implementation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from engine.client import ClientResult, ClientRuntime, ClientTask, WorkerSpec
from engine.data.batching import Encoded
from engine.hosting import Hosting, LocalHosting
from engine.runtime import make_runtime

OnResult = Callable[[ClientResult], None]


class Backend(Protocol):
    """Where client tasks run. `actors.pool.RayBackend` is the default; `LocalBackend` is for debugging."""

    num_workers: int
    hosting: Hosting  # where an algorithm's server runs (engine/hosting.py)

    def start(
        self, spec: WorkerSpec, train: Encoded, test: Encoded, link: object = None
    ) -> None: ...

    def initial_state(self) -> bytes: ...

    def info(self) -> dict[str, int]: ...

    def run_clients(
        self, tasks: list[ClientTask], global_blob: bytes, on_result: OnResult
    ) -> dict[int, ClientResult | Exception]: ...

    def evaluate(
        self, version: int, global_blob: bytes, shards: list[list[np.ndarray]]
    ) -> list[list[dict]]: ...

    def shutdown(self) -> None: ...


class LocalBackend:
    """Runs everything in this process on one model: simple, slow, handy under a debugger."""

    num_workers = 1
    hosting = LocalHosting()  # an algorithm's server runs here too

    def __init__(self) -> None:
        self.runtime: ClientRuntime | None = None

    def start(self, spec: WorkerSpec, train: Encoded, test: Encoded, link: object = None) -> None:
        self.runtime = make_runtime(spec, train, test, link)

    def _rt(self) -> ClientRuntime:
        if self.runtime is None:
            raise RuntimeError("LocalBackend.start() was not called")
        return self.runtime

    def initial_state(self) -> bytes:
        return self._rt().initial_state()

    def info(self) -> dict[str, int]:
        return self._rt().info()

    def run_clients(
        self, tasks: list[ClientTask], global_blob: bytes, on_result: OnResult
    ) -> dict[int, ClientResult | Exception]:
        out: dict[int, ClientResult | Exception] = {}
        for task in tasks:
            res = self._rt().train_client(task, global_blob)
            on_result(res)
            out[task.client_id] = res
        return out

    def evaluate(
        self, version: int, global_blob: bytes, shards: list[list[np.ndarray]]
    ) -> list[list[dict]]:
        return [self._rt().evaluate(version, global_blob, s) for s in shards]

    def shutdown(self) -> None:
        self.runtime = None
