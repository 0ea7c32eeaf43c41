"""Exit heads (internal classifiers) placed after intermediate blocks.

LGViT (Xu et al., ACM MM 2023, §3.2) uses heterogeneous heads: a *local perception head* (depth-wise
convolution over the patch grid) on shallow exits and a *global aggregation head* (self-attention over
position-pooled tokens) on deep exits. vitkit's two heads, deliberately simpler:

* :class:`LinearExitHead` — pool (the model's own pooling: [CLS] token or mean of patch tokens) →
  LayerNorm → Linear; initialised from the model's final norm and classifier, so a deep exit starts out
  as "the final head applied early".
* :class:`AttentionPoolExitHead` — one learned query attends (multi-head, fused SDPA) over *all* tokens
  (prefix included), then LayerNorm → Linear. It plays the role of LGViT's global aggregation head
  without its spatial pooling; initialised so that it starts as mean pooling (query 0, value = identity).

No local-perception (convolutional) head: it needs the patch grid, which token reduction destroys. Both
heads honour token sizes from token merging (size-weighted mean / proportional attention ``+ log s``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def pool_tokens(x: torch.Tensor, pool: str, num_prefix: int, size: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, N, C]`` → ``[B, C]``: token 0 (``"token"``) or the (size-weighted) mean of patch tokens (``"avg"``)."""
    if pool == "token":
        return x[:, 0]
    feats = x[:, num_prefix:]  # [B, T, C]
    if size is None:
        return feats.mean(dim=1)
    w = size[:, num_prefix:]  # [B, T, 1]
    return (feats * w).sum(dim=1) / w.sum(dim=1)


class LinearExitHead(nn.Module):
    """pool → LayerNorm → Linear (see module docstring)."""

    def __init__(self, dim: int, num_classes: int, *, pool: str, num_prefix: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.pool, self.num_prefix = pool, num_prefix
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(self.norm(pool_tokens(x, self.pool, self.num_prefix, size)))  # [B, classes]


class AttentionPoolExitHead(nn.Module):
    """LayerNorm → one learned query attends over all tokens → proj → LayerNorm → Linear."""

    def __init__(self, dim: int, num_classes: int, *, num_heads: int, eps: float = 1e-6) -> None:
        super().__init__()
        if dim % num_heads:
            num_heads = 1
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.query = nn.Parameter(torch.zeros(1, num_heads, 1, self.head_dim))
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc_norm = nn.LayerNorm(dim, eps=eps)
        self.fc = nn.Linear(dim, num_classes)
        with torch.no_grad():  # start as mean pooling: q = 0 → uniform attention; v = x; proj = identity
            nn.init.trunc_normal_(self.kv.weight[:dim], std=0.02)
            self.kv.weight[dim:].copy_(torch.eye(dim))
            self.kv.bias.zero_()
            self.proj.weight.copy_(torch.eye(dim))
            self.proj.bias.zero_()

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        kv = self.kv(self.norm(x)).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)  # [B, H, N, hd]
        q = self.query.expand(B, -1, -1, -1).to(x.dtype)  # [B, H, 1, hd]
        bias = None
        if size is not None:  # proportional attention (ToMe §3): a merged token counts for its patches
            bias = size.log().transpose(1, 2).unsqueeze(1).to(x.dtype)  # [B, 1, 1, N]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.head_dim**-0.5)  # [B, H, 1, hd]
        out = self.proj(out.transpose(1, 2).reshape(B, C))  # [B, C]
        return self.fc(self.fc_norm(out))  # [B, classes]


def build_head(kind: str, *, dim: int, num_classes: int, num_heads: int, pool: str, num_prefix: int, eps: float):
    if kind == "linear":
        return LinearExitHead(dim, num_classes, pool=pool, num_prefix=num_prefix, eps=eps)
    if kind == "attention-pool":
        return AttentionPoolExitHead(dim, num_classes, num_heads=num_heads, eps=eps)
    raise ValueError(f"unknown exit head {kind!r}")


def init_from_final(head: nn.Module, final_norm: nn.Module | None, classifier: nn.Module) -> None:
    """Copy the model's final LayerNorm and classifier into the head's last norm + fc (when shapes fit)."""
    norm = head.norm if isinstance(head, LinearExitHead) else head.fc_norm
    with torch.no_grad():
        if isinstance(final_norm, nn.LayerNorm) and final_norm.weight is not None:
            if final_norm.weight.shape == norm.weight.shape:
                norm.weight.copy_(final_norm.weight)
                norm.bias.copy_(final_norm.bias)
        if isinstance(classifier, nn.Linear) and classifier.weight.shape == head.fc.weight.shape:
            head.fc.weight.copy_(classifier.weight)
            if classifier.bias is not None:
                head.fc.bias.copy_(classifier.bias)
