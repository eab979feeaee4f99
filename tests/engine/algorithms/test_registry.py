"""The algorithm registry: every `algorithm:` name has a record, every round server speaks the whole
RoundServer protocol, and what an algorithm does not compose with is refused by its record."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from engine.algorithms import ALGORITHMS, Algorithm, NoServer, RoundServer, register_algorithm
from engine.config import RunConfig, load_config
from engine.errors import ConfigError
from engine.prepare import prepare
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[3]


def _protocol_members() -> set[str]:
    return {n for n in vars(RoundServer) if not n.startswith("_")} | set(
        typing.get_type_hints(RoundServer)
    )


def test_every_config_algorithm_has_a_record() -> None:
    names = typing.get_args(RunConfig.model_fields["algorithm"].annotation)
    assert sorted(names) == ALGORITHMS.names()


def test_a_taken_name_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_algorithm(Algorithm(name="fedavg"))


@pytest.mark.parametrize(
    "cls",
    [
        "engine.algorithms.base:NoServer",
        "engine.split.local:LocalBodyServer",
        "actors.body_group:RayBodyServer",
        "engine.lm.server:LocalFedPTServer",
        "actors.lm_server:FedPTHostLink",
    ],
)
def test_every_round_server_speaks_the_whole_protocol(cls: str) -> None:
    """The runner calls every member unconditionally: a missing one would be an AttributeError
    in the middle of a run (the hasattr checks this protocol replaced)."""
    import importlib

    module, name = cls.split(":")
    server = getattr(importlib.import_module(module), name)
    declared = set(typing.get_type_hints(server))
    missing = sorted(m for m in _protocol_members() if not (hasattr(server, m) or m in declared))
    assert not missing, f"{name} lacks {missing}"


def test_no_server_leaves_the_round_as_it_is() -> None:
    s = NoServer()
    state = {"w": object()}
    assert s.end_round({0: 1.0}, state, 1) == (state, {})
    assert s.with_state(b"x") == b"x" == s.restore(b"x")
    assert s.lost(RuntimeError()) is False and s.link is None and s.evaluate(state, 8) == {}


@pytest.mark.parametrize(
    ("config", "extra", "key", "words"),
    [
        ("sfprompt/amazon_reviews.yaml", {"privacy.dp": True}, "privacy.dp", "applies to algorithm: fedavg, not sfprompt"),
        ("fedpetuning/centralized_lora.yaml", {"federation.round_deadline_s": 10, "federation.deadline_policy": "partial"},
         "federation.deadline_policy", "partial work applies to fedavg, fedpt, not centralized"),
        ("quickstart.yaml", {"faults.server_kill_round": 2}, "faults.server_kill_round",
         "fedavg runs no server to kill (only fedpt, sfprompt do)"),
        ("sfprompt/amazon_reviews.yaml", {"faults.server_kill_round": 9}, "faults.server_kill_round",
         "round 9 > federation.rounds (3): the fault would never happen"),
    ],
)  # fmt: skip
def test_what_a_record_turns_off_is_refused_with_who_supports_it(config, extra, key, words) -> None:
    cfg = load_config(ROOT / "configs" / config, tiny_overrides(**extra))
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    assert err.value.key == key and words in err.value.message


def test_a_server_reserves_a_trial_bundle_only_when_it_asks_for_resources() -> None:
    from engine.algorithms.base import ServerRequest

    assert ServerRequest().bundle() == {}  # fits anywhere: tuning/trial.py reserves nothing
    assert ServerRequest(0.5).bundle() == {"CPU": 0.5}
    assert ServerRequest(0.0, 0.25).bundle() == {"GPU": 0.25}
    assert ServerRequest(2.0, 1.0, "fedpt.server_num_gpus").bundle() == {"CPU": 2.0, "GPU": 1.0}
