"""Accuracy and agreement with a baseline, from logits collected once per model."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import iterate_batches


def classify(model: nn.Module, dataset, *, batch_size: int = 128, limit: int | None = None):
    """All logits and labels of ``dataset`` (eval mode, inference mode)."""
    model.eval()
    outs, labels = [], []
    with torch.inference_mode():
        for x, y in iterate_batches(dataset, batch_size, limit=limit):
            outs.append(model(x).float())
            labels.append(torch.as_tensor(y))
    return torch.cat(outs), torch.cat(labels)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    k = min(k, logits.shape[-1])
    hit = (logits.topk(k, dim=-1).indices == labels[:, None]).any(-1)
    return float(hit.float().mean())


def agreement(candidate: torch.Tensor, baseline: torch.Tensor) -> dict[str, float]:
    """Top-1 agreement and mean KL(baseline ‖ candidate) over the same inputs."""
    top1 = float((candidate.argmax(-1) == baseline.argmax(-1)).float().mean())
    kl = F.kl_div(F.log_softmax(candidate, -1), F.log_softmax(baseline, -1), log_target=True, reduction="batchmean")
    return {"agreement": top1, "kl": float(kl)}
