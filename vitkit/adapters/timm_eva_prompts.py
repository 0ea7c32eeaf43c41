"""Visual prompt tokens in a timm ``Eva`` (VPT, Jia et al., ECCV 2022, Eq. 1 shallow / Eq. 3 deep).

As for the plain ViT (:mod:`.timm_vit_prompts`, whose deep-prompt hook and attribute names are reused): prompts
enter right after the prefix tokens (cls, registers), after the absolute position embedding, and count as prefix
tokens from then on — ``num_prefix_tokens`` grows on the model (average pooling skips them, token reduction keeps
them) *and on every attention core*, so RoPE, which ``EvaAttention`` applies to the tokens after its prefix, keeps
rotating exactly the patch tokens (prompts carry no position, as in VPT). The model's class becomes
``Prompt<Class>``, whose ``_pos_embed`` (it returns ``(tokens, rope)`` in Eva) appends ``vpt_prompt``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..patching import mixin_class
from .timm_vit_prompts import DROP_ATTR, START_ATTR, install_prompts


class PromptEvaMixin(nn.Module):
    """Mixin placed before an Eva's own class: ``_pos_embed`` then insert ``vpt_prompt`` after the prefix tokens."""

    vitkit_adapt_kind = "prompt"  # the adapter-kind marker vitkit.adapt reads from module classes

    def _pos_embed(self, x: torch.Tensor):
        x, rope = super()._pos_embed(x)  # [B, P0 + T, C], RoPE of the T patch tokens
        s = getattr(self, START_ATTR)
        p = F.dropout(self.vpt_prompt, getattr(self, DROP_ATTR), self.training).to(x.dtype)  # [1, P, C]
        return torch.cat([x[:, :s], p.expand(x.shape[0], -1, -1), x[:, s:]], dim=1), rope  # [B, P0 + P + T, C]


def add_prompt_tokens(
    model: nn.Module, shallow: torch.Tensor, deep: Sequence[torch.Tensor] = (), *, dropout: float = 0.0
) -> list[str]:
    """Insert prompt tokens (see :func:`.timm_vit_prompts.add_prompt_tokens` for the arguments)."""
    depth = len(model.blocks)
    if deep and len(deep) != depth - 1:
        raise ValueError(f"deep prompts: one set per block after the first ({depth - 1}), got {len(deep)}")
    P, start = int(shallow.shape[1]), int(model.num_prefix_tokens)
    cls = mixin_class(PromptEvaMixin, type(model), f"Prompt{type(model).__name__}", module=__name__)
    params = install_prompts(model, cls, shallow, deep, start, dropout)
    for blk in model.blocks:
        blk.attn.num_prefix_tokens = start + P  # RoPE rotates the tokens after the prefix: the patches only
    return params
