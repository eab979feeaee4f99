"""Proxy-tuning math against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from engine.lm.proxy import align_vocab, kd_loss, proxy_logits, sampling_log_probs


def test_proxy_combination_by_hand():
    large = torch.tensor([[1.0, 2.0, 3.0]])
    tuned = torch.tensor([[0.5, 0.0, 1.0]])
    base = torch.tensor([[0.0, 1.0, 1.0]])
    # 1 + a*0.5, 2 + a*(-1), 3 + a*0
    torch.testing.assert_close(
        proxy_logits(large, tuned, base, 1.0), torch.tensor([[1.5, 1.0, 3.0]])
    )
    torch.testing.assert_close(
        proxy_logits(large, tuned, base, 0.5), torch.tensor([[1.25, 1.5, 3.0]])
    )
    torch.testing.assert_close(proxy_logits(large, tuned, base, 0.0), large)
    with pytest.raises(ValueError, match="alpha"):
        proxy_logits(large, tuned, base, -0.1)


def test_vocab_truncation_drops_padding_ids():
    large = torch.tensor([[1.0, 2.0, 3.0]])
    tuned = torch.tensor([[0.5, 0.0, 1.0, 9.0, 9.0]])  # padded to 5
    base = torch.tensor([[0.0, 1.0, 1.0, 7.0, 7.0]])
    out = proxy_logits(large, tuned, base, 1.0)
    assert out.shape == (1, 3)
    torch.testing.assert_close(out, torch.tensor([[1.5, 1.0, 3.0]]))
    assert [t.shape[-1] for t in align_vocab(torch.zeros(4), torch.zeros(2), torch.zeros(3))] == [
        2
    ] * 3


def test_temperature_and_top_p_by_hand():
    logits = torch.tensor([math.log(1.0), math.log(2.0), math.log(7.0)])  # probs 0.1, 0.2, 0.7
    lp = sampling_log_probs(logits, temperature=1.0)
    torch.testing.assert_close(lp.exp(), torch.tensor([0.1, 0.2, 0.7]))
    # T = 2 takes square roots of the odds: 1 : sqrt 2 : sqrt 7
    z = 1 + math.sqrt(2) + math.sqrt(7)
    torch.testing.assert_close(
        sampling_log_probs(logits, 2.0).exp(),
        torch.tensor([1 / z, math.sqrt(2) / z, math.sqrt(7) / z]),
    )
    # top-p 0.8: 0.7 alone is < 0.8, so the 0.2 token joins; the 0.1 token is cut; renormalised
    got = sampling_log_probs(logits, 1.0, top_p=0.8).exp()
    torch.testing.assert_close(got, torch.tensor([0.0, 0.2 / 0.9, 0.7 / 0.9]))
    got = sampling_log_probs(logits, 1.0, top_p=0.5).exp()  # the top token always stays
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="temperature"):
        sampling_log_probs(logits, 0.0)


def test_kd_loss_by_hand():
    teacher = torch.tensor([[math.log(0.25), math.log(0.75)]])
    student = torch.tensor([[0.0, 0.0]])  # 0.5, 0.5
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert float(kd_loss(student, teacher)) == pytest.approx(kl, rel=1e-6)
    assert float(kd_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-7)
    # T = 2: teacher softmax(log p / 2) = sqrt odds 1 : sqrt 3, student still uniform; times T^2
    p = torch.tensor([1.0, math.sqrt(3)]) / (1 + math.sqrt(3))
    kl2 = float((p * (p / 0.5).log()).sum())
    assert float(kd_loss(student, teacher, temperature=2.0)) == pytest.approx(4 * kl2, rel=1e-5)


def test_kd_loss_mask_averages_selected_positions():
    teacher = torch.tensor([[[math.log(0.25), math.log(0.75)], [0.0, 0.0]]])
    student = torch.zeros(1, 2, 2)
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    mask = torch.tensor([[1, 0]])
    assert float(kd_loss(student, teacher, mask=mask)) == pytest.approx(kl, rel=1e-6)
    assert float(kd_loss(student, teacher)) == pytest.approx(kl / 2, rel=1e-6)


def test_kd_loss_gradient_matches_softmax_difference():
    teacher = torch.tensor([[math.log(0.25), math.log(0.75)]])
    student = torch.zeros(1, 2, requires_grad=True)
    kd_loss(student, teacher).backward()
    # d KL / d s = softmax(s) - p_teacher = (0.5 - 0.25, 0.5 - 0.75)
    torch.testing.assert_close(student.grad, torch.tensor([[0.25, -0.25]]))
