"""Worker groups: one per device resource request, sized to the cluster, clients routed to theirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.groups import WorkerGroup, WorkerResources, describe_groups, plan_groups
from engine.clock import assign_profiles, load_device_profile
from engine.config import load_config
from engine.errors import ConfigError
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]


def _cfg(**extra: object):
    return load_config(ROOT / "configs" / "quickstart.yaml", tiny_overrides(**extra))


def _sizes(cfg, free: float | None, requested=None, n: int = 6) -> list[tuple[str, float, int]]:
    profiles = assign_profiles(cfg.devices.mix, cfg.resources.device_profile, n, cfg.seed)
    groups, _ = plan_groups(cfg, profiles, free, requested)
    return [("/".join(g.devices), g.resources.num_cpus, g.size) for g in groups]


def test_one_device_sizes_the_pool_like_a_uniform_pool() -> None:
    four = _cfg(**{"federation.clients_per_round": 4})
    assert _sizes(four, 2.0) == [("laptop", 1.0, 2)]  # the cluster fits two 1-CPU workers
    assert _sizes(four, 16.0) == [("laptop", 1.0, 4)]  # never more than clients per round
    assert _sizes(four, 0.5) == [("laptop", 1.0, 1)]  # at least one (Ray queues it)
    assert _sizes(four, 2.0, requested=3) == [("laptop", 1.0, 3)]
    half = _cfg(**{"federation.num_clients": 20, "federation.clients_per_round": 20,
                   "resources.client_num_cpus": 0.5})  # fmt: skip
    assert _sizes(half, 2.0, n=20) == [("laptop", 0.5, 4)]


def test_each_device_group_requests_its_profile_and_grows_by_clients_per_worker() -> None:
    cfg = _cfg(
        **{"devices.mix": "{phone-low: 0.5, laptop: 0.5}", "federation.clients_per_round": 6}
    )
    # One worker each (0.25 + 1 CPU), then 0.75 CPU left: the laptop group (3 clients / 2 workers
    # would be 1.5 per worker) does not fit, so phones get workers until the CPUs run out:
    # 0.75 / 0.25 = 3 more phone workers.
    assert _sizes(cfg, 2.0) == [("phone-low", 0.25, 4), ("laptop", 1.0, 1)]
    # With room, each step goes to the group with the most clients per worker (ties: first group).
    assert _sizes(cfg, 100.0) == [("phone-low", 0.25, 3), ("laptop", 1.0, 3)]
    assert _sizes(cfg, None, requested=3) == [("phone-low", 0.25, 2), ("laptop", 1.0, 1)]


def test_devices_with_the_same_request_share_a_group_and_clients_map_to_theirs() -> None:
    mix = "{phone-mid: 1, raspberry-pi-4: 1, laptop: 2}"
    cfg = _cfg(**{"devices.mix": mix, "federation.num_clients": 8})
    profiles = assign_profiles(cfg.devices.mix, "laptop", 8, cfg.seed)
    groups, client_group = plan_groups(cfg, profiles, 100.0)
    assert [g.devices for g in groups] == [("phone-mid", "raspberry-pi-4"), ("laptop",)]
    for p, g in zip(profiles, client_group, strict=True):
        assert p.name in groups[g].devices
        assert groups[g].resources.num_cpus == p.num_cpus
    assert describe_groups(groups).startswith("2 x phone-mid/raspberry-pi-4 (0.5 CPU); ")


def test_explicit_requests_override_every_profile() -> None:
    cfg = _cfg(**{"devices.mix": "{phone-low: 1, laptop: 1}", "resources.client_num_cpus": 0.5,
                  "resources.client_num_gpus": 0.25, "resources.client_memory_mb": 512})  # fmt: skip
    profiles = assign_profiles(cfg.devices.mix, "laptop", 6, cfg.seed)
    (group,), client_group = plan_groups(cfg, profiles, 2.0)
    assert client_group == [0] * 6 and group.size == 3
    assert group.resources.bundle() == {"CPU": 0.5, "GPU": 0.25, "memory": 512.0 * 2**20}
    assert group.resources.ray_options() == {"num_cpus": 0.5, "num_gpus": 0.25,
                                             "memory": 512 * 2**20}  # fmt: skip


def test_reserve_memory_asks_ray_for_the_device_memory() -> None:
    cfg = _cfg(**{"devices.reserve_memory": True})
    (group,), _ = plan_groups(cfg, [load_device_profile("laptop")], 2.0)
    assert group.resources.memory_bytes == 8192 * 2**20
    assert group.resources.describe() == "1 CPU, 8192 MiB"


def test_too_small_a_cluster_or_too_few_workers_is_a_config_error() -> None:
    cfg = _cfg(**{"devices.mix": "{phone-low: 1, laptop: 1}"})
    with pytest.raises(ConfigError) as err:
        _sizes(cfg, 1.0)  # one worker per group needs 1.25 CPUs
    assert err.value.key == "devices.mix" and "needs 1.25 CPUs" in err.value.message
    assert "phone-low: 0.25 CPU; laptop: 1 CPU" in err.value.message
    with pytest.raises(ConfigError) as err:
        _sizes(cfg, 8.0, requested=1)
    assert err.value.key == "resources.num_workers" and "use >= 2" in err.value.message


def test_clients_train_on_workers_of_their_device_and_the_numbers_do_not_change(
    ray_session, tmp_path: Path
) -> None:
    import json

    from actors.launch import make_backend, start_run
    from engine.prepare import prepare

    mix = {"devices.mix": "{phone-low: 0.5, laptop: 0.5}", "devices.use_availability": False}
    cfg = _cfg(**mix)
    backend = make_backend(cfg, profiles=prepare(cfg).profiles)
    assert [(g.devices, g.size) for g in backend.groups] == [(("phone-low",), 2), (("laptop",), 1)]
    seen: dict[int, dict[str, float]] = {}

    def where(record: dict) -> None:  # workers are alive while a round's record is handed out
        for client, slot in backend.last_slots.items():
            seen[client] = ray_session.get(backend.workers[slot].resources.remote())

    grouped = start_run(cfg, out=str(tmp_path / "grouped"), backend=backend, on_round=where)
    devices = [c["device"] for c in json.loads((grouped / "partition.json").read_text())["clients"]]
    assert seen and all(
        res == {"CPU": {"phone-low": 0.25, "laptop": 1.0}[devices[c]]} for c, res in seen.items()
    )
    assert {devices[c] for c in seen} == {"phone-low", "laptop"}
    uniform = start_run(
        _cfg(**mix, **{"resources.client_num_cpus": 0.5}), out=str(tmp_path / "uniform")
    )

    def numbers(run: Path) -> list[dict]:
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if "wall" not in k} for r in rows]

    assert numbers(grouped) == numbers(uniform)  # a client's result never depends on its worker


def test_a_worker_no_node_can_hold_is_refused_with_its_key() -> None:
    from actors.groups import check_placeable

    totals = {"CPU": 2.0, "memory": 4.0 * 2**30}
    cfg = _cfg(**{"resources.client_num_gpus": 0.5})
    (group,), _ = plan_groups(cfg, [load_device_profile("laptop")], 2.0)
    with pytest.raises(ConfigError) as err:
        check_placeable(cfg, [group], totals)  # no GPU at all
    assert err.value.key == "resources.client_num_gpus"
    assert "a laptop worker asks for 0.5 GPU but this Ray has 0" in err.value.message
    cfg = _cfg(**{"devices.reserve_memory": True})  # 8 GiB laptops on a 4 GiB Ray
    (group,), _ = plan_groups(cfg, [load_device_profile("laptop")], 2.0)
    with pytest.raises(ConfigError) as err:
        check_placeable(cfg, [group], totals)
    assert err.value.key == "devices.reserve_memory" and "8192 MiB memory" in err.value.message
    fits = WorkerGroup(WorkerResources(num_cpus=2.0, memory_bytes=2**30, num_gpus=0.0), 3, ())
    check_placeable(_cfg(), [fits], totals)  # each worker fits (Ray may queue the third)


def test_auto_sizing_stops_at_the_free_gpus() -> None:
    cfg = _cfg(**{"federation.clients_per_round": 6, "resources.client_num_gpus": 0.25})
    laptop = [load_device_profile("laptop")]
    # 16 CPUs would fit 6 one-CPU workers; 1 free GPU fits 1 / 0.25 = 4 of them.
    (group,), _ = plan_groups(cfg, laptop, 16.0, free_gpus=1.0)
    assert group.size == 4
    # A server holding 0.5 of the 1 GPU leaves room for 2; CPUs still bound: 3 CPUs -> 3.
    assert plan_groups(cfg, laptop, 16.0, free_gpus=0.5)[0][0].size == 2
    assert plan_groups(cfg, laptop, 3.0, free_gpus=8.0)[0][0].size == 3
    # Workers that ask for no GPU ignore the GPU budget, even one a server overdraws.
    cpu_only = _cfg(**{"federation.clients_per_round": 6})
    assert plan_groups(cpu_only, laptop, 16.0, free_gpus=-1.0)[0][0].size == 6


def test_workers_and_server_beyond_the_gpus_are_refused_with_their_key() -> None:
    from actors.groups import check_placeable

    totals = {"CPU": 16.0, "GPU": 1.0}
    laptop = [load_device_profile("laptop")]
    cfg = _cfg(**{"resources.client_num_gpus": 0.5, "resources.num_workers": 3})
    (group,), _ = plan_groups(cfg, laptop, 16.0, free_gpus=1.0)
    assert group.size == 3  # an explicit count is taken as asked...
    with pytest.raises(ConfigError) as err:
        check_placeable(cfg, [group], totals)  # ...and refused: 3 x 0.5 = 1.5 > 1
    assert err.value.key == "resources.num_workers"
    assert "client workers ask for 3 x 0.5 = 1.5 GPUs but this Ray has 1" in err.value.message
    two = _cfg(**{"resources.client_num_gpus": 0.5, "resources.num_workers": 2})
    (group,), _ = plan_groups(two, laptop, 16.0)
    check_placeable(two, [group], totals)  # 2 x 0.5 = 1: exactly fits
    with pytest.raises(ConfigError, match=r"1 GPUs \+ 0.25 for the server \(server.num_gpus\)"):
        check_placeable(two, [group], totals, server_gpus=0.25)


def test_a_cluster_too_small_for_the_groups_writes_no_run_dir(ray_session, tmp_path: Path) -> None:
    from actors.launch import start_run

    big = tmp_path / "big.yaml"  # two devices of 1.5 CPUs: one worker each needs 3 of the 2 CPUs
    big.write_text("flops_per_s: 1.0e+9\nmemory_mb: 4096\nuplink_mbps: 10\ndownlink_mbps: 10\n"
                   "num_cpus: 1.5\n")  # fmt: skip
    cfg = _cfg(**{"devices.mix": f"{{{big}: 1, laptop: 1}}"})
    with pytest.raises(ConfigError) as err:
        start_run(cfg, out=str(tmp_path / "run"))
    assert err.value.key == "devices.mix" and "needs 2.5 CPUs" in err.value.message
    assert not (tmp_path / "run").exists()
