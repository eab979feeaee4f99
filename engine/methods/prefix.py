"""Prefix tuning (FedPF) through peft: learned key/value prefixes in every attention layer."""

from __future__ import annotations

import inspect
import types
from typing import Any, Literal

import pydantic
import torch

from engine.errors import ConfigError
from engine.methods.base import Method, MethodParams
from engine.methods.common import check_task, model_type, wrap_with_peft


class PrefixParams(MethodParams):
    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = pydantic.Field(default=16, ge=1)
    # True reparameterises the prefix through an MLP (Li & Liang); what is trained and sent is then
    # the embedding plus the MLP.
    prefix_projection: bool = False


def _unsupported(model: torch.nn.Module, why: str) -> ConfigError:
    return ConfigError(
        "method.name",
        f"prefix tuning is not supported for {model_type(model)} in this transformers version "
        f"({why}); use lora or adapter",
    )


def _forward_taking_past_key_values(
    self: torch.nn.Module, *args: Any, past_key_values: Any = None, **kwargs: Any
) -> Any:
    """The backbone's own forward, with the prefix cache peft sends as `past_key_values` as `cache`."""
    if past_key_values is not None:
        kwargs["cache"] = past_key_values
    return type(self).forward(self, *args, **kwargs)


def _route_prefix_to_cache(model: torch.nn.Module) -> None:
    """Let peft hand its prefix to a backbone whose forward names the cache `cache`.

    transformers 5.24 renamed the encoders' `past_key_values` argument to `cache` (BERT family and
    others); peft 0.21 looks for the old name in the backbone's signature and refuses prefix tuning.
    The backbone gets a bound forward (deep-copies with its module) that takes the old name and passes
    it on. Backbones that still take `past_key_values`, or take neither, are left as they are.
    """
    name = getattr(model, "transformer_backbone_name", None)
    if name is None:  # causal LMs: peft passes the cache to the model itself
        return
    backbone = model.get_base_model().get_submodule(name)
    params = inspect.signature(type(backbone).forward).parameters
    if "past_key_values" in params or "cache" not in params:
        return
    backbone.forward = types.MethodType(_forward_taking_past_key_values, backbone)


def _check_prefix_reaches_model(model: torch.nn.Module) -> None:
    """Run 3 tokens with and without the prefix: a model that ignores past_key_values fails here.

    Eval mode and no_grad, so no RNG is drawn (dropout is off) and callers stay deterministic.
    """
    was_training = model.training
    ids = torch.tensor([[1, 2, 3]], device=next(model.parameters()).device)
    model.eval()
    try:
        with torch.no_grad():
            prefixed = model(input_ids=ids).logits
            # Not `disable_adapter()`: peft 0.21 breaks there for sequence classifiers.
            plain = model.get_base_model()(input_ids=ids).logits
    except (TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise _unsupported(model, f"{type(e).__name__}: {e}") from e
    finally:
        model.train(was_training)
    if prefixed.is_meta:  # a weightless skeleton (the driver's model check): no values to compare
        return
    if prefixed.shape == plain.shape and torch.equal(prefixed, plain):
        raise _unsupported(model, "the model ignores the prefix")


def apply_prefix(
    model: torch.nn.Module, task: str, num_virtual_tokens: int = 16, prefix_projection: bool = False
) -> torch.nn.Module:
    from peft import PrefixTuningConfig

    check_task(task)
    try:
        peft_model = wrap_with_peft(
            model,
            task,
            PrefixTuningConfig,
            "method.name",
            num_virtual_tokens=num_virtual_tokens,
            prefix_projection=prefix_projection,
        )
    except ConfigError as e:  # peft cannot size the prefix for this architecture
        raise _unsupported(model, e.message) from e
    _route_prefix_to_cache(peft_model)
    _check_prefix_reaches_model(peft_model)
    return peft_model


# FedPETuning: best federated prefix learning rates 1e-4..1e-3; the top of the range, as prefixes
# train slowly from a random start.
METHOD = Method(name="prefix", params_type=PrefixParams, default_lr=1e-3, apply=apply_prefix)
