"""RayBackend: a small pool of long-lived client workers, fed client tasks through the object store."""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, replace

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from engine.backend import OnResult
from engine.client import ClientResult, ClientTask, WorkerSpec
from engine.data.batching import Encoded
from engine.errors import FedRayRuntimeError

# One task in flight per worker: a queued second task commits a client to a worker early, and at
# the end of a round one worker can idle while the other still has two clients to train (a
# Ray round trip per task costs milliseconds; a client costs seconds).
IN_FLIGHT_PER_WORKER = 1


@dataclass(frozen=True)
class WorkerResources:
    """The Ray resource request of one client worker (scheduling hints, not hard limits)."""

    num_cpus: float
    memory_bytes: int | None
    num_gpus: float


def pool_size(requested: int | str, clients_per_round: int, cpus: float, per_worker: float) -> int:
    """Workers to start: as many as the cluster fits, never more than clients per round."""
    if requested != "auto":
        return int(requested)
    fits = int(cpus // per_worker) if per_worker > 0 else clients_per_round
    return max(1, min(clients_per_round, fits))


class RayBackend:
    def __init__(
        self,
        num_workers: int,
        resources: WorkerResources,
        timeout_s: float,
        owns_ray: bool = False,
        retries: int = 1,
    ) -> None:
        self.num_workers = num_workers
        self.owns_ray = owns_ray
        self.resources = resources
        self.timeout_s = timeout_s
        self.retries = retries  # per client task whose worker died
        self.workers: list = []
        self.last_retries = 0  # client tasks retried in the last run_clients call
        self.replaced = 0  # dead workers replaced so far

    def start(self, spec: WorkerSpec, train: Encoded, test: Encoded, link: object = None) -> None:
        from actors.worker import ClientWorker

        train_ref, test_ref = ray.put(train), ray.put(test)  # shared, zero-copy in workers
        opts: dict = {"num_cpus": self.resources.num_cpus, "num_gpus": self.resources.num_gpus}
        if self.resources.memory_bytes:
            opts["memory"] = self.resources.memory_bytes
        self._new_worker = lambda: ClientWorker.options(**opts).remote(
            spec, train_ref, test_ref, link
        )
        self.workers = [self._new_worker() for _ in range(self.num_workers)]
        infos = self._get([w.ready.remote() for w in self.workers], "starting client workers")
        self._info = infos[0]

    def _get(self, refs, what: str):
        try:
            return ray.get(refs, timeout=self.timeout_s)
        except GetTimeoutError:
            raise FedRayRuntimeError(
                f"{what} took longer than resources.task_timeout_s={self.timeout_s:g}s "
                "(too few cluster resources for the requested workers?)"
            ) from None

    def info(self) -> dict[str, int]:
        return dict(self._info)

    def initial_state(self) -> bytes:
        return self._get(self.workers[0].initial_state.remote(), "reading the initial state")

    def run_clients(
        self, tasks: list[ClientTask], global_blob: bytes, on_result: OnResult
    ) -> dict[int, ClientResult | Exception]:
        blob_ref = ray.put(global_blob)  # one copy in the object store for all clients of the round
        queue = deque(tasks)
        pending: dict = {}  # ref -> (task, worker index)
        load = [0] * len(self.workers)
        out: dict[int, ClientResult | Exception] = {}
        attempts: dict[int, int] = {}
        self.last_retries = 0

        def submit() -> None:
            while queue:
                w = min(range(len(self.workers)), key=lambda i: load[i])
                if load[w] >= IN_FLIGHT_PER_WORKER:
                    return
                task = queue.popleft()
                ref = self.workers[w].train_client.remote(task, blob_ref)
                pending[ref] = (task, w)
                load[w] += 1

        submit()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=self.timeout_s)
            if not done:
                ids = sorted(t.client_id for t, _ in pending.values())
                raise FedRayRuntimeError(
                    f"no client task finished within resources.task_timeout_s={self.timeout_s:g}s "
                    f"(waiting on clients {ids[:8]})"
                )
            task, w = pending.pop(done[0])
            load[w] -= 1
            try:
                res = ray.get(done[0], timeout=self.timeout_s)
                on_result(res)
                out[task.client_id] = res
            except RayActorError as exc:  # the worker process died: replace it, maybe retry
                self._replace(w)
                n = attempts.get(task.client_id, 0)
                if n < self.retries:
                    attempts[task.client_id] = n + 1
                    self.last_retries += 1
                    queue.appendleft(replace(task, fault=None))  # same seed: the same result
                else:
                    out[task.client_id] = exc
            except RayTaskError as exc:  # the client's code raised: a failed client
                out[task.client_id] = exc
            submit()
        return out

    def _replace(self, w: int) -> None:
        """A fresh worker in slot w (client workers hold no state a client needs across tasks)."""
        with contextlib.suppress(Exception):
            ray.kill(self.workers[w])
        self.workers[w] = self._new_worker()
        self.replaced += 1

    def evaluate(
        self, version: int, global_blob: bytes, shards: list[list[np.ndarray]]
    ) -> list[list[dict]]:
        blob_ref = ray.put(global_blob)

        def shards_out() -> list[list[dict]]:
            refs = [
                self.workers[i % len(self.workers)].evaluate.remote(version, blob_ref, shard)
                for i, shard in enumerate(shards)
            ]
            return self._get(refs, "evaluating the global model")

        try:
            return shards_out()
        except RayActorError:  # a worker died (e.g. its node left): replace the dead, once more
            for w in range(len(self.workers)):
                if not self._alive(w):
                    self._replace(w)
            return shards_out()

    def _alive(self, w: int) -> bool:
        try:
            ray.get(self.workers[w].ready.remote(), timeout=self.timeout_s)
            return True
        except (RayActorError, GetTimeoutError):
            return False

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
        self.workers = []
        if self.owns_ray:
            ray.shutdown()
