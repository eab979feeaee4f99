"""The config schema, YAML values of overrides and the one-line errors naming a key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.config import apply_overrides, load_config, parse_value, validate_config
from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_parse_value_reads_yaml_and_numbers() -> None:
    assert parse_value("3") == 3
    assert parse_value("1e-3") == pytest.approx(0.001)
    assert parse_value("null") is None
    assert parse_value("[a, b]") == ["a", "b"]
    assert parse_value("lora") == "lora"
    assert parse_value("true") is True


def test_overrides_nest_and_do_not_mutate() -> None:
    raw = {"train": {"lr": 0.1}}
    out = apply_overrides(raw, ["train.lr=0.5", "method.name=bitfit"])
    assert out == {"train": {"lr": 0.5}, "method": {"name": "bitfit"}}
    assert raw == {"train": {"lr": 0.1}}
    with pytest.raises(ConfigError) as e:
        apply_overrides({"train": {"lr": 0.1}}, ["train.lr.x=1"])
    assert e.value.key == "train.lr"


def test_method_params_are_typed_per_method() -> None:
    cfg = validate_config({"method": {"name": "adapter", "dim": 32}})
    assert cfg.method.name == "adapter" and cfg.method.dim == 32
    with pytest.raises(ConfigError) as e:
        validate_config({"method": {"name": "adapter", "r": 8}})
    assert e.value.key == "method.r"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (
            {"federation": {"num_clients": 5, "clients_per_round": 6}},
            "federation.clients_per_round",
        ),
        ({"data": {"partition": {"kind": "dirichlet"}}}, "data.partition.alpha"),
        ({"train": {"batch_size": 0}}, "train.batch_size"),
        ({"resources": {"num_workers": 0}}, "resources.num_workers"),
        ({"model": {"pooling": "max"}}, "model.pooling"),
        ({"algorithm": "fedsgd"}, "algorithm"),
    ],
)
def test_impossible_values_name_their_key(raw, key) -> None:
    with pytest.raises(ConfigError) as e:
        validate_config(raw)
    assert e.value.key == key


def test_every_shipped_config_validates_and_names_its_command() -> None:
    files = sorted((ROOT / "configs").rglob("*.yaml"))
    experiments = [f for f in files if "devices" not in f.parts]
    assert experiments, "no configs found"
    for f in experiments:
        first = f.read_text().splitlines()[0]
        assert first.startswith("# fedray "), f"{f} must start with the command that runs it"
        rel = f.relative_to(ROOT).as_posix()
        assert rel in first, f"{f}: first line should name {rel}"
        if "sweeps" not in f.parts:
            load_config(f)
    for f in files:
        assert isinstance(yaml.safe_load(f.read_text()), dict)


def test_config_error_survives_copy_and_pickle():
    import copy
    import pickle

    from engine.errors import ConfigError

    err = ConfigError("split.prompt_length", "too long")
    for back in (copy.copy(err), pickle.loads(pickle.dumps(err))):
        assert (back.key, back.message, str(back)) == (err.key, err.message, str(err))
