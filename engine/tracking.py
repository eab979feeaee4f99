"""Weights & Biases tracking of a run: offline by default, online when configured, off when disabled."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.versions import stack_versions


class Tracker:
    """One W&B run per fedray run: config, per-round metrics, the final trainable weights as an artifact."""

    def __init__(self, cfg, run_dir: Path) -> None:
        self.run = None
        self.cfg = cfg
        self.run_dir = run_dir
        mode = os.environ.get("WANDB_MODE") or cfg.wandb.mode
        if mode == "disabled":
            return
        import wandb

        self.run = wandb.init(
            project=cfg.wandb.project,
            entity=cfg.wandb.entity,
            name=run_dir.name,
            dir=str(run_dir),
            mode=mode,
            # the versions make runs of different stacks tell apart (and filter) in W&B
            config={**cfg.model_dump(mode="json"), "versions": stack_versions()},
            reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off"),
        )

    def log(self, record: dict[str, Any]) -> None:
        if self.run is not None:
            flat = {k: v for k, v in record.items() if isinstance(v, int | float)}
            self.run.log(flat, step=int(record["round"]))

    def finish(self, summary: dict[str, Any], state_blob: bytes) -> None:
        if self.run is None:
            return
        import wandb

        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, int | float)})
        if self.cfg.wandb.log_artifact:
            path = self.run_dir / "final_trainable.safetensors"
            path.write_bytes(state_blob)
            art = wandb.Artifact(f"{self.run_dir.name}-trainable", type="model")
            art.add_file(str(path))
            self.run.log_artifact(art)
        self.run.finish()
        self.run = None
