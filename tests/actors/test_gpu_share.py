"""`client_num_gpus: auto`: packing from a measured client step, memory caps, GPU out-of-memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from actors.gpu_share import pack_gpu
from actors.groups import plan_groups
from actors.launch import packs_gpus
from engine.client import ClientRuntime, ClientTask, worker_spec
from engine.clock import load_device_profile
from engine.config import load_config
from engine.cost import memory_estimate
from engine.device import memory_cap
from engine.errors import ClientOutOfMemory, ConfigError
from engine.prepare import prepare
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
GiB, MiB = 2**30, 2**20


def _cfg(**extra: object):
    return load_config(ROOT / "configs" / "quickstart.yaml", tiny_overrides(**extra))


def test_workers_per_gpu_follow_the_measured_peak_with_headroom() -> None:
    # 80 GiB GPU: 90% usable = 72 GiB; a 4 GiB step needs 4 x 1.25 + 0.5 (context) = 5.5 GiB;
    # floor(72 / 5.5) = 13 workers, each asking Ray for floor(10000 / 13) / 10000 = 0.0769.
    share = pack_gpu(4 * GiB, 80 * GiB)
    assert (share.per_gpu, share.num_gpus) == (13, 0.0769)
    assert 13 * share.num_gpus <= 1.0  # Ray can place all 13 on one GPU
    # 16 GiB: 14.4 usable; a 1 GiB step needs 1.75 -> floor(8.23) = 8 workers at 0.125
    assert (pack_gpu(GiB, 16 * GiB).per_gpu, pack_gpu(GiB, 16 * GiB).num_gpus) == (8, 0.125)
    # A tiny step would fit hundreds: at most 64 per GPU (CPUs bound long before)
    assert pack_gpu(MiB, 80 * GiB).per_gpu == 64
    # Exactly one fits: 14.4 usable vs 11 x 1.25 + 0.5 = 14.25
    assert pack_gpu(11 * GiB, 16 * GiB).num_gpus == 1.0


def test_a_step_larger_than_a_gpu_is_refused_with_its_key() -> None:
    with pytest.raises(ConfigError) as err:
        pack_gpu(12 * GiB, 16 * GiB)  # 12 x 1.25 + 0.5 = 15.5 > 14.4
    assert err.value.key == "resources.client_num_gpus"
    assert "12.00 GiB" in err.value.message and "train.batch_size" in err.value.message


def test_each_worker_is_capped_at_its_share_less_a_cuda_context() -> None:
    # a quarter of a 16 GiB GPU: 0.25 x 0.9 - 0.5 / 16 = 0.19375 of it (3.1 GiB)
    assert memory_cap(0.25, 16 * GiB) == pytest.approx(0.19375)
    # auto's 13 workers of 80 GiB: each cap >= its step's 4 x 1.25 GiB, and all 13 below 90%
    cap = memory_cap(pack_gpu(4 * GiB, 80 * GiB).num_gpus, 80 * GiB)
    assert cap * 80 * GiB >= 5 * GiB and 13 * cap <= 0.9
    assert memory_cap(1.0, 16 * GiB) is None and memory_cap(2.0, 16 * GiB) is None  # whole GPUs
    assert memory_cap(0.0, 16 * GiB) is None  # no GPU
    assert memory_cap(0.01, 16 * GiB) == 0.0  # never negative (such a worker cannot allocate)


def test_auto_gives_every_device_the_measured_share() -> None:
    cfg = _cfg(**{"federation.clients_per_round": 6})
    assert cfg.resources.client_num_gpus == "auto"  # the default
    laptop = [load_device_profile("laptop")]
    # Before (or without) a measurement, auto is the profile's num_gpus: 0 for laptop
    (group,), _ = plan_groups(cfg, laptop, 16.0, free_gpus=1.0)
    assert (group.resources.num_gpus, group.size) == (0.0, 6)
    # 0.25 each: one GPU holds 4, although 16 CPUs would fit 6
    (group,), _ = plan_groups(cfg, laptop, 16.0, free_gpus=1.0, gpu_share=0.25)
    assert (group.resources.num_gpus, group.size) == (0.25, 4)
    # an explicit value wins over a measurement
    fixed = _cfg(**{"federation.clients_per_round": 6, "resources.client_num_gpus": 0.5})
    (group,), _ = plan_groups(fixed, laptop, 16.0, free_gpus=1.0, gpu_share=0.25)
    assert (group.resources.num_gpus, group.size) == (0.5, 2)


def test_auto_packs_only_with_a_whole_gpu_free_and_whole_models() -> None:
    assert packs_gpus(_cfg(), 1.0) and packs_gpus(_cfg(**{"algorithm": "fedpt"}), 8.0)
    assert not packs_gpus(_cfg(), 0.0)  # a CPU-only cluster: clients train on CPUs
    assert not packs_gpus(_cfg(), 0.5)  # the probe needs a whole GPU
    assert not packs_gpus(_cfg(**{"resources.client_num_gpus": 0.25}), 1.0)  # explicit
    assert not packs_gpus(_cfg(**{"resources.client_num_gpus": None}), 1.0)  # the profiles'


def _runtime(**extra: object) -> tuple[ClientRuntime, object]:
    cfg = _cfg(**extra)
    prep = prepare(cfg)
    return ClientRuntime(worker_spec(cfg, prep), prep.train, prep.test), prep


def test_the_probe_trains_one_step_on_the_longest_rows_and_estimates_its_memory() -> None:
    runtime, prep = _runtime()
    probe = runtime.probe_memory(prep.train_spec)
    assert probe.device_peak_bytes is None and probe.device_total_bytes is None  # on a CPU
    fixed = memory_estimate(runtime.total, runtime.trainable)  # params, grads, Adam state
    activations = probe.estimate_bytes - fixed
    assert activations > 0
    # the longest rows make the largest batch: any other batch of the same size saves less
    rt2, _ = _runtime()
    shortest = np.argsort(prep.train.lengths, kind="stable")[: prep.train_spec.batch_size]
    task = ClientTask(1, 0, shortest, 0, prep.train_spec)
    small = rt2.train_client(task, rt2.initial_state())
    assert small.train.activation_bytes < activations


def test_a_client_out_of_memory_fails_alone_and_the_worker_goes_on(monkeypatch) -> None:
    import engine.client

    runtime, prep = _runtime()
    blob = runtime.initial_state()
    task = ClientTask(1, 3, prep.parts[3], 7, prep.train_spec)
    expected = runtime.train_client(task, blob)
    real = engine.client.local_train

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine.client, "local_train", oom)
    with pytest.raises(ClientOutOfMemory, match=r"client 3 \(round 1\) ran out of"):
        runtime.train_client(task, blob)
    monkeypatch.setattr(engine.client, "local_train", real)
    again = runtime.train_client(task, blob)  # same task, same result: nothing left over
    assert again.blob == expected.blob


def _capped_worker(rank: int, share: float, out) -> None:
    """A process like a client worker given `share` of GPU 0: capped, trains, then overreaches."""
    from engine.device import cap_gpu_memory

    cap = cap_gpu_memory(share)
    runtime, prep = _runtime()
    task = ClientTask(1, rank, prep.parts[rank], rank, prep.train_spec)
    res = runtime.train_client(task, runtime.initial_state())
    total = torch.cuda.get_device_properties(0).total_memory
    try:  # more than the cap in one tensor
        torch.empty(int(cap * total) + 2**20, dtype=torch.uint8, device="cuda")
        refused = False
    except torch.OutOfMemoryError:
        refused = True
    out.put((rank, cap, res.device_peak_bytes, total, refused))


@pytest.mark.cuda
def test_four_capped_workers_share_one_gpu() -> None:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_capped_worker, args=(r, 0.25, out)) for r in range(4)]
    for p in procs:
        p.start()
    rows = sorted(out.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for rank, cap, peak, total, refused in rows:
        assert cap == pytest.approx(memory_cap(0.25, total)), rank
        assert 0 < peak <= cap * total, rank  # trained inside its share
        assert refused, rank  # and could not take more than it


@pytest.mark.cuda
def test_the_probe_measures_a_step_on_the_gpu() -> None:
    runtime, prep = _runtime()
    probe = runtime.probe_memory(prep.train_spec)
    assert probe.device_total_bytes == torch.cuda.get_device_properties(0).total_memory
    # torch's peak holds the weights (all of them, fp32) at least
    assert runtime.total * 4 <= probe.device_peak_bytes < probe.device_total_bytes
    share = pack_gpu(probe.device_peak_bytes, probe.device_total_bytes)
    assert share.per_gpu >= 1


def test_an_error_found_when_the_pool_starts_leaves_no_run_dir(tmp_path: Path) -> None:
    """A measured client step that fits no GPU is found after the run directory was made: it goes."""
    from actors.launch import start_run
    from engine.backend import LocalBackend

    class Refusing(LocalBackend):
        def start(self, *args, **kwargs) -> None:
            raise ConfigError("resources.client_num_gpus", "one client step needs 90 GiB")

    with pytest.raises(ConfigError, match="90 GiB"):
        start_run(_cfg(), out=str(tmp_path / "run"), backend=Refusing())
    assert not (tmp_path / "run").exists()
