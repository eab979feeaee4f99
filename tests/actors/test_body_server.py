"""BodyServer actor: a ServerLink round trip equals the in-process runtime; a killed server restarts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.body_server import BodyServer, ServerLink, wait_ready
from engine.ledger import deserialize_state
from engine.split.server import BodyRuntime, LocalLink, ServerLost, ServerSpec
from tests.engine.split.test_server import grad_blob, make_batch, make_body, up

TIMEOUT_S = 180.0  # actor start-up imports torch + deepspeed; slow on a busy 2-core machine
# Same thread count as this process: matmul results may depend on how work is split.
THREADS = torch.get_num_threads()


@pytest.fixture(scope="module")
def server(ray_session):
    handle = BodyServer.remote(make_body, ServerSpec(), torch_threads=THREADS)
    info = ray_session.get(handle.ready.remote(), timeout=TIMEOUT_S)
    assert info["restarts"] == 0 and info["params"] > 0
    yield handle
    ray_session.kill(handle, no_restart=True)


def test_link_round_trip_equals_in_process(server) -> None:
    import ray

    link = ServerLink(server, TIMEOUT_S)
    # Bit-equal only on equal thread counts (matmul sums split over threads); an earlier test in
    # this process (a client runtime) may have set it to 1 since THREADS was read.
    torch.set_num_threads(THREADS)
    local = LocalLink(BodyRuntime(make_body(), ServerSpec()))
    hidden, mask, g = make_batch(5)
    for k, wire in enumerate((np.float32, np.float16)):
        key = (0, 1, k)
        remote_out = link.forward(key, up(hidden, mask, wire), keep_graph=True)
        assert remote_out == local.forward(key, up(hidden, mask, wire), keep_graph=True)
        remote_grad = link.backward(key, grad_blob(g, wire))
        assert remote_grad == local.backward(key, grad_blob(g, wire))
        assert deserialize_state(remote_grad)["grad"].dtype == wire
    assert ray.get(server.pending.remote(), timeout=TIMEOUT_S) == 0
    with pytest.raises(KeyError):  # the actor's KeyError reaches the caller as a KeyError
        link.backward((0, 1, 0), grad_blob(g))


def test_killed_server_is_lost_then_restarts_with_same_outputs(server) -> None:
    # The restarted server is back with the initial body, so the other test may run after this.
    import ray

    first = wait_ready(server, TIMEOUT_S)
    link = ServerLink(server, TIMEOUT_S)
    hidden, mask, g = make_batch(6)
    before = link.forward((0, 2, 0), up(hidden, mask), keep_graph=True)
    ray.kill(server, no_restart=False)  # asynchronous: wait until the old process is gone
    again = _restarted(server, first["pid"])
    assert again["restarts"] == first["restarts"] + 1 and again["pid"] != first["pid"]
    with pytest.raises(ServerLost, match="restarted"):  # the successor never had that graph
        link.backward((0, 2, 0), grad_blob(g))
    assert link.forward((0, 2, 1), up(hidden, mask), keep_graph=False) == before


def _restarted(server, old_pid: int) -> dict:
    """ready() of the server's successor process (the kill lands a moment after ray.kill)."""
    import time

    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            info = wait_ready(server, TIMEOUT_S)
        except ServerLost:  # caught between death and restart
            info = {"pid": old_pid}
        if info["pid"] != old_pid:
            return info
        time.sleep(0.1)
    raise AssertionError("the body server did not restart")
