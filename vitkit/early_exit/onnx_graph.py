"""A static graph of per-sample early exiting, for ONNX export.

Per-sample exiting is data-dependent control flow, which a traced ONNX graph cannot hold. The exported graph
therefore computes every exit head and the final head and, per sample, selects the logits of the first exit
whose score passes its threshold — the same decisions and the same outputs as :func:`exiting_forward`, so the
export parity check compares like with like. It does *not* save compute in ONNX Runtime (every block runs);
the saving is PyTorch-side (or a segmented export, not written yet).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..ops.early_exit import effective_thresholds, exit_scores
from .runtime import all_exit_logits, state


class ExitSelectGraph(nn.Module):
    """``forward(x)`` = the logits per-sample early exiting would return, computed without control flow."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        st = state(model)
        self.criterion = st.criterion
        self.register_buffer("thresholds", effective_thresholds(st.thresholds, st.active), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = all_exit_logits(self.model, x)  # E+1 × [B, C], the final head last
        logits = torch.stack(outs)  # [E+1, B, C]
        scores = torch.stack([exit_scores(o, self.criterion) for o in outs[:-1]])  # [E, B]
        passed = scores >= self.thresholds.view(-1, 1)  # [E, B]
        passed = torch.cat([passed, torch.ones_like(passed[:1])], dim=0).float()  # final head always passes
        first = passed.argmax(dim=0)  # [B]: first exit passed (argmax returns the first maximum)
        idx = first.view(1, -1, 1).expand(1, logits.shape[1], logits.shape[2])
        return logits.gather(0, idx).squeeze(0)  # [B, C]
