"""Visual prompt tuning — Jia et al., "Visual Prompt Tuning" (ECCV 2022), §3.2, Eqs. 1–2 (VPT-Shallow)
and Eqs. 3–4 (VPT-Deep); the prompt tokens of DVPT (He et al., 2023) are the same learnable queries.

``num_tokens`` learnable prompt tokens ``P`` are inserted after the prefix tokens (cls / dist /
registers) and before the patch tokens, after the position embedding (prompts carry no position):
``[x_cls, P, E]``. Shallow: only the input of block 0 gets prompts; deep: every block ``i`` replaces the
prompt slots of its input with its own ``P_i``. Prompts are trained with the head; the backbone is frozen.

What changes: the host adapter inserts the tokens (``adapter_for(model).add_prompt_tokens``; for timm see
:mod:`vitkit.adapters.timm_vit_prompts`): the model becomes ``Prompt<Class>`` whose ``_pos_embed`` appends the
prompts, the prefix-token count grows by ``num_tokens`` (the adapter's ``ViTInfo`` counts them), so avg-pooling
skips them and every token-reduction method in ``vitkit.tokens`` keeps them like [CLS] (never merged or
dropped, always first). Deep prompts use a forward pre-hook on each block (so they compose with the
token-reduction block patch). State-dict keys: ``vpt_prompt`` and ``blocks.i.vpt_prompt``. This module keeps
VPT's initialisation and the step. Not foldable (prompts are extra tokens): a *structure* step with a restore
hook.

Deliberate differences: with a distilled DeiT the prompts go after both cls and dist tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..adapters import adapter_for
from ..configs import TransformConfig
from ..errors import ConfigError
from ..registry import register_transform
from ..validate import check_bool, check_int, check_number
from .common import check_can_add, freeze_base, trainable_summary


@dataclass(frozen=True)
class PromptConfig(TransformConfig):
    """VPT with ``num_tokens`` prompts, ``deep`` (a prompt set per block) or shallow (block 0 only);
    ``dropout`` on the prompts; ``train_also`` as in :class:`~vitkit.adapt.LoRAConfig`."""

    num_tokens: int = 10
    deep: bool = False
    dropout: float = 0.0
    train_also: tuple[str, ...] | None = None
    seed: int = 0

    def validate(self) -> None:
        check_int(self.num_tokens, "PromptConfig.num_tokens", low=1)
        check_bool(self.deep, "PromptConfig.deep")
        check_number(self.dropout, "PromptConfig.dropout", low=0.0, high=1.0, high_open=True)
        if self.targets is not None or self.skip:
            raise ConfigError("PromptConfig takes no targets/skip: prompts enter at block 0 (and every block if deep)")


def _prompt_init(shape: tuple[int, ...], patch_area: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """VPT's initialisation: uniform(±√(6 / (3·patch_area + dim))) (Xavier over the patch-embedding fan-in)."""
    val = math.sqrt(6.0 / float(3 * patch_area + dim))
    return (torch.rand(shape, generator=gen) * 2 - 1) * val


def _add_prompts(model: nn.Module, cfg: PromptConfig) -> list[str]:
    host = adapter_for(model)
    info = host.describe(model)
    host.check_prompt_tokens(model)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    area = info.patch_size[0] * info.patch_size[1]
    shape = (1, int(cfg.num_tokens), info.embed_dim)
    shallow = _prompt_init(shape, area, info.embed_dim, gen)  # block 0's prompts: inserted after the prefix tokens
    deep = [_prompt_init(shape, area, info.embed_dim, gen) for _ in range(1, info.depth)] if cfg.deep else []
    params = host.add_prompt_tokens(model, shallow, deep, dropout=float(cfg.dropout))
    freeze_base(model, params, cfg.train_also)
    return params


@register_transform(
    PromptConfig,
    name="prompt",
    kind="structure",
    paper="VPT — Visual Prompt Tuning (Jia et al., ECCV 2022); DVPT (He et al., 2023)",
    restore=lambda model, cfg, decisions: _add_prompts(model, cfg),
    example={"num_tokens": 2, "deep": True},
)
def apply_prompt(model: nn.Module, cfg: PromptConfig, *, calib=None, dry_run: bool = False) -> dict:
    check_can_add(model, "prompt")
    host = adapter_for(model)
    info = host.describe(model)
    host.check_prompt_tokens(model)
    sets = info.depth if cfg.deep else 1
    added = sets * cfg.num_tokens * info.embed_dim
    decisions = {
        "prompt_sets": sets,
        "prefix_tokens": host.prefix_tokens(model) + cfg.num_tokens,
        "prompt_params": int(added),
        "summary": f"{cfg.num_tokens} {'deep' if cfg.deep else 'shallow'} prompt tokens, +{added} params",
    }
    if not dry_run:
        _add_prompts(model, cfg)
        decisions["trainable"] = trainable_summary(model)
    return decisions
