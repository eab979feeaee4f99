"""Any model a user brings, by path: default LoRA targets, mean pooling and model errors for many
architectures (tiny random models saved like a user's checkpoint, tests/zoo.py; no download)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from actors.launch import start_run
from engine.backend import LocalBackend
from engine.config import load_config
from engine.errors import ConfigError
from engine.methods import LoraParams, apply_method
from engine.methods.targets import attention_query_value, no_targets
from engine.model_check import check_model
from engine.models import load_model, model_skeleton, position_limit
from fedray.cli import main
from tests.conftest import run_records, tiny_overrides
from tests.zoo import DECODERS, ENCODERS, VOCAB, save_tiny

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART, AUSTEN = (
    ROOT / "configs" / "quickstart.yaml",
    ROOT / "configs" / "fedpt" / "austen.yaml",
)
# The attention's query / value projections (or fused qkv) each family names its own way.
EXPECTED_TARGETS = {
    "bert": ["query", "value"], "roberta": ["query", "value"], "distilbert": ["q_lin", "v_lin"],
    "albert": ["query", "value"], "electra": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"], "mpnet": ["q", "v"],
    "xlm-roberta": ["query", "value"], "modernbert": ["Wqkv"], "gpt2": ["c_attn"],
}  # fmt: skip
LLAMA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
NO_CAUSAL_LM = {"distilbert", "albert", "deberta-v2", "mpnet", "modernbert"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    return {t: save_tiny(t, root / t) for t in ENCODERS + DECODERS}


def _lora_leaves(model: torch.nn.Module) -> set[str]:
    return {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters()
            if ".lora_A." in n}  # fmt: skip


@pytest.mark.parametrize("mtype", ENCODERS + DECODERS)
def test_default_lora_targets_are_the_attention_query_and_value(zoo, mtype) -> None:
    skeleton = model_skeleton(str(zoo[mtype]), "classification", 2, VOCAB, 0, "cls")
    with torch.device("meta"):
        model = apply_method(skeleton, "classification", LoraParams())
    want = set(EXPECTED_TARGETS.get(mtype, LLAMA_TARGETS))
    assert _lora_leaves(model) == want
    if mtype in EXPECTED_TARGETS:
        assert attention_query_value(skeleton) == EXPECTED_TARGETS[mtype]


ADAPTER_AT = {
    "bert": {"attention.output.dense", "output.dense"}, "distilbert": {"attention.out_lin", "ffn.lin2"},
    "albert": {"attention.dense", "ffn_output"}, "mpnet": {"attention.attn.o", "output.dense"},
    "modernbert": {"attn.Wo", "mlp.Wo"}, "llama": {"self_attn.o_proj", "mlp.down_proj"},
    "gpt2": {"attn.c_proj", "mlp.c_proj"},
}  # fmt: skip
IA3_AT = {
    "distilbert": {"attention.k_lin", "attention.v_lin", "ffn.lin2"},
    "albert": {"attention.key", "attention.value", "ffn_output"},
    "mpnet": {"attention.attn.k", "attention.attn.v", "output.dense"},
    "modernbert": {"attn.Wqkv", "mlp.Wo"}, "electra": {"attention.self.key",
    "attention.self.value", "attention.output.dense", "output.dense"},
}  # fmt: skip


def _first_block(name: str) -> str | None:
    """'...layer.0.attention.out_lin.adapter.up.weight' -> 'attention.out_lin' (block 0 only)."""
    for marker in ("layer.0.", "layers.0.", "h.0.", "albert_layers.0."):
        if marker in name:
            rest = name.split(marker, 1)[1]
            return rest.split(".adapter.")[0].split(".ia3_l")[0]
    return None


@pytest.mark.parametrize("mtype", ENCODERS + DECODERS)
@pytest.mark.parametrize("method", ["adapter", "ia3"])
def test_adapter_and_ia3_defaults_start_as_the_base_model_and_train(zoo, mtype, method) -> None:
    """Found by name on every architecture; at init the adapted model computes what the base does
    (adapters' up projection is zero, (IA)^3's scales are one), and a step moves only the method."""
    from engine.methods import get_method

    base = load_model(str(zoo[mtype]), "classification", 2, VOCAB, 0, 0, "cls").eval()
    ids, mask = torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long)
    want = base(input_ids=ids, attention_mask=mask).logits.detach()
    model = apply_method(base, "classification", get_method(method).params_type(name=method))
    got = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    expected = (ADAPTER_AT if method == "adapter" else IA3_AT).get(mtype)
    if expected is not None:
        names = {_first_block(n) for n, p in model.named_parameters() if p.requires_grad}
        assert names - {None} == expected
    model.train()
    model(input_ids=ids, attention_mask=mask, labels=torch.tensor([1])).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n
             and "score" not in n]  # fmt: skip
    assert grads and any(g is not None and bool(g.abs().sum() > 0) for g in grads)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


@pytest.mark.parametrize("mtype", ENCODERS + DECODERS)
def test_mean_pooling_ignores_padding_and_differs_from_cls(zoo, mtype) -> None:
    mean = load_model(str(zoo[mtype]), "classification", 2, VOCAB, 0, 0, "mean").eval()
    cls = load_model(str(zoo[mtype]), "classification", 2, VOCAB, 0, 0, "cls").eval()
    ids, padded = torch.tensor([[5, 6, 7]]), torch.tensor([[5, 6, 7, 0, 0]])
    a = mean(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    b = mean(input_ids=padded, attention_mask=torch.tensor([[1, 1, 1, 0, 0]])).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a, cls(input_ids=ids, attention_mask=torch.ones_like(ids)).logits)


def test_roberta_head_reads_the_masked_mean_of_the_last_states(zoo) -> None:
    """By hand: the head applied to the mean of the real tokens' last hidden states."""
    mean = load_model(str(zoo["roberta"]), "classification", 2, VOCAB, 0, 0, "mean").eval()
    cls = load_model(str(zoo["roberta"]), "classification", 2, VOCAB, 0, 0, "cls").eval()
    ids, mask = torch.tensor([[5, 6, 7, 0]]), torch.tensor([[1, 1, 1, 0]])
    with torch.no_grad():
        states = cls.roberta(input_ids=ids, attention_mask=mask).last_hidden_state
        want = cls.classifier(states[:, :3].mean(1, keepdim=True))
        got = mean(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_saved_vit_trains_a_lora_round_on_images_by_path(tmp_path) -> None:
    vit = save_tiny("vit", tmp_path / "my-vit")
    skeleton = model_skeleton(str(vit), "classification", 10, 0, None, "cls")
    with torch.device("meta"):
        assert _lora_leaves(apply_method(skeleton, "classification", LoraParams())) == {
            "q_proj", "v_proj"}  # fmt: skip
    ov = tiny_overrides(**{"model.name": str(vit), **TRAIN, "algorithm": "fedavg"})
    cfg = load_config(ROOT / "configs" / "sfprompt" / "fashion_mnist.yaml", ov)
    (rec,) = run_records(start_run(cfg, out=str(tmp_path / "run"), backend=LocalBackend()))
    assert math.isfinite(rec["train/loss"]) and 0 <= rec["eval/accuracy"] <= 1


@pytest.mark.parametrize("mtype", sorted(NO_CAUSAL_LM))
def test_a_task_the_architecture_cannot_do_is_a_config_error(zoo, mtype) -> None:
    with pytest.raises(ConfigError, match="model.task: .* cannot do causal_lm"):
        model_skeleton(str(zoo[mtype]), "causal_lm", 0, VOCAB, 0, "cls")


def test_no_recognisable_projection_names_the_linear_modules() -> None:
    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mix_in, self.mix_out = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    assert attention_query_value(Odd()) is None
    err = str(no_targets(Odd(), "attention query / value projections"))
    assert err.startswith("method.target_modules: ") and "mix_in, mix_out" in err


def test_position_limits_count_learned_tables_less_their_padding_offset(zoo) -> None:
    sk = lambda t: model_skeleton(str(zoo[t]), "classification", 2, VOCAB, 0, "cls")  # noqa: E731
    assert position_limit(sk("bert")) == 512
    assert position_limit(sk("roberta")) == 512 - 1  # RoBERTa's table starts after pad id 0
    assert position_limit(sk("llama")) == 512  # rotary: the config's declared maximum


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["method.target_modules=[nope]"],
            "method.target_modules: ['nope'] match no module of mpnet; its linear modules: q, k, v, o",
        ),
        (["model.max_length=600"], "model.max_length: 600 positions exceed the 510"),
        (
            ["method={name: prompt, num_virtual_tokens: 20}", "model.max_length=500"],
            "model.max_length: 500 + 20 soft prompt tokens",
        ),  # fmt: skip
        (
            ["method={name: adapter, target_modules: [output.nope]}"],
            "method.target_modules: no linear module of mpnet matches ['output.nope']",
        ),
    ],
)
def test_model_errors_exit_2_in_one_line_before_anything_starts(
    zoo, tmp_path, capsys, overrides, expected
) -> None:
    out = tmp_path / "run"
    ov = tiny_overrides(**{"model.name": str(zoo["mpnet"])})
    code = main(["run", str(QUICKSTART), *ov, *overrides, "--out", str(out), "--in-process"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and expected in err[0], err
    assert not out.exists()


TRAIN = {"federation.rounds": 1, "federation.num_clients": 2, "federation.clients_per_round": 2,
         "train.local_steps": 1, "model.max_length": 32, "data.max_train_samples": 32,
         "data.max_test_samples": 16}  # fmt: skip


@pytest.mark.parametrize("mtype", ENCODERS + DECODERS)
def test_every_architecture_trains_a_lora_round_by_path(zoo, tmp_path, mtype) -> None:
    cfg = load_config(QUICKSTART, tiny_overrides(**{"model.name": str(zoo[mtype]), **TRAIN}))
    (rec,) = run_records(start_run(cfg, out=str(tmp_path / "cls"), backend=LocalBackend()))
    assert math.isfinite(rec["train/loss"]) and 0 <= rec["eval/accuracy"] <= 1
    if mtype in DECODERS:  # and as causal LMs on the Austen novels
        ov = tiny_overrides(**{"model.name": str(zoo[mtype]), **TRAIN, "algorithm": "fedavg",
                               "data.partition.kind": "natural", "data.partition.alpha": None,
                               "federation.num_clients": 6})  # fmt: skip
        lm = load_config(AUSTEN, ov)
        (rec,) = run_records(start_run(lm, out=str(tmp_path / "lm"), backend=LocalBackend()))
        assert math.isfinite(rec["eval/perplexity"])


def test_check_model_applies_the_method_to_fedpts_small_model(zoo) -> None:
    cfg = load_config(AUSTEN, tiny_overrides(**{"model.name": str(zoo["qwen2"]),
                                                "fedpt.small_model": str(zoo["llama"]),
                                                "method.target_modules": "[nope]",
                                                "data.partition.kind": "natural",
                                                "data.partition.alpha": None}))  # fmt: skip
    with pytest.raises(ConfigError, match="method.target_modules"):
        check_model(cfg, 0, VOCAB, 0)
    cfg = load_config(AUSTEN, tiny_overrides(**{"model.name": str(zoo["mpnet"]),
                                                "fedpt.small_model": str(zoo["llama"]),
                                                "data.partition.kind": "natural",
                                                "data.partition.alpha": None}))  # fmt: skip
    with pytest.raises(ConfigError, match="model.task: .*mpnet.* cannot do causal_lm"):
        check_model(cfg, 0, VOCAB, 0)  # the black box must be a causal LM too


SPLITS = {"bert", "roberta", "distilbert", "electra", "xlm-roberta"}
REFUSED = {
    "albert": "no single list of its 3 blocks",
    "deberta-v2": "its blocks also take relative_pos, rel_embeddings",
    "mpnet": "its blocks also take position_bias",
    "modernbert": "its blocks also take position_embeddings",
}


@pytest.mark.parametrize("mtype", ENCODERS)
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_sfprompt_splits_any_encoder_built_of_one_block_list_or_says_why(
    zoo, tmp_path, mtype, pooling
) -> None:
    """head -> body -> tail equals the unsplit classifier (padding and both poolings), found
    without a list of families; what cannot be split is one line naming the reason."""
    from engine.split.model import SplitSpec, check_split, split_model

    path = zoo[mtype]
    if mtype == "electra":  # embeddings narrower than the blocks: ELECTRA's projection
        path = save_tiny("electra", tmp_path / "electra", embedding_size=16)
    if mtype in REFUSED:
        skeleton = model_skeleton(str(path), "classification", 2, VOCAB, 0, pooling)
        with pytest.raises(ConfigError, match=f"model.name: SFPrompt cannot split {mtype}: "
                           f"{REFUSED[mtype]}"):  # fmt: skip
            check_split(skeleton, SplitSpec(1, 1, 0), 16)
        return
    assert mtype in SPLITS
    model = load_model(str(path), "classification", 3, VOCAB, 0, 0, pooling).eval()
    ids = torch.tensor([[101, 5, 6, 7, 8, 102], [101, 9, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        client, body = split_model(model, SplitSpec(1, 1, 0))
        hidden, m = client.head({"input_ids": ids, "attention_mask": mask})
        got = client.tail(body(hidden, m), m)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_sfprompt_runs_a_saved_distilbert_and_refuses_mpnet_before_anything_starts(
    zoo, tmp_path, capsys
) -> None:
    sfprompt = ROOT / "configs" / "sfprompt" / "amazon_reviews.yaml"
    ov = tiny_overrides(**{"model.name": str(zoo["distilbert"]), **TRAIN,
                           "split.head_layers": 1, "split.tail_layers": 1,
                           "server.torch_threads": 1})  # fmt: skip
    run = start_run(load_config(sfprompt, ov), out=str(tmp_path / "ok"), backend=LocalBackend())
    (rec,) = run_records(run)
    assert math.isfinite(rec["train/loss"]) and 0 <= rec["eval/accuracy"] <= 1
    ov = tiny_overrides(**{"model.name": str(zoo["mpnet"]), **TRAIN})
    out = tmp_path / "refused"
    capsys.readouterr()
    assert main(["run", str(sfprompt), *ov, "--out", str(out), "--in-process"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SFPrompt cannot split mpnet" in err[0], err
    assert not out.exists()


METHODS = ["full", "lora", "adapter", "prefix", "prompt", "bitfit", "ia3"]


@pytest.mark.parametrize("mtype", ENCODERS + DECODERS)
def test_the_drivers_check_decides_every_method_as_the_worker_would(zoo, mtype) -> None:
    """On the weightless skeleton, check_model accepts exactly the methods that apply to the loaded
    model, and refuses the others with the same ConfigError (e.g. prefix tuning on Llama, BitFit on
    a model without biases): nothing a worker could refuse is left for the worker."""
    from engine.methods import get_method

    for method in METHODS:
        cfg = load_config(QUICKSTART, [f"model.name={zoo[mtype]}", f"method={{name: {method}}}"])
        try:
            check_model(cfg, 2, VOCAB, 0)
            driver = None
        except ConfigError as e:
            driver = e.key
        model = load_model(str(zoo[mtype]), "classification", 2, VOCAB, 0, 0, "cls")
        try:
            apply_method(model, "classification", get_method(method).params_type(name=method))
            worker = None
        except ConfigError as e:
            worker = e.key
        assert driver == worker, (method, driver, worker)


def test_a_tokenizer_beyond_the_models_embedding_exits_2_before_anything_starts(
    tmp_path, capsys
) -> None:
    path = save_tiny("bert", tmp_path / "small-vocab", vocab_size=1000)  # tokenizer: 30,522
    out = tmp_path / "run"
    ov = tiny_overrides(**{"model.name": str(path)})
    capsys.readouterr()
    assert main(["run", str(QUICKSTART), *ov, "--out", str(out), "--in-process"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "embeds only 1000 tokens" in err[0] and "model.name" in err[0], err
    assert not out.exists()


def test_a_model_too_big_for_this_machine_names_the_methods_size_field() -> None:
    from engine.model_check import check_size

    check_size("lora", 10, 300, memory=1200)  # 4 bytes x 300 = 1,200: fits exactly
    with pytest.raises(ConfigError, match=r"method.r: lora adds 10 parameters: .* 0.0 GiB"):
        check_size("lora", 10, 301, memory=1200)
    with pytest.raises(ConfigError, match="method.dim: adapter"):
        check_size("adapter", 1, 301, memory=1200)
    with pytest.raises(ConfigError, match="method.name: full"):
        check_size("full", 0, 301, memory=1200)
