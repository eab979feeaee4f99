"""The method registry, the params union and the default learning rates."""

from __future__ import annotations

from dataclasses import replace

import pydantic
import pytest

from engine.errors import ConfigError
from engine.methods import (
    METHODS,
    IA3Params,
    LoraParams,
    Method,
    PrefixParams,
    get_method,
    learning_rate,
    method_params_union,
    register_method,
)


def test_all_methods_are_registered_with_their_default_lrs():
    lrs = {name: get_method(name).default_lr for name in METHODS.names()}
    assert lrs == {
        "adapter": 1e-3,
        "bitfit": 1e-3,
        "full": 5e-5,
        "ia3": 5e-3,
        "lora": 1e-3,
        "prefix": 1e-3,
        "prompt": 1e-2,
    }


def test_registry_rejects_duplicates_and_mismatched_params():
    with pytest.raises(ValueError, match="already registered"):
        register_method(get_method("lora"))
    with pytest.raises(ValueError, match="Literal"):
        register_method(replace(get_method("lora"), name="lora2"))
    assert "lora2" not in METHODS


def test_unknown_method_is_a_config_error_on_method_name():
    with pytest.raises(
        ConfigError, match="unknown method 'nope'; use one of adapter, bitfit"
    ) as err:
        get_method("nope")
    assert err.value.key == "method.name"


def test_union_validates_by_name():
    adapter = pydantic.TypeAdapter(method_params_union())
    params = adapter.validate_python({"name": "lora", "r": 4})
    assert isinstance(params, LoraParams) and params.r == 4 and params.alpha == 16
    assert isinstance(adapter.validate_python({"name": "prefix"}), PrefixParams)
    for bad in (
        {"name": "lora", "r": 0},
        {"name": "lora", "rank": 4},
        {"name": "bitfit", "r": 4},
        {"name": "nope"},
        {"name": "prefix", "num_virtual_tokens": 0},
        {"name": "lora", "lr": 0},
        {"name": "lora", "dropout": 1.0},
    ):
        with pytest.raises(pydantic.ValidationError):
            adapter.validate_python(bad)


def test_ia3_feedforward_modules_must_lie_within_targets():
    with pytest.raises(pydantic.ValidationError, match="needs target_modules"):
        IA3Params(feedforward_modules=["output.dense"])
    with pytest.raises(pydantic.ValidationError, match=r"\['fc'\] are not in target_modules"):
        IA3Params(target_modules=["key"], feedforward_modules=["fc"])


def test_learning_rate_defaults_to_the_methods():
    assert learning_rate(LoraParams()) == 1e-3
    assert learning_rate(LoraParams(lr=0.25)) == 0.25


def test_method_record_is_frozen():
    method: Method = get_method("full")
    with pytest.raises(AttributeError):
        method.default_lr = 1.0  # type: ignore[misc]
