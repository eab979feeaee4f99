"""Device and precision: auto's choice per device, autocast and the loss scaler, bf16 training on CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from actors.launch import start_run
from engine.backend import LocalBackend
from engine.config import load_config
from engine.device import CPU_FP32, Placement, resolve_precision
from tests.conftest import run_records, tiny_overrides, without_wall

ROOT = Path(__file__).resolve().parents[2]
CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize(
    ("precision", "device", "bf16_supported", "expected"),
    [
        ("auto", CPU, None, "fp32"),  # a CPU never autocasts by default
        ("auto", CUDA, True, "bf16"),  # Ampere and newer
        ("auto", CUDA, False, "fp32"),  # a GPU without bf16 keeps fp32 (fp16 only when asked)
        ("fp32", CUDA, True, "fp32"),
        ("bf16", CPU, None, "bf16"),  # asked for: CPU autocast supports bf16
        ("fp16", CUDA, False, "fp16"),
    ],
)
def test_auto_precision_follows_the_device(precision, device, bf16_supported, expected) -> None:
    assert resolve_precision(precision, device, bf16_supported) == expected


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="fp8"):
        resolve_precision("fp8", CPU)


def test_autocast_computes_in_the_low_precision_and_the_scaler_scales_fp16_only() -> None:
    layer = torch.nn.Linear(4, 3)
    x = torch.ones(2, 4)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        with Placement(CPU, precision).autocast():
            assert layer(x).dtype == dtype
    assert layer.weight.dtype == torch.float32  # the weights themselves are never cast
    assert not Placement(CPU, "bf16").scaler().is_enabled()
    assert Placement(CPU, "fp16").scaler().is_enabled()
    loss = torch.tensor(2.0)
    assert Placement(CPU, "fp32").scaler().scale(loss) is loss  # fp32 is untouched


def _run(tmp_path: Path, name: str, precision: str) -> list[dict]:
    cfg = load_config(
        ROOT / "configs" / "quickstart.yaml", tiny_overrides(**{"train.precision": precision})
    )
    return run_records(start_run(cfg, out=str(tmp_path / name), backend=LocalBackend()))


@pytest.mark.parametrize("low", ["bf16", "fp16"])
def test_a_low_precision_run_on_cpu_stays_within_tolerance_of_fp32(tmp_path: Path, low) -> None:
    """In-process runs (3 rounds, tiny BERT): autocast changes the numbers, not the outcome.

    Tolerance: bf16 keeps 8 mantissa bits (relative rounding 2**-9 = 0.2%) per op, fp16 11; over 6
    local steps and 3 rounds the eval loss may move by 2% and accuracy by 5 of the 64 test rows.
    fp16 also runs the loss scaler (scale, unscale before clipping, step, update).
    """
    runs = [_run(tmp_path, n, p) for n, p in (("a", "fp32"), ("b", low), ("c", low))]
    for r32, r16 in zip(runs[0], runs[1], strict=True):
        # autocast really ran in low precision (eval losses are float32 sums over 64 rows and may
        # round to the same value; the training loss averages every step of every client)
        assert r16["train/loss"] != r32["train/loss"]
        assert r16["eval/loss"] == pytest.approx(r32["eval/loss"], rel=0.02)
        assert abs(r16["eval/accuracy"] - r32["eval/accuracy"]) <= 5 / 64
        # device-independent accounting: the same bytes (fp32 state) and FLOPs whatever the precision
        assert r16["comm/bytes_up"] == r32["comm/bytes_up"]
        assert r16["client/flops_mean"] == r32["client/flops_mean"]
    assert without_wall(runs[2]) == without_wall(runs[1])  # and deterministic


def test_auto_on_a_cpu_is_bit_for_bit_fp32(tmp_path: Path) -> None:
    auto, fp32 = _run(tmp_path, "auto", "auto"), _run(tmp_path, "fp32", "fp32")
    assert without_wall(auto) == without_wall(fp32)


def test_cpu_fp32_moves_nothing() -> None:
    batch = {"input_ids": torch.arange(6).view(2, 3)}
    assert CPU_FP32.to_device(batch) is batch
    assert np.array_equal(
        CPU_FP32.to_device(batch)["input_ids"].numpy(), np.arange(6).reshape(2, 3)
    )


@pytest.mark.cuda
def test_a_tiny_model_trains_on_cuda_as_on_cpu_to_1e_4() -> None:
    """Ten Adam steps of LoRA on the tiny BERT, fp32 on both: the trained states agree to 1e-4."""
    from engine.methods import trainable_state
    from engine.methods.lora import LoraParams
    from tests.engine.methods.tiny_models import adapted, batch

    states = []
    for placement in (CPU_FP32, Placement(CUDA, "fp32")):
        model = adapted("bert", LoraParams()).to(placement.device)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(10):
            with placement.autocast():
                loss = model(**placement.to_device(batch("bert"))).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        states.append(trainable_state(model))
    for name, cpu in states[0].items():
        np.testing.assert_allclose(states[1][name], cpu, atol=1e-4, rtol=1e-4, err_msg=name)


@pytest.mark.cuda
def test_auto_is_bf16_on_a_gpu_that_has_it_and_stays_near_fp32(tmp_path: Path) -> None:
    """In process on the GPU: auto picks bf16 (Ampere or newer) and ends within bf16's tolerance."""
    assert Placement.here("auto").precision == (
        "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    )
    auto, fp32 = _run(tmp_path, "auto", "auto"), _run(tmp_path, "fp32", "fp32")
    for ra, rf in zip(auto, fp32, strict=True):
        assert ra["eval/loss"] == pytest.approx(rf["eval/loss"], rel=0.02)
        assert ra["comm/bytes_up"] == rf["comm/bytes_up"]
