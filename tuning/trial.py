"""One Tune trial = one whole fedray run, its actors reserved in the trial's placement group."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from actors.groups import plan_groups
from actors.launch import resume_run, start_run
from engine.algorithms import get_algorithm
from engine.clock import assign_profiles
from engine.config import RunConfig
from engine.errors import ConfigError
from engine.rundir import CONFIG, read_metrics
from tuning.score import TUNE_SCORE, score
from tuning.sweep import SweepConfig, trial_config

RUN = "run"  # the trial's fedray run directory, under the trial's folder


def trial_workers(sweep: SweepConfig, cfg: RunConfig) -> int:
    """Client workers one trial starts: the sweep's choice, the experiment's, or clients per round."""
    if sweep.trial.workers is not None:
        return min(sweep.trial.workers, cfg.federation.clients_per_round)
    n = cfg.resources.num_workers
    return (
        min(int(n), cfg.federation.clients_per_round)
        if n != "auto"
        else cfg.federation.clients_per_round
    )


def trial_bundles(sweep: SweepConfig, cfg: RunConfig) -> list[dict[str, float]]:
    """The placement group: [trial driver, server (if any), one bundle per client worker].

    Client workers come in device groups (actors/groups.py), each bundle its group's request. The
    run pins its actors to these bundles by this order (actors/placement.py).
    """
    bundles = [{"CPU": sweep.trial.driver_cpus}]
    server = get_algorithm(cfg.algorithm).server(cfg).bundle()
    if server:
        bundles.append(server)
    profiles = assign_profiles(
        cfg.devices.mix, cfg.resources.device_profile, cfg.federation.num_clients, cfg.seed
    )
    workers = trial_workers(sweep, cfg)
    needed = len(plan_groups(cfg, profiles, None, "auto")[0])  # one worker per device group
    if workers < needed:
        raise ConfigError(
            "trial.workers",
            f"{workers} is fewer than the experiment's device groups ({needed}: devices with "
            "different Ray requests); use >= that, null, or set resources.client_num_cpus in "
            "overrides to give every device the same request",
        )
    groups, _ = plan_groups(cfg, profiles, None, workers)
    return bundles + [g.resources.bundle() for g in groups for _ in range(g.size)]


def trial_resources(sweep: SweepConfig, cfg: RunConfig):
    """The run's resources inside a trial: the trial's worker count, and the profiles' GPU requests
    for `client_num_gpus: auto` (the placement group was reserved from them, trial_bundles, before
    anything could measure a client step and pack)."""
    gpus = cfg.resources.client_num_gpus
    return cfg.resources.model_copy(
        update={
            "num_workers": trial_workers(sweep, cfg),
            "client_num_gpus": None if gpus == "auto" else gpus,
        }
    )


def run_trial(params: dict[str, Any], sweep: SweepConfig, sweep_dir: str) -> None:
    """The Tune function trainable: run (or, after a restore, resume) the trial's fedray run."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(sweep, params)
    # The trial's placement group was reserved before anything ran, from the profiles' GPU
    # requests (trial_bundles): `client_num_gpus: auto` cannot measure and pack here, so it is that.
    gpus = cfg.resources.client_num_gpus
    resources = {
        "num_workers": trial_workers(sweep, cfg),
        "client_num_gpus": None if gpus == "auto" else gpus,
    }
    updates = {"wandb": cfg.wandb.model_copy(update={"mode": "disabled"}),  # Tune's callback logs
               "resources": cfg.resources.model_copy(update=resources)}  # fmt: skip
    cfg = cfg.model_copy(update=updates)
    run_dir = Path(sweep_dir) / "trials" / trial_id / RUN
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    (run_dir.parent / "params.json").write_text(json.dumps(params, indent=1) + "\n")
    reports = TuneReports(sweep, run_dir)

    def report(record: dict[str, Any]) -> None:
        out = reports(record)
        if out is not None:
            tune.report(out)

    if (run_dir / CONFIG).is_file():  # a restored sweep: the run continues from its checkpoint
        resume_run(run_dir, on_round=report)  # (or from round 1 when none finished)
    else:
        start_run(cfg, out=str(run_dir), on_round=report)


class TuneReports:
    """What a trial tells Tune after each round: nothing but on evaluation rounds (ASHA compares
    trials there), then the latest value of every series and, with a score window over 1, the
    running score (the mean of the metric's last `score_window` values so far), which Tune ranks
    by (tune_metric). A resumed trial starts from the values its run directory already holds."""

    def __init__(self, sweep: SweepConfig, run_dir: Path) -> None:
        self.metric, self.window = sweep.metric, sweep.score_window
        self.latest: dict[str, Any] = {}
        self.values = {
            r["round"]: r[self.metric] for r in read_metrics(run_dir) if self.metric in r
        }

    def __call__(self, record: dict[str, Any]) -> dict[str, Any] | None:
        self.latest.update(record)
        if self.metric not in record:
            return None
        now = record["round"]
        self.values[now] = record[self.metric]  # a resumed round replaces its value
        out = {**self.latest, "round": now}
        if self.window > 1:
            so_far = [self.values[r] for r in sorted(self.values) if r <= now]
            out[TUNE_SCORE] = score(so_far, self.window)
        return out
