"""Which bundle of a Tune trial's placement group each of the run's actors takes.

A trial reserves [its driver, the algorithm's server (when it asks for resources), one bundle per
client worker] (tuning/trial.py, trial_bundles), and its actors are created inside that group. Left
to choose, Ray puts an actor in any bundle with room: a server asking for 0.5 CPU could take half of
a worker's 1-CPU bundle and leave that worker pending for ever. So the server is pinned to bundle 1
and worker slot w to the w-th of the last bundles. Outside a placement group (a plain run) these
options are empty and Ray schedules as it always did.
"""

from __future__ import annotations

from typing import Any

from engine.algorithms.base import ServerRequest

SERVER_BUNDLE = 1  # after the trial driver's bundle 0


def _current() -> Any:
    """The placement group this process's new actors are created in, or None."""
    import ray

    return ray.util.get_current_placement_group()


def _pinned(pg: Any, index: int) -> dict[str, Any]:
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    strategy = PlacementGroupSchedulingStrategy(
        pg, placement_group_bundle_index=index, placement_group_capture_child_tasks=True
    )
    return {"scheduling_strategy": strategy}


def server_placement(num_cpus: float, num_gpus: float) -> dict[str, Any]:
    """Actor options for the algorithm's server: its own bundle, which a trial reserves only for a
    server that asks for resources (one that asks for none fits anywhere)."""
    pg = _current()
    reserved = ServerRequest(num_cpus, num_gpus).bundle()  # as tuning/trial.py reserved it
    return _pinned(pg, SERVER_BUNDLE) if pg is not None and reserved else {}


def worker_placement(slot: int, num_workers: int) -> dict[str, Any]:
    """Actor options for client worker `slot` of `num_workers`: the workers' bundles come last, in
    slot order (group by group, as actors/pool.py numbers its slots)."""
    pg = _current()
    return _pinned(pg, pg.bundle_count - num_workers + slot) if pg is not None else {}
