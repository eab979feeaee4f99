"""Proxy-tuning math: vocabulary alignment, the proxy combination, temperature/top-p, the KD loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def align_vocab(*logits: torch.Tensor) -> list[torch.Tensor]:
    """Truncate every [..., V_i] to the smallest V: padded vocabularies add ids no token uses."""
    v = min(t.shape[-1] for t in logits)
    return [t[..., :v] for t in logits]


def proxy_logits(
    large: torch.Tensor, small_tuned: torch.Tensor, small_base: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Proxy-tuning (Liu et al. 2024): large + alpha * (small_tuned - small_base), vocab-aligned."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    large, tuned, base = align_vocab(large, small_tuned, small_base)
    return large.float() + alpha * (tuned.float() - base.float())


def sampling_log_probs(
    logits: torch.Tensor, temperature: float, top_p: float = 1.0
) -> torch.Tensor:
    """log softmax(logits / T) restricted to the top-p nucleus (renormalised); -inf outside it."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1:
        return logp
    sorted_lp, order = logp.sort(dim=-1, descending=True)
    # keep a token if the mass of the tokens before it is < top_p (the top token always stays)
    before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()
    keep_sorted = before < top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return F.log_softmax(logp.masked_fill(~keep, float("-inf")), dim=-1)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), mean over (masked) positions.

    Shapes [..., V]; `mask` [...] selects positions (1 = counted). The T^2 factor keeps gradient
    magnitudes comparable across temperatures (Hinton et al. 2015).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    student_logits, teacher_logits = align_vocab(student_logits, teacher_logits)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    # Positions where the teacher gives a token zero mass (top-p) contribute 0 * (-inf - s) = 0.
    per_pos = (t.exp() * (t - s)).nan_to_num(nan=0.0).sum(-1)
    if mask is None:
        return per_pos.mean() * temperature**2
    m = mask.to(per_pos.dtype)
    return (per_pos * m).sum() / m.sum().clamp_min(1.0) * temperature**2
