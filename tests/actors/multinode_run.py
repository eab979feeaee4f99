"""Run by tests/actors/test_multinode.py in its own process: a 4-node Ray cluster on one machine
(ray.cluster_utils.Cluster), three client workers spread one per node, a node removed after round 1.

Prints one JSON line: the nodes the workers ran on, and the per-round records of the run on the
cluster and of the same config in process (the reference)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from actors.launch import start_run  # noqa: E402
from engine.backend import LocalBackend  # noqa: E402
from engine.config import load_config  # noqa: E402
from tests.conftest import tiny_overrides  # noqa: E402


def main(out: Path) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    over = tiny_overrides(**{"federation.rounds": 4, "resources.num_workers": 3,
                             "resources.client_num_cpus": 1, "resources.task_timeout_s": 120})  # fmt: skip
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", over)
    seen: dict[str, str] = {}
    removed: list[str] = []

    def after_round(record: dict) -> None:
        """After round 1: note where the workers run, then remove a node hosting one (its
        worker dies with it; round 2 sends that worker a client and must recover)."""
        if record["round"] != 1:
            return
        # the GCS actor table (the state API needs the dashboard, which runs are started without)
        for actor_id, a in ray._private.state.actors().items():
            if a["ActorClassName"] == "ClientWorker" and a["State"] == "ALIVE":
                seen[actor_id] = a["Address"]["NodeID"]
        victim = next(n for n in nodes if n.node_id in set(seen.values()))
        cluster.remove_node(victim, allow_graceful=False)
        removed.append(victim.node_id)

    run = start_run(cfg, out=str(out / "cluster"), on_round=after_round)
    ray.shutdown()
    cluster.shutdown()
    ref = start_run(cfg, out=str(out / "local"), backend=LocalBackend())
    read = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    print(json.dumps({"worker_nodes": sorted(set(seen.values())), "removed": removed,
                      "cluster": read(run), "local": read(ref)}))  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]))
