"""RayBackend: a small pool of long-lived client workers, fed client tasks through the object store.

The pool is split into worker groups (actors/groups.py), one per device resource request; a
client's task runs on a worker of its device's group.
"""

from __future__ import annotations

import contextlib
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from actors.gpu_share import GpuShare, measure_share
from actors.groups import WorkerGroup
from actors.hosting import RayHosting
from actors.placement import worker_placement
from actors.worker import ClientWorker
from engine.backend import OnResult
from engine.client import ClientResult, ClientTask, WorkerSpec
from engine.data.batching import Encoded
from engine.errors import ClientOutOfMemory, FedRayRuntimeError
from engine.train import TrainSpec

# One task in flight per worker: a queued second task commits a client to a worker early, and at
# the end of a round one worker can idle while the other still has two clients to train (a
# Ray round trip per task costs milliseconds; a client costs seconds).
IN_FLIGHT_PER_WORKER = 1

Plan = tuple[list[WorkerGroup], list[int] | None]


@dataclass(frozen=True)
class GpuPacking:
    """`client_num_gpus: auto` on a cluster with GPUs: the pool is planned again at start, once a
    probe measured one client step (`replan(share)` -> groups whose workers ask for `share`)."""

    train_spec: TrainSpec
    replan: Callable[[float], Plan]


class RayBackend:
    hosting = RayHosting()  # an algorithm's server runs in a Ray actor of its own

    def __init__(
        self,
        groups: Sequence[WorkerGroup],
        client_group: Sequence[int] | None,
        timeout_s: float,
        owns_ray: bool = False,
        retries: int = 1,
        packing: GpuPacking | None = None,
    ) -> None:
        self._set_plan(list(groups), client_group)
        self.packing = packing
        self.gpu_share: GpuShare | None = None  # what packing chose, once started
        self.owns_ray = owns_ray
        self.timeout_s = timeout_s
        self.retries = retries  # per client task whose worker died
        self.workers: list = []
        self.last_retries = 0  # client tasks retried in the last run_clients call
        self.last_slots: dict[int, int] = {}  # client -> worker slot that ran it, last call
        self.replaced = 0  # dead workers replaced so far

    def _set_plan(self, groups: list[WorkerGroup], client_group: Sequence[int] | None) -> None:
        self.groups = groups
        # client id -> its group (None: one group serves everybody)
        self.client_group = list(client_group) if client_group is not None else None
        # worker slot -> its group; slots are numbered group by group
        self.slot_group = [g for g, grp in enumerate(self.groups) for _ in range(grp.size)]
        self.num_workers = len(self.slot_group)

    def start(self, spec: WorkerSpec, train: Encoded, test: Encoded, link: object = None) -> None:
        train_ref, test_ref = ray.put(train), ray.put(test)  # shared, zero-copy in workers
        if self.packing is not None:
            self.gpu_share = measure_share(
                spec, self.packing.train_spec, train_ref, test_ref, self.timeout_s
            )
            self._set_plan(*self.packing.replan(self.gpu_share.num_gpus))
            print(self.gpu_share.describe(), file=sys.stderr)
        options = [grp.resources.ray_options() for grp in self.groups]
        self._new_worker = lambda w: ClientWorker.options(
            **options[self.slot_group[w]], **worker_placement(w, self.num_workers)
        ).remote(spec, train_ref, test_ref, link)
        self.workers = [self._new_worker(w) for w in range(self.num_workers)]
        infos = self._get([w.ready.remote() for w in self.workers], "starting client workers")
        self._info = infos[0]

    def group_of(self, client_id: int) -> int:
        return self.client_group[client_id] if self.client_group is not None else 0

    def _get(self, refs, what: str):
        try:
            return ray.get(refs, timeout=self.timeout_s)
        except GetTimeoutError:
            raise FedRayRuntimeError(
                f"{what} took longer than resources.task_timeout_s={self.timeout_s:g}s "
                "(too few cluster resources for the requested workers?)"
            ) from None

    def info(self) -> dict:
        """The model's parameter counts (a worker's) and, when GPUs were packed, how."""
        extra = {"gpu_packing": self.gpu_share.record()} if self.gpu_share is not None else {}
        return {**self._info, **extra}

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
        self.last_slots = {}

        def submit() -> None:  # each queued task, in order, to a free worker of its group
            waiting = []
            while queue:
                task = queue.popleft()
                group = self.group_of(task.client_id)
                free = [
                    w
                    for w, g in enumerate(self.slot_group)
                    if g == group and load[w] < IN_FLIGHT_PER_WORKER
                ]
                if not free:
                    waiting.append(task)
                    continue
                w = min(free, key=lambda i: load[i])
                ref = self.workers[w].train_client.remote(task, blob_ref)
                pending[ref] = (task, w)
                load[w] += 1
            queue.extend(waiting)

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
                self.last_slots[task.client_id] = w
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
                # out of GPU memory: the one-line reason, not the worker's traceback
                oom = isinstance(exc.cause, ClientOutOfMemory)
                out[task.client_id] = exc.cause if oom else exc
            submit()
        return out

    def _replace(self, w: int) -> None:
        """A fresh worker in slot w (client workers hold no state a client needs across tasks)."""
        with contextlib.suppress(Exception):
            ray.kill(self.workers[w])
        self.workers[w] = self._new_worker(w)
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
