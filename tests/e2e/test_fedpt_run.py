"""FedPT end to end on a tiny random Llama: the black-box server, proxy evaluation, distillation, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actors.launch import start_run
from engine.backend import LocalBackend
from engine.config import load_config
from fedray.cli import main
from tests.conftest import record_diff, tiny_overrides

FEDPT = Path(__file__).resolve().parents[2] / "configs" / "fedpt" / "austen.yaml"
TINY = {
    "model.name": "tiny-llama-random",
    "model.max_length": 32,
    "data.max_train_samples": 240,
    "data.max_test_samples": 24,
    "data.partition.kind": "natural",
    "federation.num_clients": 6,
    "federation.clients_per_round": 2,
    "federation.rounds": 2,
    "fedpt.emulator_layers": "first1",
    "fedpt.emulator_distill_steps": 2,
    "fedpt.public_fraction": 0.1,
    "fedpt.distill_steps": 2,
    "fedpt.distill_batch_size": 4,
    "fedpt.server_num_cpus": 0.5,
    "fedpt.eval_alphas": "[0, 0.5]",
    "method.r": 4,
    "resources.num_workers": 1,
    "eval.every": 1,
}


def _cfg(**extra):
    ov = tiny_overrides(**{**TINY, **extra})
    return load_config(FEDPT, [o for o in ov if not o.startswith("data.partition.alpha")])


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _stable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if "wall" not in k} for r in records]


@pytest.fixture(scope="module")
def fedpt_run(ray_session, tmp_path_factory, monkeypatch_module) -> Path:
    return start_run(_cfg(), out=str(tmp_path_factory.mktemp("fedpt") / "ray"))


@pytest.fixture(scope="module")
def monkeypatch_module(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("FEDRAY_CACHE", str(tmp_path_factory.mktemp("cache")))  # emulators built here
    yield mp
    mp.undo()


def test_round_records_proxy_metrics_and_server_traffic(fedpt_run: Path) -> None:
    recs = _records(fedpt_run)
    assert [r["round"] for r in recs] == [1, 2]
    for r in recs:
        for key in ("eval/perplexity", "eval/proxy_perplexity", "eval/large_perplexity",
                    "eval/small_base_perplexity", "server/distill_loss"):  # fmt: skip
            assert key in r, key
        assert r["server/logit_bytes"] > 0
    samples = (fedpt_run / "samples.md").read_text()
    assert samples.count("- proxy-tuned large: ") == 3 and samples.count("## Sample") == 3
    for r in recs:  # alpha 0 is the large LM itself; alpha 0.5 is the configured alpha
        assert r["eval/proxy@0_perplexity"] == pytest.approx(r["eval/large_perplexity"], rel=1e-6)
        assert r["eval/proxy@0.5_perplexity"] == r["eval/proxy_perplexity"]
        assert r["eval/proxy@0_perplexity"] != r["eval/proxy_perplexity"]
    # base models never change: their metrics are identical every round
    assert recs[0]["eval/large_perplexity"] == recs[1]["eval/large_perplexity"]
    clients = [json.loads(x) for x in (fedpt_run / "clients.jsonl").read_text().splitlines()]
    summary = json.loads((fedpt_run / "summary.json").read_text())
    for c in clients:  # devices send only the small LM's LoRA state; logits stay server-side
        assert c["bytes_up"] == c["bytes_down"]
        assert (
            4 * summary["trainable_params"]
            < c["bytes_up"]
            < 4 * summary["trainable_params"] + 20_000
        )


def test_ray_equals_in_process(fedpt_run: Path, tmp_path: Path) -> None:
    local = start_run(_cfg(), out=str(tmp_path / "local"), backend=LocalBackend())
    diff = record_diff(_stable(_records(local)), _stable(_records(fedpt_run)))
    assert not diff, diff


def test_black_box_crash_mid_distillation_is_retried_and_changes_nothing(
    fedpt_run: Path, tmp_path: Path
) -> None:
    # faults.server_kill_round: the black-box actor dies inside a request of round 2
    recs = _records(start_run(_cfg(**{"faults.server_kill_round": 2}), out=str(tmp_path / "crash")))
    assert [r["server/restarts"] for r in recs] == [0, 1]
    drop = lambda rs: [{k: v for k, v in r.items() if k != "server/restarts"} for r in rs]  # noqa: E731
    assert drop(_stable(recs)) == drop(_stable(_records(fedpt_run)))


BAD = [
    (["fedpt.alpha=-0.5"], "fedpt.alpha"),
    (["fedpt.eval_alphas=[0.5, -1]"], "fedpt.eval_alphas"),
    (["fedpt.temperature=0"], "fedpt.temperature"),
    (["fedpt.distill_temperature=-1"], "fedpt.distill_temperature"),
    (["fedpt.public_split=validation"], "fedpt.public_split"),
    (["model.task=classification"], "model.task"),
    # the black box asks Ray for no GPU: bf16 and DeepSpeed's kernels would have none
    (["fedpt.server_dtype=bf16"], "fedpt.server_dtype: bf16 needs a GPU"),
    (["fedpt.kernel_inject=true"], "fedpt.kernel_inject"),
    (["fedpt.server_num_gpus=-1"], "fedpt.server_num_gpus"),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD)
def test_bad_fedpt_input_exits_2_with_one_line(overrides, expected, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    ov = [f"{k}={v}" for k, v in TINY.items()]
    code = main(["run", str(FEDPT), *ov, *overrides, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and expected in err[0], err
    assert not out.exists()


def test_proxy_from_clients_remembers_only_the_clients_updates(monkeypatch_module) -> None:
    """Hand-computed memory: round 1's aggregate A1; broadcast D1 (distilled); round 2's A2 ->
    proxied = A1 + (A2 - D1); the memory rides in checkpoints under server/ keys and comes back."""
    import numpy as np

    from engine.ledger import deserialize_state, serialize_state
    from engine.lm.server import FedPTServer, LocalFedPTServer
    from engine.lm.small import small_model_path
    from engine.prepare import prepare

    cfg = _cfg(**{"fedpt.proxy_from": "clients"})
    prep = prepare(cfg)
    small = small_model_path(cfg, prep.public, prep.public_rows, prep.pad_id)
    server = FedPTServer(cfg, small, None, prep.public, prep.public_rows, prep.test, prep.pad_id)
    init = server.initial
    a1, d1, a2 = ({k: v + c for k, v in init.items()} for c in (1.0, 0.25, 3.0))
    memory = server.remember(a1, {})
    assert all(np.array_equal(memory["clients"][k], a1[k]) for k in init)  # round 1: the aggregate
    memory = server.remember(a2, {**memory, "start": d1})
    for k in init:
        np.testing.assert_allclose(memory["clients"][k], a1[k] + (a2[k] - d1[k]))
    assert server.proxied(a2, memory) is memory["clients"]
    wrapped = LocalFedPTServer(server)
    wrapped.memory = memory
    blob = serialize_state(a2)
    saved = wrapped.with_state(blob)
    assert any(k.startswith("server/clients/") for k in deserialize_state(saved))
    again = LocalFedPTServer(server)
    assert again.restore(saved) == blob
    assert sorted(again.memory) == ["clients", "start"]
    for part in again.memory:
        for k, v in again.memory[part].items():
            np.testing.assert_array_equal(v, memory[part][k])
    glob = FedPTServer(_cfg(), small, None, prep.public, prep.public_rows, prep.test, prep.pad_id)
    assert glob.remember(a1, {}) == {} and glob.proxied(a1, {}) is a1  # the paper's loop: none


def test_proxy_from_clients_runs_on_ray_as_in_process_and_equals_global_without_distillation(
    fedpt_run: Path, tmp_path: Path
) -> None:
    clients = _cfg(**{"fedpt.proxy_from": "clients"})
    on_ray = _records(start_run(clients, out=str(tmp_path / "ray")))
    local = _records(start_run(clients, out=str(tmp_path / "local"), backend=LocalBackend()))
    assert _stable(on_ray) == _stable(local)
    off = {"fedpt.distill": False}
    plain = _records(start_run(_cfg(**off), out=str(tmp_path / "g"), backend=LocalBackend()))
    mine = _records(start_run(_cfg(**off, **{"fedpt.proxy_from": "clients"}), out=str(tmp_path / "c"),
                              backend=LocalBackend()))  # fmt: skip
    assert _stable(mine) == _stable(plain)  # without distillation the two are one
    # Round 1 proxies the clients' first aggregate, as a run without distillation does (the paper's
    # loop proxies the distilled state instead); round 2's clients start from the distilled state.
    key = "eval/proxy_perplexity"
    assert on_ray[0][key] == plain[0][key] != _records(fedpt_run)[0][key]
    assert on_ray[1][key] != plain[1][key]


def test_proxy_from_clients_resumes_exactly_with_its_memory(monkeypatch_module, tmp_path) -> None:
    import shutil

    from actors.launch import resume_run

    cfg = _cfg(**{"fedpt.proxy_from": "clients", "checkpoint.every": 1, "checkpoint.keep": 5})
    whole = start_run(cfg, out=str(tmp_path / "run"), backend=LocalBackend())
    expected = _stable(_records(whole))
    shutil.rmtree(whole / "checkpoints" / "round_00002")  # as if killed during round 2's save
    resume_run(whole, backend=LocalBackend())  # round 2 again, from round 1's state and memory
    # Every record equal to the last bit, the distillation loss and the aggregate's norm included:
    # a client's first step of a batch shape is measured (engine.cost.FlopCount) and must train as
    # the same step unmeasured, whichever worker had measured that shape before the resume.
    assert _stable(_records(whole)) == expected


def test_samples_of_a_direct_run_continue_fedpts_prompts_and_share_its_base(
    fedpt_run: Path, tmp_path: Path, capsys
) -> None:
    """`fedray samples` on the large LM tuned directly (fedavg, same data): the same prompts as the
    FedPT run's samples, and the same greedy continuation by the same base model (the black box)."""
    from engine.lm.samples import from_markdown, merge

    direct = start_run(
        _cfg(**{"algorithm": "fedavg", "federation.rounds": 1}),
        out=str(tmp_path / "direct"),
        backend=LocalBackend(),
    )
    capsys.readouterr()
    f = _cfg().fedpt
    assert (
        main(["samples", str(direct), "--n", str(f.generate), "--tokens", str(f.generate_tokens)])
        == 0
    )
    assert capsys.readouterr().out.strip() == str(direct / "samples.md")
    ours = from_markdown((direct / "samples.md").read_text())
    fedpt = from_markdown((fedpt_run / "samples.md").read_text())
    both = merge(fedpt, ours)  # raises unless the prompts are equal
    assert len(both) == 3
    for _, outs in both:
        assert outs["base"] == outs["base large"]
        assert set(outs) == {"base", "tuned (fedavg, lora)", "base large", "proxy-tuned large"}
    # a FedPT run, a run dir without checkpoints, and a non-run are refused in one line, exit 2
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text((direct / "config.yaml").read_text())
    for bad, expected in (
        (fedpt_run, "FedPT writes its samples.md itself"),
        (tmp_path / "empty", "has no checkpoint yet"),
        (tmp_path, "holds no config.yaml"),
    ):
        assert main(["samples", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
