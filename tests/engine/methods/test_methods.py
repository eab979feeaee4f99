"""Each method on tiny BERT classifiers and Llama causal LMs: what trains, how much, and that it learns."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from engine.errors import ConfigError
from engine.methods import (
    AdapterParams,
    BitFitParams,
    FullParams,
    IA3Params,
    LoraParams,
    MethodParams,
    PrefixParams,
    PromptParams,
    apply_method,
    count_parameters,
    trainable_state,
)
from engine.methods.prefix import _check_prefix_reaches_model
from tests.engine.methods.tiny_models import HEAD, adapted, base_model, batch, logits, train

# A trainable head is the plain classifier (our methods) or peft's modules_to_save copy of it;
# peft's `original_module` stays frozen.
HEAD_RE = r"^(base_model\.(model\.)?)?classifier\.(modules_to_save\.default\.)?(weight|bias)$"
PER_ADAPTER = 2 * 16 * 64 + 16 + 64  # down (64->16) and up (16->64) with biases

# (method params, arch) -> (regex of the method's own trainable tensors, trainable count by hand)
CASES: dict[tuple[str, str], tuple[MethodParams, str, int | None]] = {
    # r * (in + out) per targeted module; BERT: query, value (64->64) in 2 layers.
    ("lora", "bert"): (LoraParams(r=4), r"\.lora_[AB]\.default\.weight$", 4 * 128 * 4 + HEAD),
    # Llama, 2 layers: q 64->64, k 64->32, v 64->32, o 64->64, gate/up 64->128, down 128->64.
    ("lora", "llama"): (
        LoraParams(r=2),
        r"\.lora_[AB]\.default\.weight$",
        2 * 2 * (128 + 96 + 96 + 128 + 192 + 192 + 192),
    ),
    # Two insertions per layer, 2 layers.
    ("adapter", "bert"): (
        AdapterParams(),
        r"\.adapter\.(down|up)\.(weight|bias)$",
        4 * PER_ADAPTER + HEAD,
    ),
    ("adapter", "llama"): (
        AdapterParams(),
        r"\.adapter\.(down|up)\.(weight|bias)$",
        4 * PER_ADAPTER,
    ),
    # embeddings LN 64; per layer q, k, v, attn-out, attn LN, out, out LN: 64 each, intermediate 128;
    # pooler 64.
    ("bitfit", "bert"): (BitFitParams(), r"(^|\.)bias$", 64 + 2 * (7 * 64 + 128) + 64 + HEAD),
    # per layer: key 64 + value 64 (output scales), attn-out 64 + out 128 (input scales).
    ("ia3", "bert"): (IA3Params(), r"\.ia3_l\.default$", 2 * (64 + 64 + 64 + 128) + HEAD),
    # per layer: k 32 + v 32 (GQA: 2 kv heads of 16), down's input 128.
    ("ia3", "llama"): (IA3Params(), r"\.ia3_l\.default$", 2 * (32 + 32 + 128)),
    # tokens * layers * (key, value) * width; Llama's width is kv heads * head dim = 32.
    ("prefix", "bert"): (
        PrefixParams(),
        r"^prompt_encoder\.default\.embedding\.weight$",
        16 * 2 * 2 * 64 + HEAD,
    ),
    ("prefix", "llama"): (
        PrefixParams(),
        r"^prompt_encoder\.default\.embedding\.weight$",
        16 * 2 * 2 * 32,
    ),
    ("prompt", "bert"): (
        PromptParams(),
        r"^prompt_encoder\.default\.embedding\.weight$",
        16 * 64 + HEAD,
    ),
    ("prompt", "llama"): (PromptParams(), r"^prompt_encoder\.default\.embedding\.weight$", 16 * 64),
    ("full", "bert"): (FullParams(), r".", None),  # None: every parameter
    ("full", "llama"): (FullParams(), r".", None),
}
IDS = [f"{m}-{a}" for m, a in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_only_the_methods_tensors_and_the_head_train(case):
    params, pattern, expected = CASES[case]
    arch = case[1]
    model = adapted(arch, params)
    names = [n for n, _ in model.named_parameters()]
    wanted = {
        n for n in names if re.search(pattern, n) or (arch == "bert" and re.search(HEAD_RE, n))
    }
    assert any(re.search(pattern, n) for n in names)
    assert set(trainable_state(model)) == wanted
    trainable, total = count_parameters(model)
    assert trainable == (total if expected is None else expected)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_apply_is_deterministic_given_the_seed(case):
    params, _, _ = CASES[case]
    a = trainable_state(adapted(case[1], params, seed=3))
    b = trainable_state(adapted(case[1], params, seed=3))
    assert list(a) == list(b)
    assert all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_steps_change_only_trainable_tensors_and_lower_the_loss(case):
    params, _, _ = CASES[case]
    arch = case[1]
    model = adapted(arch, params)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = train(model, arch, steps=4, lr=1e-4 if case[0] == "full" else 1e-2)
    model.eval()
    with torch.no_grad():
        final = model(**batch(arch)).loss.item()
    assert final < losses[0]
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[n]), f"{n} did not train"
        else:
            assert torch.equal(p, before[n]), f"frozen {n} changed"


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_adapter_starts_as_the_base_model(arch):
    base = logits(base_model(arch), arch)
    assert torch.equal(logits(adapted(arch, AdapterParams(dim=8, activation="relu")), arch), base)


def test_adapter_target_modules_extend_the_positions():
    # BERT's intermediate.dense is 64 -> 128, so each adapter there is 128 -> 8 -> 128.
    model = adapted("bert", AdapterParams(dim=8, target_modules=["intermediate.dense"]))
    assert count_parameters(model)[0] == 2 * (2 * 8 * 128 + 8 + 128) + HEAD
    with pytest.raises(ConfigError) as err:
        adapted("bert", AdapterParams(target_modules=["nowhere"]))
    assert err.value.key == "method.target_modules"


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_virtual_tokens_change_the_logits_and_train_without_the_head(method):
    params = PrefixParams() if method == "prefix" else PromptParams()
    base = logits(base_model("bert"), "bert")
    model = adapted("bert", params)
    assert not torch.allclose(logits(model, "bert"), base)
    for n, p in model.named_parameters():  # the virtual tokens alone must lower the loss
        if "classifier" in n:
            p.requires_grad_(False)
    losses = train(model, "bert", steps=6, lr=5e-2)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_a_prefixed_row_ignores_its_padding_and_deep_copies(arch):
    """The prefix joins the attention mask: a padded row's logits equal the same row unpadded.

    Pins prefix tuning on the installed transformers (5.24 renamed the encoders' past_key_values to
    cache); a deep copy keeps working on its own backbone.
    """
    model = adapted(arch, PrefixParams(num_virtual_tokens=4)).eval()
    b = batch(arch)  # row 0 has 7 real tokens and 3 padding
    copied = copy.deepcopy(model)
    with torch.no_grad():
        padded = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[0]
        alone = model(input_ids=b["input_ids"][:1, :7]).logits[0]
        again = copied(input_ids=b["input_ids"][:1, :7]).logits[0]
    # classification: one row of logits; causal LM: compare the 7 real positions
    expected = padded if arch == "bert" else padded[:7]
    torch.testing.assert_close(alone, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, alone, rtol=0, atol=0)
    # a forward set on a module instance must run on that module, not on the one it was copied from
    for module in copied.modules():
        if "forward" in vars(module):
            assert module.forward.__self__ is module


def test_prefix_check_rejects_a_model_that_ignores_the_prefix():
    class Ignoring(torch.nn.Module):
        config = None

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, input_ids):
            return type("Out", (), {"logits": input_ids * self.w})

        def get_base_model(self):
            return self

    with pytest.raises(ConfigError, match="prefix tuning is not supported") as err:
        _check_prefix_reaches_model(Ignoring())
    assert err.value.key == "method.name"


def test_lora_and_ia3_with_chosen_modules():
    # query (out 64) scaled at the output; output.dense matches both FFN-like projections (in 64, 128).
    model = adapted("bert", IA3Params(target_modules=["query", "output.dense"]))
    assert count_parameters(model)[0] == 2 * (64 + 64 + 128) + HEAD
    model = adapted("bert", LoraParams(r=1, target_modules=["intermediate.dense"]))
    assert count_parameters(model)[0] == 2 * 1 * (64 + 128) + HEAD
    with pytest.raises(ConfigError) as err:
        adapted("bert", LoraParams(target_modules=["nowhere"]))
    assert err.value.key == "method.target_modules"


def test_bitfit_refuses_a_model_without_biases():
    with pytest.raises(ConfigError, match="bitfit") as err:
        adapted("llama", BitFitParams())
    assert err.value.key == "method.name"


def test_bad_task_and_missing_head_are_errors():
    with pytest.raises(ValueError, match="unknown task"):
        apply_method(base_model("bert"), "regression", LoraParams())
    with pytest.raises(ConfigError, match="no classification head") as err:
        apply_method(base_model("llama"), "classification", BitFitParams())
    assert err.value.key == "model.name"


def test_lora_has_default_targets_for_vit() -> None:
    from engine.methods.lora import apply_lora
    from engine.models import TINY_MODELS

    vit = TINY_MODELS.get("tiny-vit-random")("classification", 3, 0)
    model = apply_lora(vit, "classification", r=2)
    lora = {n.split(".lora_")[0] for n, p in model.named_parameters() if "lora_" in n}
    assert {x.rsplit(".", 1)[-1] for x in lora} == {"q_proj", "v_proj"}
