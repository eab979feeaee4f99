"""SFPrompt's bad inputs: exit 2, one line naming the key, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedray.cli import main
from tests.conftest import tiny_overrides

SFPROMPT = str(Path(__file__).resolve().parents[2] / "configs" / "sfprompt" / "amazon_reviews.yaml")

BAD = [
    # tiny-bert-random has 2 blocks: the body must keep at least one
    (["split.head_layers=1", "split.tail_layers=1"], "split.head_layers"),
    (["split.tail_layers=2"], "split.head_layers"),
    (["split.prompt_length=-1"], "split.prompt_length"),
    (["split.prompt_length=500"], "split.prompt_length"),  # 500 + max_length 64 > 512 positions
    (["pruning.keep_ratio=0"], "pruning.keep_ratio"),
    (["pruning.keep_ratio=1.5"], "pruning.keep_ratio"),
    (["pruning.score=gradnorm"], "pruning.score"),
    (["split.encoder_lr=0"], "split.encoder_lr"),
    (["split.encoder_lr=fast"], "split.encoder_lr"),
    (["server.zero_stage=4"], "server.zero_stage"),
    (["split.compress=int4"], "split.compress"),
    (["model.name=tiny-llama-random"], "model.name"),
    (["train.precision=bf16"], "train.precision"),  # the split client trains in fp32 for now
    (["server.dtype=bf16"], "server.dtype: bf16 needs the body server on a GPU"),  # num_gpus 0
    (["data.name=fashion_mnist"], "model.name"),  # a text model on images
    (
        ["split.prompt_length=0", "split.train_tail=false"],
        "split.prompt_length: nothing would train",
    ),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD)
def test_bad_sfprompt_input_exits_2_with_one_line(overrides, expected, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["run", SFPROMPT, *tiny_overrides(), *overrides, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expected in err[0], err
    assert not out.exists()
