"""Strict input parsing shared by every user-facing file: YAML mappings that refuse a key given
twice, and pydantic models that refuse YAML booleans as numbers and inf/nan."""

from __future__ import annotations

import typing
from typing import Any

import pydantic
import yaml


class DuplicateKeyError(ValueError):
    """A mapping gives the same key twice (YAML would silently keep the last one)."""

    def __init__(self, key: object, line: int) -> None:
        super().__init__(f"line {line}: key {key!r} is given twice; keep one")
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
            if duplicate:
                raise DuplicateKeyError(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """yaml.safe_load, but a mapping with a repeated key raises DuplicateKeyError."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


class StrictModel(pydantic.BaseModel):
    """Unknown keys, inf/nan and booleans where a number belongs are all errors."""

    # inf/nan are never meaningful settings (a learning rate of .inf would start a doomed run).
    model_config = pydantic.ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        # pydantic reads true/false as 1/0 for numbers; YAML's yes/on/true are never a count or a rate.
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key) if isinstance(key, str) else None
                if isinstance(value, bool) and field is not None and _numeric(field.annotation):
                    raise ValueError(f"{key}: expected a number, got {value!r}")
        return data


def _numeric(annotation: Any) -> bool:
    """Whether a field takes a number and no bool (int, float, int | None, int | "auto" ...)."""
    args = typing.get_args(annotation) or (annotation,)
    return bool not in args and any(a in (int, float) for a in args)
