"""A trial's actors take the bundles reserved for them, whatever size each asks for."""

from __future__ import annotations

import pytest

from actors.placement import server_placement, worker_placement

pytestmark = pytest.mark.usefixtures("ray_session")


def _probe(num_cpus: float):
    """An actor class that reports the bundle it holds: Ray names a placement group's resources
    CPU_group_<bundle>_<group id> (besides CPU_group_<group id>, the group as a whole)."""
    import ray

    @ray.remote(num_cpus=num_cpus)
    class Probe:
        def bundle(self) -> int:
            ids = ray._private.worker.global_worker.core_worker.resource_ids()
            (index,) = {int(k.split("_")[2]) for k in ids if k.count("_") == 3 and "_group_" in k}
            return index

    return Probe


def _in_group(bundles: list[dict[str, float]], make) -> list[int]:
    """Run make() (which starts actors and returns what they report) in bundle 0 of a fresh
    placement group, as a Tune trial's driver runs in its trial's."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = placement_group(bundles)
    ray.get(pg.ready(), timeout=60)
    try:
        driver = ray.remote(num_cpus=bundles[0]["CPU"])(make).options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0, True)
        )
        return ray.get(driver.remote(), timeout=120)
    finally:
        remove_placement_group(pg)


def test_a_server_smaller_than_a_worker_leaves_the_worker_its_bundle() -> None:
    import ray

    def trial() -> list[int]:
        # the server first, as FedPT and SFPrompt start it: unpinned, Ray may put its 0.5 CPU in
        # the worker's 1-CPU bundle and the worker then waits for ever
        server = _probe(0.5).options(**server_placement(0.5, 0)).remote()
        worker = _probe(1.0).options(**worker_placement(0, 1)).remote()
        return ray.get([server.bundle.remote(), worker.bundle.remote()], timeout=60)

    assert _in_group([{"CPU": 0.5}, {"CPU": 0.5}, {"CPU": 1.0}], trial) == [1, 2]


def test_workers_take_the_last_bundles_in_slot_order() -> None:
    import ray

    def trial() -> list[int]:
        # no server bundle: two workers after the driver's; a server asking for nothing is not pinned
        assert server_placement(0, 0) == {}
        workers = [_probe(0.25).options(**worker_placement(w, 2)).remote() for w in (1, 0)]
        return ray.get([w.bundle.remote() for w in workers], timeout=60)

    assert _in_group([{"CPU": 0.5}, {"CPU": 0.25}, {"CPU": 0.25}], trial) == [2, 1]


def test_outside_a_placement_group_ray_schedules_as_before() -> None:
    assert server_placement(0.5, 0) == {}
    assert worker_placement(0, 4) == {}
