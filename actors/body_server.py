"""The SFPrompt body server actor and ServerLink, the handle a client worker calls it through."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import ray
import torch
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from actors.cluster import fence_gpus
from engine.ledger import deserialize_state, serialize_state
from engine.split.server import BodyRuntime, Key, ServerLost, ServerSpec

# What a dead, restarting or silent server looks like to a caller. ActorDiedError and
# ActorUnavailableError (restarting) derive from RayActorError; listed for the reader.
_LOST = (RayActorError, ActorUnavailableError, GetTimeoutError)


def _restarts() -> int:
    """How many times Ray has restarted this actor (0 on its first start)."""
    ctx = ray.get_runtime_context()
    try:  # the count lives only in the GCS actor table, read through a private helper
        from ray._private.state import actors

        return int(actors(actor_id=ctx.get_actor_id())["NumRestarts"])
    except Exception:  # a Ray without that helper: at least tell restarted from not
        with warnings.catch_warnings():  # the property trips Ray's own actor_id deprecation
            warnings.simplefilter("ignore")
            return int(bool(ctx.was_current_actor_reconstructed))


@ray.remote(max_restarts=1, max_task_retries=0, max_concurrency=8)
class BodyServer:
    """Holds one body; many client workers call it at once, their compute runs one at a time."""

    def __init__(
        self,
        body_factory: Callable[[], torch.nn.Module],
        spec: ServerSpec,
        torch_threads: int = 1,
    ) -> None:
        fence_gpus()  # server.num_gpus: 0 means the CPU; a fraction caps its memory
        torch.set_num_threads(torch_threads)
        self._threads = torch_threads
        # Threaded actor: autograd state, the kept graphs and the gradient accumulators are
        # shared, so every call that touches the runtime holds this lock.
        self._lock = threading.Lock()
        self._restarts = _restarts()
        # Keys this incarnation kept a graph for (until end_round): a restarted server tells a
        # graph lost with its predecessor (ServerLost) from a second backward (KeyError).
        self._kept: set[tuple[int, ...]] = set()
        # Seeded before the factory: a randomly initialised body comes back the same after a restart.
        torch.manual_seed(spec.seed)
        self.runtime = BodyRuntime(body_factory(), spec)

    @contextlib.contextmanager
    def _compute(self) -> Iterator[None]:
        with self._lock:
            # Calls run on Ray's pool threads, and OpenMP's thread count is per calling thread:
            # set here, or a pool thread mixes 1 OpenMP thread with N MKL threads and its
            # results differ in the last bits from an N-thread process.
            torch.set_num_threads(self._threads)
            yield

    def ready(self) -> dict:
        return {
            "params": self.runtime.num_params,
            "pid": os.getpid(),
            "restarts": self._restarts,
            "init_s": self.runtime.init_seconds,
        }

    def crash_after(self, forwards: int) -> None:
        """Fault injection: this process dies in the middle of its `forwards`-th next forward."""
        self._crash_in = forwards

    def forward(self, key: Key, blob: bytes, keep_graph: bool) -> bytes:
        self._crash_in = getattr(self, "_crash_in", 0) - 1
        if self._crash_in == 0:
            os._exit(1)  # a real crash: no cleanup, the caller's request is in flight
        with self._compute():
            out = self.runtime.forward(key, blob, keep_graph)
            if keep_graph:
                self._kept.add(tuple(int(k) for k in key))
            return out

    def backward(self, key: Key, blob: bytes) -> bytes:
        with self._compute():
            try:
                return self.runtime.backward(key, blob)
            except KeyError:
                if not self._restarts or tuple(int(k) for k in key) in self._kept:
                    raise
                # The forward went to the server before the restart: to the caller, it was lost.
                raise ServerLost(
                    f"body server restarted; the graph for key {tuple(key)} was lost with it"
                ) from None

    def end_round(self, weights: dict[int, float]) -> None:
        with self._compute():
            self._kept.clear()
            self.runtime.end_round(weights)

    def body_state(self) -> bytes:
        with self._compute():
            return serialize_state(self.runtime.body_state())

    def load_body_state(self, blob: bytes) -> None:
        with self._compute():
            self.runtime.load_body_state(deserialize_state(blob))

    def pending(self) -> int:
        with self._compute():
            return self.runtime.pending()


class ServerLink:
    """A client worker's link to the body server: Ray failures and timeouts become ServerLost."""

    def __init__(self, handle: ray.actor.ActorHandle, timeout_s: float) -> None:
        self.handle = handle
        self.timeout_s = float(timeout_s)

    def forward(self, key: Key, blob: bytes, keep_graph: bool) -> bytes:
        return self._call("forward", key, self.handle.forward.remote(key, blob, keep_graph))

    def backward(self, key: Key, blob: bytes) -> bytes:
        return self._call("backward", key, self.handle.backward.remote(key, blob))

    def _call(self, what: str, key: Key, ref: ray.ObjectRef) -> bytes:
        try:
            return ray.get(ref, timeout=self.timeout_s)
        except _LOST as e:
            raise ServerLost(
                f"body server lost during {what} {tuple(key)}: {type(e).__name__}"
            ) from e


def wait_ready(handle: ray.actor.ActorHandle, timeout_s: float) -> dict:
    """The server's ready() once it answers, waiting out a restart; ServerLost if it never does."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise GetTimeoutError(f"no answer in {timeout_s} s")
            return ray.get(handle.ready.remote(), timeout=left)
        except ActorUnavailableError:  # restarting: Ray refuses calls until __init__ is done
            time.sleep(min(0.2, max(left, 0.0)))
        except (RayActorError, GetTimeoutError) as e:
            raise ServerLost(f"body server not ready: {type(e).__name__}") from e
