"""Multi-node: client workers spread over a real 4-node Ray cluster on this machine; a node removed
mid-run is survived (its worker is replaced on a live node, its client retried with the same seed),
and every metric equals the same run in process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_node_removed_mid_run_is_survived_exactly(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "RAY_AUTH_MODE": "disabled",
    }
    env.pop("RAY_ADDRESS", None)  # its own cluster, not the shared test session
    proc = subprocess.run(
        [sys.executable, str(HERE / "multinode_run.py"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["worker_nodes"]) >= 3  # one worker per node: they really spread
    assert len(out["removed"]) == 1 and out["removed"][0] in out["worker_nodes"]
    cluster, local = out["cluster"], out["local"]
    assert [r["round"] for r in cluster] == [1, 2, 3, 4]
    assert all(r["clients/failed"] == 0 for r in cluster)
    assert cluster[-1]["clients/workers_replaced"] >= 1  # the lost node's worker was replaced

    def strip(rs: list[dict]) -> list[dict]:
        drop = ("clients/retried", "clients/workers_replaced")
        return [{k: v for k, v in r.items() if "wall" not in k and k not in drop} for r in rs]

    assert strip(cluster) == strip(local)
