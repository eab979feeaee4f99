"""Pool sizing: as many workers as the cluster fits, never more than clients per round."""

from __future__ import annotations

from actors.pool import pool_size


def test_pool_size() -> None:
    assert pool_size("auto", clients_per_round=4, cpus=2.0, per_worker=1.0) == 2
    assert pool_size("auto", clients_per_round=4, cpus=16.0, per_worker=1.0) == 4
    assert pool_size("auto", clients_per_round=20, cpus=2.0, per_worker=0.5) == 4
    assert pool_size("auto", clients_per_round=4, cpus=0.5, per_worker=1.0) == 1
    assert pool_size(3, clients_per_round=4, cpus=2.0, per_worker=1.0) == 3
