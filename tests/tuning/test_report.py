"""Tests for tuning/report*.py and tuning/plots.py: pure helpers by hand, rendered run/sweep reports."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import ConfigError
from tuning import plots
from tuning.report import grid, pareto_front, report, straggler_timeline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_PNGS = ["metric_vs_round", "metric_vs_comm", "client_bytes", "timeline", "partition"]
SWEEP_PNGS = ["final_by_axes", "pareto_bytes_total", "pareto_client_flops"]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _client_row(rnd: int, c: int) -> dict:
    return {
        "round": rnd,
        "client": c,
        "bytes_up": 1e6 * (c + 1),
        "bytes_down": 2e6,
        "flops": 1e9,
        "virtual_download_s": 1.0,
        "virtual_compute_s": 2.0 + c + rnd,
        "virtual_upload_s": 0.5,
        "virtual_latency_s": 0.04,
    }


def make_run(root: Path, lm: bool = False) -> Path:
    """3 rounds, 3 clients, eval on rounds 2 and 3; client 1 fails in round 3."""
    run = root / ("lm" if lm else "cls")
    run.mkdir()
    metrics = []
    for r in (1, 2, 3):
        rec = {
            "round": r,
            "comm/bytes_up": 6e6,
            "comm/bytes_down": 6e6,
            "comm/bytes_total_cum": 12e6 * r,
            "time/round_virtual_s": 7.0,
            "train/loss": 1.0 / r,
            "time/virtual_s": 7.0 * r,
        }
        if r > 1 and lm:
            rec |= {
                "eval/perplexity": 90.0 / r,
                "eval/proxy_perplexity": 40.0 / r,
                "eval/large_perplexity": 20.0,
                "eval/accuracy": 0.2,
            }
        elif r > 1:
            rec |= {"eval/accuracy": 0.5 + 0.1 * r, "eval/macro_f1": 0.4 + 0.1 * r}
        metrics.append(rec)
    _jsonl(run / "metrics.jsonl", metrics)
    rows = [_client_row(r, c) for r in (1, 2, 3) for c in range(3)]
    rows[7] = {"round": 3, "client": 1, "bytes_up": 0, "bytes_down": 2e6}  # failed: no times
    _jsonl(run / "clients.jsonl", rows)
    clients = [{"client": c, "size": 10 + c, "label_histogram": [c + 2, 8]} for c in range(3)]
    names = None if lm else ["neg", "pos"]
    (run / "partition.json").write_text(
        json.dumps({"num_clients": 3, "label_names": names, "clients": clients})
    )
    summary = {"name": "toy", "algorithm": "fedavg", "method": "lora", "comm_bytes_total": 36e6}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def _trial(tid: str, a: float, b: int, final: float | None, mb: float, gflops: float) -> dict:
    return {
        "trial_id": tid,
        "params": {"pruning.keep_ratio": a, "split.prompt_length": b},
        "status": "TERMINATED" if final is not None else "ERROR",
        "error": None if final is not None else "Traceback ...\nRuntimeError: | boom",
        "final": final,
        "best": final,
        "bytes_total": mb * 1e6,
        "client_flops": gflops * 1e9,
        "virtual_s": 12.5,
        "run_dir": f"trials/{tid}",
    }


def make_sweep(root: Path, axes: list[str] | None = None) -> Path:
    """A 4x2 grid: (0.1, 20) and (0.3, 10) failed, (0.3, 20) and (0.9, 20) never ran, (0.9, 10)
    dominated on bytes."""
    sweep = root / "sweep"
    sweep.mkdir()
    rows = [
        _trial("t0", 0.1, 10, 0.70, 2.0, 3.0),
        _trial("t1", 0.5, 10, 0.80, 4.0, 1.0),
        _trial("t2", 0.9, 10, 0.75, 5.0, 2.0),
        _trial("t3", 0.1, 20, None, 1.0, 1.0),
        _trial("t4", 0.5, 20, 0.60, 1.0, 5.0),
        _trial("t5", 0.3, 10, None, 1.0, 1.0),
    ]
    if axes is None:
        axes = ["pruning.keep_ratio", "split.prompt_length"]
    doc = {
        "sweep": {"name": "toy-sweep", "metric": "eval/accuracy", "mode": "max", "axes": axes},
        "rows": rows,
    }
    (sweep / "results.json").write_text(json.dumps(doc))
    return sweep


def assert_pngs(index: Path, names: list[str]) -> str:
    text = index.read_text()
    for name in names:
        png = index.parent / f"{name}.png"
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert len(data) > 5_000, name
        assert f"]({name}.png)" in text, name
    assert not [p for p in index.parent.parent.iterdir() if p.name.startswith(".report-")]
    return text


# ---- pure helpers ----------------------------------------------------------------------------


def test_pareto_front_by_hand() -> None:
    pts = [(1, 0.5), (2, 0.7), (3, 0.6), (2, 0.7), (4, 0.9), (1, 0.4), (2, 0.65), (0.5, math.nan)]
    # (1,.4) loses to (1,.5); (3,.6) and (2,.65) to (2,.7); the two (2,.7) tie and both stay; NaN out
    assert pareto_front(pts) == [0, 1, 3, 4]
    # minimising y (perplexity): (3,4) loses to (2,3); sorted by x, cheapest first
    assert pareto_front([(1, 5.0), (2, 3.0), (3, 4.0), (0.5, 9.0)], maximize_y=False) == [3, 0, 1]
    assert pareto_front([]) == []


def test_grid_sorts_axes_and_marks_missing_cells() -> None:
    rows = [
        {"params": {"x": 2, "y": "b"}, "v": 1.0},
        {"params": {"x": 1, "y": "b"}, "v": 2.0},
        {"params": {"x": 1, "y": "a"}, "v": 3.0},
        {"params": {"x": 1, "y": "a"}, "v": 5.0},  # same cell: the max wins
        {"params": {"x": 3, "y": "a"}, "v": None},  # a failed trial still adds x=3
        {"params": {"y": "a"}, "v": 9.0},  # no x: ignored
    ]
    xs, ys, m = grid(rows, "x", "y", "v")
    assert (xs, ys) == ([1, 2, 3], ["a", "b"])
    assert m[0][0] == 5.0 and math.isnan(m[0][1]) and math.isnan(m[0][2])
    assert m[1][:2] == [2.0, 1.0] and math.isnan(m[1][2])
    assert grid(rows, "x", "y", "v", mode="min")[2][0][0] == 3.0


def test_straggler_timeline_one_round_sorted_skipping_failed() -> None:
    rows = [_client_row(1, 2), _client_row(1, 0), _client_row(2, 1), {"round": 1, "client": 1}]
    assert straggler_timeline(rows, 1) == [(0, 1.0, 3.0, 0.5, 0.04), (2, 1.0, 5.0, 0.5, 0.04)]
    assert straggler_timeline(rows, 5) == []


def test_import_is_cheap() -> None:
    code = "import sys, tuning.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- rendered reports ------------------------------------------------------------------------


def test_run_report_renders_every_figure_and_replaces_old(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "report").mkdir()
    (run / "report" / "stale.png").write_bytes(b"old")
    index = report(run)
    assert index == run / "report" / "index.md"
    text = assert_pngs(index, RUN_PNGS)
    assert not (run / "report" / "stale.png").exists()
    assert "toy (fedavg, lora)" in text
    # accuracy 0.7, 0.8 on rounds 2, 3; 36 MB after 3 rounds; round 3 straggler is client 2
    assert "final 0.8 at round 3, best 0.8 at round 3" in text
    assert "36 MB in 3 rounds" in text
    assert "round 3: client 2, 8.54 s, mostly compute" in text
    # client 2 moves 3 MB up + 2 MB down in each of 3 rounds
    assert "client 2 moved the most, 15 MB" in text


def test_lm_run_plots_perplexity_and_sizes(tmp_path: Path) -> None:
    text = assert_pngs(report(make_run(tmp_path, lm=True)), RUN_PNGS)
    assert "final 30 at round 3" in text and "FedPT lines" in text
    assert "no class labels" in text


def test_sweep_report_renders_with_failed_trial(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    (sweep / "trials" / "t1").mkdir(parents=True)
    text = assert_pngs(report(sweep), SWEEP_PNGS)
    for tid in ("t0", "t1", "t2", "t3", "t4", "t5"):
        assert f"| {tid} |" in text or f"| **{tid}** |" in text
    assert "| **t1** |" in text
    assert "| ERROR |" in text and "RuntimeError: \\| boom" in text and "Traceback" not in text
    assert "[t1](../trials/t1)" in text and "| `trials/t0` |" in text  # t0's folder is gone
    assert "Best trial: **t1**" in text
    assert "Best (red box, maximise): 0.8 at pruning.keep_ratio=0.5, split.prompt_length=10" in text
    # bytes front: t4 (1 MB, 0.6), t0 (2 MB, 0.7), t1 (4 MB, 0.8); t2 is dominated
    assert (
        "keep_ratio=0.5, prompt_length=20 (1, 0.6); keep_ratio=0.1, prompt_length=10 (2, 0.7); "
        "keep_ratio=0.5, prompt_length=10 (4, 0.8)." in text
    )


def test_sweep_report_renders_and_links_trial_run_reports(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    trials = sweep / "trials"
    trials.mkdir()
    make_run(tmp_path).rename(trials / "t1")
    (trials / "t2").mkdir()  # a broken run: its report fails, the sweep's must not
    (trials / "t2" / "metrics.jsonl").write_text('{"round": 1}\nnot json\n{"round": 2}\n')
    (trials / "t4").mkdir()  # no metrics.jsonl yet: nothing to render, link the folder
    text = report(sweep).read_text()
    assert "toy (fedavg, lora)" in assert_pngs(trials / "t1" / "report" / "index.md", RUN_PNGS)
    assert "[t1](../trials/t1/report/index.md)" in text
    assert "[t2](../trials/t2)" in text and "[t4](../trials/t4)" in text
    assert "1 of 2 trial run directories holding a metrics.jsonl got their own" in text
    assert "- **t2**: " in text and "metrics.jsonl line 2 is not JSON" in text
    assert not (trials / "t2" / "report").exists() and not (trials / "t4" / "report").exists()


def test_sweep_with_one_axis_draws_a_line(tmp_path: Path) -> None:
    text = assert_pngs(report(make_sweep(tmp_path, axes=["pruning.keep_ratio"])), SWEEP_PNGS)
    assert "Best: 0.8 at pruning.keep_ratio=0.5" in text
    assert "every trial failed at 0.3." in text  # 0.1 failed once but also finished once


def test_a_windowed_sweep_ranks_plots_and_lists_its_scores(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    doc = json.loads((sweep / "results.json").read_text())
    doc["sweep"]["score_window"] = 2
    scores = {"t0": 0.72, "t1": 0.55, "t2": 0.74, "t4": 0.61}  # t2 best by score, t1 by final
    for r in doc["rows"]:
        r["score"] = scores.get(r["trial_id"])
    (sweep / "results.json").write_text(json.dumps(doc))
    text = assert_pngs(report(sweep), SWEEP_PNGS)
    assert "Trials ranked by eval/accuracy (mean of last 2)" in text
    assert "Best trial: **t2**" in text and "| **t2** |" in text
    assert "Best (red box, maximise): 0.74 at pruning.keep_ratio=0.9" in text
    # the table keeps the final value beside the score: t1's 0.8 then 0.55
    assert "| mean of last 2 |" in text and "| 0.8 | 0.55 |" in text
    # bytes front on scores: t4 (1 MB, 0.61), t0 (2 MB, 0.72), t2 (5 MB, 0.74); t1 dominated
    assert "(1, 0.61); keep_ratio=0.1, prompt_length=10 (2, 0.72); keep_ratio=0.9" in text
    doc["sweep"]["score_window"] = 0
    (sweep / "results.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="score_window"):
        report(sweep)


def test_sweep_with_seeds_draws_each_settings_spread(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    doc = json.loads((sweep / "results.json").read_text())
    doc["settings"] = [
        {"params": {"train.lr": 0.001}, "seeds": [0, 1, 2], "finals": [0.7, 0.8, 0.9],
         "missing": [], "n": 3, "mean": 0.8, "std": 0.1},
        {"params": {"train.lr": 0.01}, "seeds": [0], "finals": [0.85], "missing": [1, 2],
         "n": 1, "mean": 0.85, "std": 0.0},
        {"params": {"train.lr": 0.1}, "seeds": [], "finals": [], "missing": [0, 1, 2],
         "n": 0, "mean": None, "std": None},
    ]  # fmt: skip
    (sweep / "results.json").write_text(json.dumps(doc))
    text = assert_pngs(report(sweep), [*SWEEP_PNGS, "final_over_seeds"])
    assert "Best setting over seeds: **lr=0.01**, 0.85 +- 0 (mean +- std of 1)." in text
    assert "Seeds missing (failed or stopped early): lr=0.01 (1, 2); lr=0.1 (0, 1, 2)." in text
    doc["settings"][0].pop("mean")
    (sweep / "results.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="settings"):
        report(sweep)


# ---- user errors -----------------------------------------------------------------------------


def test_dir_without_inputs_names_run_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        report(tmp_path)
    assert e.value.key == "RUN_DIR" and "neither metrics.jsonl" in e.value.message


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("metrics.jsonl", ""),
        ("metrics.jsonl", '{"round": 1}\nnot json\n{"round": 2}\n'),
        ("metrics.jsonl", '[1, 2]\n{"round": 2}\n'),
        ("results.json", "{"),
        ("results.json", '{"sweep": {"metric": "m", "mode": "max"}, "rows": []}'),
        ("results.json", '{"sweep": {"metric": "m", "mode": "best"}, "rows": [{}]}'),
    ],
)
def test_malformed_input_names_the_file(tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError) as e:
        report(tmp_path)
    assert e.value.key == "RUN_DIR" and name in e.value.message
    assert list(tmp_path.iterdir()) == [tmp_path / name]  # nothing half-written


def test_cut_last_metrics_line_is_dropped(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"round": 4, "train/lo')
    assert "3 rounds logged" in report(run).read_text()


def test_failure_while_drawing_keeps_the_old_report(tmp_path, monkeypatch) -> None:
    run = make_run(tmp_path)
    (run / "report").mkdir()
    (run / "report" / "index.md").write_text("old")

    def boom(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots, "timelines", boom)
    with pytest.raises(RuntimeError):
        report(run)
    assert (run / "report" / "index.md").read_text() == "old"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
