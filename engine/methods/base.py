"""The method registry: the params base class, the `Method` record and the lookups over it."""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Union

import pydantic
import torch

from engine.errors import ConfigError
from engine.registry import Registry
from engine.strict import StrictModel


class MethodParams(StrictModel):
    """Fields every method shares; each method file subclasses it with `name: Literal[...]`."""

    name: str
    # None -> the method's `default_lr` (see `learning_rate`).
    lr: float | None = pydantic.Field(default=None, gt=0, allow_inf_nan=False)


@dataclass(frozen=True)
class Method:
    """A fine-tuning method: its params schema, default learning rate and how it prepares a model.

    `apply(model, task, **fields)` returns the model ready to train, in which only the method's
    tensors (plus the classification head for sequence classifiers) require grad. `fields` are the
    params' fields other than `name` and `lr`. It must draw randomness only from torch's global RNG,
    identically on every call, so that a caller's `torch.manual_seed` makes it deterministic.
    """

    name: str
    params_type: type[MethodParams]
    default_lr: float
    apply: Callable[..., torch.nn.Module]


METHODS: Registry[Method] = Registry("method")


def register_method(method: Method) -> Method:
    """Add `method` to METHODS; refuses a taken name or a params type whose `name` disagrees."""
    field = method.params_type.model_fields.get("name")
    literal = typing.get_args(field.annotation) if field is not None else ()
    if literal != (method.name,):
        raise ValueError(
            f"method {method.name!r}: {method.params_type.__name__}.name must be "
            f"Literal[{method.name!r}], got {field.annotation if field else None}"
        )
    if not method.default_lr > 0:
        raise ValueError(f"method {method.name!r}: default_lr must be > 0")
    return METHODS.register(method.name, method)


def get_method(name: str) -> Method:
    """The registered method called `name`, or a ConfigError on `method.name` listing the choices."""
    if name not in METHODS:
        known = ", ".join(METHODS.names())
        raise ConfigError("method.name", f"unknown method {name!r}; use one of {known}")
    return METHODS.get(name)


def method_fields(params: MethodParams) -> dict[str, Any]:
    """The keyword arguments `Method.apply` takes: every field but `name` and `lr`."""
    return {k: getattr(params, k) for k in type(params).model_fields if k not in ("name", "lr")}


def apply_method(model: torch.nn.Module, task: str, params: MethodParams) -> torch.nn.Module:
    """Prepare `model` for `params.name` fine-tuning on `task` ("classification" or "causal_lm")."""
    return get_method(params.name).apply(model, task, **method_fields(params))


def learning_rate(params: MethodParams) -> float:
    """`params.lr`, or the method's default learning rate when it is None."""
    return params.lr if params.lr is not None else get_method(params.name).default_lr


def method_params_union() -> Any:
    """A pydantic type accepting any registered method's params, discriminated by `name`."""
    types = tuple(METHODS.get(n).params_type for n in METHODS.names())
    if not types:
        raise RuntimeError("no method is registered")
    if len(types) == 1:
        return types[0]
    return Annotated[Union[types], pydantic.Field(discriminator="name")]  # noqa: UP007
