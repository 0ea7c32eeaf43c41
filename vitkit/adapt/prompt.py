"""Visual prompt tuning — Jia et al., "Visual Prompt Tuning" (ECCV 2022), §3.2, Eqs. 1–2 (VPT-Shallow)
and Eqs. 3–4 (VPT-Deep); the prompt tokens of DVPT (He et al., 2023) are the same learnable queries.

``num_tokens`` learnable prompt tokens ``P`` are inserted after the prefix tokens (cls / dist /
registers) and before the patch tokens, after the position embedding (prompts carry no position):
``[x_cls, P, E]``. Shallow: only the input of block 0 gets prompts; deep: every block ``i`` replaces the
prompt slots of its input with its own ``P_i``. Prompts are trained with the head; the backbone is frozen.

What changes (``__class__`` swap + hooks): the model becomes ``Prompt<Class>`` whose ``_pos_embed``
appends the prompts, ``num_prefix_tokens`` grows by ``num_tokens`` (the adapter's ``ViTInfo`` counts them),
so avg-pooling skips them and every token-reduction method in ``vitkit.tokens`` keeps them like [CLS]
(never merged or dropped, always first). Deep prompts use a forward pre-hook on each block (so they
compose with the token-reduction block patch). State-dict keys: ``vpt_prompt`` and ``blocks.i.vpt_prompt``.
Not foldable (prompts are extra tokens): a *structure* step with a restore hook.

Deliberate differences: with a distilled DeiT the prompts go after both cls and dist tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchDropout

from ..adapters.timm_vit import PROMPT_TOKENS_ATTR, describe
from ..configs import TransformConfig
from ..errors import ConfigError, UnsupportedModelError
from ..registry import register_transform
from ..validate import check_bool, check_int, check_number
from .common import check_can_add, freeze_base, trainable_summary

START_ATTR = "_vitkit_prompt_start"
DROP_ATTR = "_vitkit_prompt_dropout"
ORIG_CLASS = "_vitkit_prompt_orig_class"


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


class PromptMixin(nn.Module):
    """Mixin placed before the model's own class: ``_pos_embed`` then insert ``vpt_prompt`` after the
    prefix tokens (VPT Eq. 1). Everything else is the model's own forward."""

    vitkit_adapt_kind = "prompt"

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        x = super()._pos_embed(x)  # [B, P0 + T, C]
        s = getattr(self, START_ATTR)
        p = F.dropout(self.vpt_prompt, getattr(self, DROP_ATTR), self.training).to(x.dtype)  # [1, P, C]
        return torch.cat([x[:, :s], p.expand(x.shape[0], -1, -1), x[:, s:]], dim=1)  # [B, P0 + P + T, C]


def _deep_prompt_hook(block: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook of block i > 0 (VPT Eq. 3): its own prompts replace the prompt slots of its input."""
    x = args[0] if args else kwargs["x"]  # [B, N, C]
    s = getattr(block, START_ATTR)
    p = F.dropout(block.vpt_prompt, getattr(block, DROP_ATTR), block.training).to(x.dtype)  # [1, P, C]
    x = torch.cat([x[:, :s], p.expand(x.shape[0], -1, -1), x[:, s + p.shape[1] :]], dim=1)  # [B, N, C]
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, "x": x}


_CLASSES: dict[type, type] = {}


def _prompt_class(base: type) -> type:
    if base not in _CLASSES:
        name = f"Prompt{base.__name__}"
        cls = type(name, (PromptMixin, base), {"__doc__": PromptMixin.__doc__})
        cls.__module__ = __name__
        globals()[name] = cls
        _CLASSES[base] = cls
    return _CLASSES[base]


def _prompt_init(shape: tuple[int, ...], patch_area: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """VPT's initialisation: uniform(±√(6 / (3·patch_area + dim))) (Xavier over the patch-embedding fan-in)."""
    val = math.sqrt(6.0 / float(3 * patch_area + dim))
    return (torch.rand(shape, generator=gen) * 2 - 1) * val


def _check_promptable(model: nn.Module) -> None:
    describe(model)
    if getattr(model, "dynamic_img_size", False):
        raise UnsupportedModelError(
            "visual prompts on a dynamic_img_size model are not supported (timm resamples position embeddings "
            "with num_prefix_tokens); build the model with a fixed img_size"
        )


def _add_prompts(model: nn.Module, cfg: PromptConfig) -> list[str]:
    info = describe(model)
    _check_promptable(model)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    dev, dt = model.patch_embed.proj.weight.device, model.patch_embed.proj.weight.dtype
    area = info.patch_size[0] * info.patch_size[1]
    P, start = int(cfg.num_tokens), int(info.num_prefix_tokens)
    model.__dict__[ORIG_CLASS] = type(model)
    model.__class__ = _prompt_class(type(model))
    model.vpt_prompt = nn.Parameter(_prompt_init((1, P, info.embed_dim), area, info.embed_dim, gen).to(dev, dt))
    setattr(model, START_ATTR, start)
    setattr(model, DROP_ATTR, float(cfg.dropout))
    params = ["vpt_prompt"]
    if cfg.deep:
        for i, blk in enumerate(model.blocks):
            if i == 0:
                continue  # block 0's prompts are the inserted ones
            blk.vpt_prompt = nn.Parameter(_prompt_init((1, P, info.embed_dim), area, info.embed_dim, gen).to(dev, dt))
            setattr(blk, START_ATTR, start)
            setattr(blk, DROP_ATTR, float(cfg.dropout))
            blk.register_forward_pre_hook(_deep_prompt_hook, with_kwargs=True)
            params.append(f"blocks.{i}.vpt_prompt")
    model.num_prefix_tokens = start + P
    setattr(model, PROMPT_TOKENS_ATTR, int(getattr(model, PROMPT_TOKENS_ATTR, 0) or 0) + P)
    if isinstance(getattr(model, "patch_drop", None), PatchDropout):
        model.patch_drop.num_prefix_tokens = model.num_prefix_tokens
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
    info = describe(model)
    _check_promptable(model)
    sets = info.depth if cfg.deep else 1
    added = sets * cfg.num_tokens * info.embed_dim
    decisions = {
        "prompt_sets": sets,
        "prefix_tokens": info.num_prefix_tokens + cfg.num_tokens,
        "prompt_params": int(added),
        "summary": f"{cfg.num_tokens} {'deep' if cfg.deep else 'shallow'} prompt tokens, +{added} params",
    }
    if not dry_run:
        _add_prompts(model, cfg)
        decisions["trainable"] = trainable_summary(model)
    return decisions
