"""Sweep files: schema errors, search-space checks, metric checks and placement sizing (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.errors import ConfigError
from tuning.sweep import axes, grid_size, load_sweep, reported_metrics, with_seeds
from tuning.trial import trial_bundles
from tuning.tune import check_fits, search_alg

ROOT = Path(__file__).resolve().parents[2]
SFPROMPT = ROOT / "configs" / "sfprompt" / "amazon_reviews.yaml"


def sweep_file(tmp_path: Path, **fields) -> Path:
    raw = {
        "name": "t",
        "base": str(SFPROMPT),
        "space": {
            "pruning.keep_ratio": {"grid": [0.5, 1.0]},
            "split.prompt_length": {"grid": [0, 4]},
        },
        "metric": "eval/accuracy",
        **fields,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_good_sweep_loads_with_its_base_and_grid(tmp_path: Path) -> None:
    sweep, base = load_sweep(sweep_file(tmp_path, num_samples=3))
    assert base.algorithm == "sfprompt" and grid_size(sweep) == 2 * 2 * 3
    assert Path(sweep.base) == SFPROMPT.resolve()


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"space": {"pruning.keep_ratoi": {"grid": [0.5]}}}, "space.pruning.keep_ratoi"),
        ({"space": {"pruning.keep_ratio": {"grid": [0.5, 1.5]}}}, "space.pruning.keep_ratio"),
        ({"space": {"train.lr": {"loguniform": [0, 1e-2]}}}, "space.train.lr"),
        ({"space": {"train.lr": {"uniform": [1e-2, 1e-3]}}}, "space.train.lr"),
        ({"space": {"train.lr": {"gird": [1e-2]}}}, "space.train.lr"),
        ({"space": {"split.prompt_length": {"randint": [0, 9999]}}}, "space.split.prompt_length"),
        ({"space": {}}, "space"),
        ({"metric": "eval/perplexity"}, "metric"),
        ({"mode": "maximum"}, "mode"),
        ({"base": "nope.yaml"}, "base"),
        ({"overrides": {"federation.rounds": -1}}, "overrides.federation.rounds"),
        ({"trial": {"driver_cpus": 0}}, "trial.driver_cpus"),
        ({"seeds": []}, "seeds"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"seeds": [-1]}, "seeds"),
        ({"seeds": ["a"]}, "seeds.0"),
        ({"seeds": list(range(1001))}, "seeds"),
        ({"seeds": [0], "space": {"seed": {"grid": [1, 2]}}}, "space.seed"),
        ({"score_window": 0}, "score_window"),
        ({"score_window": 10**9}, "score_window"),
    ],
)
def test_bad_sweeps_name_the_key(tmp_path: Path, fields: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_sweep(sweep_file(tmp_path, **fields))
    assert err.value.key == key, err.value


def test_the_score_window_is_bounded_by_the_values_a_run_reports(tmp_path: Path) -> None:
    # 5 rounds, evaluated every 2 and after the last: rounds 2, 4 and 5
    fixed = {"federation.rounds": 5, "eval.every": 2}
    sweep, _ = load_sweep(sweep_file(tmp_path, overrides=fixed, score_window=3))
    assert sweep.score_window == 3
    with pytest.raises(ConfigError, match=r"more than the 3 value\(s\).*use 1 to 3") as err:
        load_sweep(sweep_file(tmp_path, overrides=fixed, score_window=4))
    assert err.value.key == "score_window"
    # train/loss is reported every round
    sweep, _ = load_sweep(
        sweep_file(tmp_path, overrides=fixed, metric="train/loss", mode="min", score_window=5)
    )
    assert sweep.score_window == 5


def test_seeds_multiply_the_grid_and_name_an_axis(tmp_path: Path) -> None:
    sweep, base = load_sweep(sweep_file(tmp_path, seeds=[3, 5, 7], num_samples=2))
    assert grid_size(sweep) == 2 * 2 * 3 * 2
    assert axes(sweep) == ["pruning.keep_ratio", "split.prompt_length", "seed"]
    plain, _ = load_sweep(sweep_file(tmp_path))
    assert axes(plain) == ["pruning.keep_ratio", "split.prompt_length"] and plain.seeds is None
    # --seeds N: the base experiment's seed and the N - 1 after it, replacing the file's list
    assert with_seeds(sweep, 2, base.seed).seeds == [base.seed, base.seed + 1]
    for n in (0, -3, 10**9):
        with pytest.raises(ConfigError) as err:
            with_seeds(sweep, n, base.seed)
        assert err.value.key == "--seeds"
    # --seeds is checked as the file's list is: `seed` swept beside it is refused
    seeded, _ = load_sweep(sweep_file(tmp_path, space={"seed": {"grid": [1, 2]}}))
    with pytest.raises(ConfigError) as err:
        with_seeds(seeded, 2, base.seed)
    assert err.value.key == "space.seed"


def test_bundles_and_fits() -> None:
    sweep, base = load_sweep_at(SFPROMPT)
    bundles = trial_bundles(sweep, base)  # driver 0.5, body server 1, 4 clients of 1 CPU
    assert bundles == [{"CPU": 0.5}, {"CPU": 1.0}] + [{"CPU": 1.0}] * 4
    node = {"CPU": 8.0, "memory": 1e10}
    assert check_fits(sweep, bundles, [node, node]) == 2  # 16 CPUs // 5.5 per trial
    assert check_fits(sweep, bundles, [node, node, node]) == 4  # 24 // 5.5
    with pytest.raises(ConfigError, match="needs 5.5 CPU"):
        check_fits(sweep, bundles, [{"CPU": 2.0}])
    with pytest.raises(ConfigError, match="no node can hold"):
        check_fits(sweep, [{"CPU": 3.0}], [{"CPU": 2.0}, {"CPU": 2.0}])


def test_mixed_devices_reserve_one_bundle_per_worker_with_its_group_request(tmp_path) -> None:
    mix = {"overrides": {"devices.mix": {"phone-low": 1, "laptop": 1}}}
    sweep, base = load_sweep(sweep_file(tmp_path, trial={"workers": 3}, **mix))
    # driver 0.5, body server 1, then 2 phone-low workers (0.25 CPU) and 1 laptop worker (1 CPU)
    assert trial_bundles(sweep, base) == [{"CPU": 0.5}, {"CPU": 1.0}, {"CPU": 0.25},
                                          {"CPU": 0.25}, {"CPU": 1.0}]  # fmt: skip
    gpus = {"overrides": {"server.num_gpus": 0.5, "resources.client_num_gpus": 0.25}}
    sweep, base = load_sweep(sweep_file(tmp_path, trial={"workers": 2}, **gpus))
    # the body server's and each worker's GPU share are reserved with their CPUs
    assert trial_bundles(sweep, base) == [{"CPU": 0.5}, {"CPU": 1.0, "GPU": 0.5},
                                          {"CPU": 1.0, "GPU": 0.25}, {"CPU": 1.0, "GPU": 0.25}]  # fmt: skip
    sweep, base = load_sweep(sweep_file(tmp_path, trial={"workers": 1}, **mix))
    with pytest.raises(ConfigError) as err:
        trial_bundles(sweep, base)
    assert err.value.key == "trial.workers" and "device groups (2" in err.value.message


def load_sweep_at(base: Path):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return load_sweep(sweep_file(Path(d)))


def test_reported_metrics_follow_the_task() -> None:
    _, base = load_sweep_at(SFPROMPT)
    names = reported_metrics(base)
    assert {"eval/accuracy", "eval/macro_f1", "comm/bytes_total_cum"} <= names
    assert "eval/perplexity" not in names


def _noop(config: dict) -> None:
    pass


def test_the_generator_starts_no_more_trials_than_the_cap(tmp_path: Path) -> None:
    # Tune ignores TuneConfig's max_concurrent_trials for a variant generator: the cap is its own
    from ray import tune

    sweep, _ = load_sweep(sweep_file(tmp_path))  # the cap is search_alg's argument
    alg = search_alg(sweep, 1)
    alg.add_configurations({"t": {"run": _noop, "config": {"x": tune.grid_search([1, 2, 3])}}})
    first = alg.next_trial()
    assert first is not None and alg.next_trial() is None  # one live trial: the second waits
    alg.on_trial_complete(first.trial_id)
    assert alg.next_trial() is not None


def test_every_shipped_sweep_file_loads() -> None:
    files = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
    assert len(files) >= 3
    for f in files:
        sweep, base = load_sweep(f)
        assert sweep.metric in reported_metrics(base), f


@pytest.mark.parametrize(
    "text", [b"\xff\xfe\x00garbage", b"a: [1, 2", b"x: !!int abc", b"- just\n- a list\n"]
)
def test_unreadable_sweep_files_are_config_errors(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert err.value.key == "SWEEP"


def test_a_trial_runs_with_the_gpu_requests_its_bundles_reserved(tmp_path) -> None:
    from tuning.trial import trial_resources

    sweep, base = load_sweep(sweep_file(tmp_path, trial={"workers": 2}))
    assert base.resources.client_num_gpus == "auto"
    # auto cannot probe inside a reserved placement group: the profiles' requests, as bundled
    assert trial_resources(sweep, base).client_num_gpus is None
    assert trial_resources(sweep, base).num_workers == 2
    fixed = {"overrides": {"resources.client_num_gpus": 0.25}}
    sweep, base = load_sweep(sweep_file(tmp_path, trial={"workers": 2}, **fixed))
    assert trial_resources(sweep, base).client_num_gpus == 0.25  # an explicit share stays
