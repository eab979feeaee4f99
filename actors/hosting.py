"""Algorithm servers in Ray actors of their own: SFPrompt's body (actors/body_group.py) and FedPT's
black-box host (actors/lm_server.py), each with the CPUs and GPUs its config section asks for."""

from __future__ import annotations

from typing import Any

import ray

from actors.body_group import RayBodyServer
from actors.lm_server import FedPTHost, FedPTHostLink
from actors.placement import server_placement
from engine.algorithms.base import RoundServer
from engine.split.server import ServerSpec


class RayHosting:
    def body_server(self, factory, spec: ServerSpec, cfg: Any) -> RoundServer:
        v = cfg.server
        return RayBodyServer(
            factory, spec, v.num_cpus, v.num_gpus, v.torch_threads, cfg.resources.task_timeout_s
        )

    def fedpt_server(self, cfg: Any, prep: Any, factory, blackbox: dict) -> tuple[str, RoundServer]:
        f = cfg.fedpt
        data = (prep.public, prep.public_rows, prep.test, prep.pad_id)
        data_ref = ray.put(data)  # held by `start`: every host (a replacement too) reads it
        cpus, gpus = f.server_num_cpus, f.server_num_gpus
        host = FedPTHost.options(num_cpus=cpus, num_gpus=gpus, **server_placement(cpus, gpus))
        threads = cfg.resources.torch_threads
        server = FedPTHostLink(
            lambda: host.remote(cfg, data_ref, factory, blackbox, threads),
            cfg.resources.task_timeout_s,
        )
        return server.small_model, server
