"""Where an algorithm's server runs: beside the clients of an in-process backend, or (actors/
hosting.py) in a Ray actor of its own. A backend carries its hosting; an algorithm asks it for its
server, so no algorithm knows which backend it runs on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from engine.algorithms.base import RoundServer
from engine.device import local_device
from engine.lm.blackbox import BlackBoxLM, LocalLMLink
from engine.lm.server import FedPTServer, LocalFedPTServer
from engine.lm.small import small_model_path
from engine.split.local import LocalBodyServer
from engine.split.server import ServerSpec


class Hosting(Protocol):
    def body_server(
        self, factory: Callable[[], torch.nn.Module], spec: ServerSpec, cfg: Any
    ) -> RoundServer: ...  # SFPrompt's frozen body, serving the clients' split steps

    def fedpt_server(
        self, cfg: Any, prep: Any, factory: Callable[[], torch.nn.Module], blackbox: dict
    ) -> tuple[str, RoundServer]: ...  # (the clients' small LM, FedPT's server with the black box)


class LocalHosting:
    """Servers in this process, on its device (in-process runs, debugging, tests)."""

    def body_server(self, factory, spec: ServerSpec, cfg: Any) -> RoundServer:
        return LocalBodyServer(factory, spec)

    def fedpt_server(self, cfg: Any, prep: Any, factory, blackbox: dict) -> tuple[str, RoundServer]:
        # the thread count FedPT's Ray host uses: the emulator it builds (and caches) is then the same
        # float for float, whichever process built it first
        torch.set_num_threads(cfg.resources.torch_threads)
        device = local_device()
        small = small_model_path(cfg, prep.public, prep.public_rows, prep.pad_id, device)
        link = LocalLMLink(BlackBoxLM(factory(), **blackbox))
        data = (prep.public, prep.public_rows, prep.test, prep.pad_id)
        return small, LocalFedPTServer(FedPTServer(cfg, small, link, *data, device=device))
