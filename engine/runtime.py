"""The runtime a client worker hosts, chosen from its spec: a whole model (engine/client.py) or
SFPrompt's split client (engine/split/client.py, which builds on the first)."""

from __future__ import annotations

from typing import Any

from engine.client import ClientRuntime, WorkerSpec
from engine.data.batching import Encoded
from engine.split.client import SplitClientRuntime


def make_runtime(
    spec: WorkerSpec, train: Encoded, test: Encoded, link: Any = None
) -> ClientRuntime | SplitClientRuntime:
    """A whole model (FedAvg, FedPT's clients) or a split client model (SFPrompt: `spec.split`)."""
    if spec.split is None:
        return ClientRuntime(spec, train, test)
    return SplitClientRuntime(spec, spec.split, train, test, link)
