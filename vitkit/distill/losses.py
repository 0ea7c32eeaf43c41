"""Distillation losses (pure functions on logits/features).

* soft KD (Hinton et al. 2015): ``τ² · KL(softmax(t/τ) ‖ softmax(s/τ))``, batch mean. DeiT's ``losses.py``
  divides the summed KL by the number of logit elements instead (a constant factor 1/C); we keep the
  Hinton batch mean so that ``alpha`` balances it against cross-entropy on the same scale.
* DeiT hard distillation (Touvron et al., ICML 2021, Eq. 3): ``CE(s, argmax t)``.
* NKD (Yang et al., "From KD to Self-KD", ICCV 2023, Eq. 8–9): target term ``-T_t · log S_t`` plus the
  non-target term on renormalised non-target distributions ``-γ τ² Σ_{i≠t} T̂_i log Ŝ_i``.
* feature KD: MSE between student and teacher features (a G2SD-style specific-stage feature term).
* TinyViT sparse soft targets (Wu et al., ECCV 2022, §3.1): dense target from cached top-k probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("soft", "hard", "nkd")


def soft_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    t = temperature
    log_s = F.log_softmax(student / t, dim=-1)  # [B, C]
    log_p = F.log_softmax(teacher / t, dim=-1)
    return F.kl_div(log_s, log_p, reduction="batchmean", log_target=True) * t * t


def hard_kd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(student, teacher.argmax(-1))


def nkd(
    student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, temperature: float = 1.0, gamma: float = 1.5
) -> torch.Tensor:
    """Normalized KD: target-class term + γτ²-weighted CE of the renormalised non-target distributions."""
    label = target.view(-1, 1)  # [B, 1]
    s_t = F.log_softmax(student, dim=-1).gather(1, label)  # [B, 1] log S_t
    t_t = F.softmax(teacher, dim=-1).gather(1, label).detach()  # [B, 1] T_t
    loss_t = -(t_t * s_t).mean()
    mask = torch.zeros_like(student, dtype=torch.bool).scatter_(1, label, True)  # [B, C] target position
    big = torch.finfo(student.dtype).max / 4
    s_non = F.log_softmax(student / temperature - big * mask, dim=-1)  # Ŝ over non-target classes
    t_non = F.softmax(teacher / temperature - big * mask, dim=-1).detach()  # T̂
    loss_non = -(t_non * s_non.masked_fill(mask, 0.0)).sum(-1).mean()
    return loss_t + gamma * temperature**2 * loss_non


def feature_kd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(student, teacher.detach())


def dense_from_topk(values: torch.Tensor, indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """TinyViT: ``p_c = v_c`` for the stored top-k classes, ``(1 − Σv) / (C − k)`` elsewhere → ``[B, C]``."""
    v = values.float()
    k = v.shape[-1]
    rest = ((1.0 - v.sum(-1, keepdim=True)).clamp_min(0.0) / max(num_classes - k, 1)).expand(-1, num_classes)
    return rest.clone().scatter_(1, indices.long(), v)


def soft_target_ce(student: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``τ² · −Σ p log softmax(s/τ)`` (equals soft KD up to the teacher entropy, a constant)."""
    return -(target * F.log_softmax(student / temperature, dim=-1)).sum(-1).mean() * temperature**2
