"""The client worker actor: a long-lived process that hosts one ClientRuntime."""

from __future__ import annotations

import os
import time

import ray

from actors.cluster import fence_gpus
from engine.client import ClientResult, ClientTask, WorkerSpec
from engine.data.batching import Encoded
from engine.runtime import make_runtime


@ray.remote(max_restarts=0, max_task_retries=0)
class ClientWorker:
    """Loads the frozen base model once; serves any number of virtual clients."""

    def __init__(
        self, spec: WorkerSpec, train: Encoded, test: Encoded, link: object = None
    ) -> None:
        # link: the SFPrompt client's connection to the body server (None for FedAvg)
        fence_gpus()  # a GPU only if Ray gave it one, and at most its share of the memory
        self.runtime = make_runtime(spec, train, test, link)

    def ready(self) -> dict[str, int]:
        return self.runtime.info()

    def resources(self) -> dict[str, float]:
        """What Ray assigned this worker (its group's request)."""
        return dict(ray.get_runtime_context().get_assigned_resources())

    def initial_state(self) -> bytes:
        return self.runtime.initial_state()

    def train_client(self, task: ClientTask, global_blob: bytes) -> ClientResult:
        if task.fault == "kill":
            os._exit(1)  # an injected crash: no cleanup, the task is in flight
        if task.fault and task.fault.startswith("delay:"):
            time.sleep(float(task.fault.split(":", 1)[1]))
        return self.runtime.train_client(task, global_blob)

    def evaluate(self, version: int, global_blob: bytes, batches: list) -> list[dict]:
        return self.runtime.evaluate(version, global_blob, batches)
