"""actors/cluster.py: a Ray process that asked for no GPU sees none, whatever the Ray version."""

from __future__ import annotations

import os


def test_a_process_without_a_gpu_request_sees_no_gpu(ray_session) -> None:
    from actors.cluster import hide_unassigned_gpus

    @ray_session.remote(num_cpus=0.1, num_gpus=0)
    def visible_after_hiding() -> tuple[str | None, bool]:
        os.environ["CUDA_VISIBLE_DEVICES"] = "0,1"  # as a node with 2 GPUs would leave it
        hide_unassigned_gpus()
        import torch

        return os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.is_available()

    assert ray_session.get(visible_after_hiding.remote(), timeout=60) == ("", False)
