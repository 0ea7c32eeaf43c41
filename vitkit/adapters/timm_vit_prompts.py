"""Visual prompt tokens in a timm ``VisionTransformer``: the host surgery behind ``vitkit.adapt`` VPT.

Prompt tokens ``P`` enter right after the prefix tokens (cls / dist / registers) and before the patch tokens,
after the position embedding (prompts carry no position): ``[x_cls, P, E]`` (Jia et al., VPT, Eq. 1). The model's
class becomes ``Prompt<Class>``, whose ``_pos_embed`` appends ``vpt_prompt``; deep prompts (VPT Eq. 3) are a
forward pre-hook on every block after the first that writes the block's own ``vpt_prompt`` into the prompt slots
of its input (a hook, so they compose with the token-reduction block patch). ``num_prefix_tokens`` grows by the
prompt count (and :data:`~.timm_vit.PROMPT_TOKENS_ATTR` records it), so average pooling skips the prompts and
token reduction keeps them like [CLS]. State-dict keys: ``vpt_prompt`` and ``blocks.i.vpt_prompt``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchDropout

from ..errors import UnsupportedModelError
from ..patching import mixin_class
from .timm_vit import PROMPT_TOKENS_ATTR, describe

#: Attributes set on the model (and on each deep-prompted block): where the prompts start, their dropout.
START_ATTR = "_vitkit_prompt_start"
DROP_ATTR = "_vitkit_prompt_dropout"
#: The model's class before the ``Prompt<Class>`` swap (kept in the instance ``__dict__``).
ORIG_CLASS = "_vitkit_prompt_orig_class"
#: Parameter name of the prompts inserted after the prefix tokens (and of each block's own deep prompts).
PROMPT_PARAM = "vpt_prompt"


class PromptMixin(nn.Module):
    """Mixin placed before the model's own class: ``_pos_embed`` then insert ``vpt_prompt`` after the
    prefix tokens (VPT Eq. 1). Everything else is the model's own forward."""

    vitkit_adapt_kind = "prompt"  # the adapter-kind marker vitkit.adapt reads from module classes

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        x = super()._pos_embed(x)  # [B, P0 + T, C]
        s = getattr(self, START_ATTR)
        p = F.dropout(self.vpt_prompt, getattr(self, DROP_ATTR), self.training).to(x.dtype)  # [1, P, C]
        return torch.cat([x[:, :s], p.expand(x.shape[0], -1, -1), x[:, s:]], dim=1)  # [B, P0 + P + T, C]


def deep_prompt_hook(block: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook of block i > 0 (VPT Eq. 3): its own prompts replace the prompt slots of its input."""
    x = args[0] if args else kwargs["x"]  # [B, N, C]
    s = getattr(block, START_ATTR)
    p = F.dropout(block.vpt_prompt, getattr(block, DROP_ATTR), block.training).to(x.dtype)  # [1, P, C]
    x = torch.cat([x[:, :s], p.expand(x.shape[0], -1, -1), x[:, s + p.shape[1] :]], dim=1)  # [B, N, C]
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, "x": x}


def prompt_class(base: type) -> type:
    """``Prompt<base>``: :class:`PromptMixin` before ``base`` (one class per base, importable from this module)."""
    return mixin_class(PromptMixin, base, f"Prompt{base.__name__}", module=__name__)


def check_prompt_tokens(model: nn.Module) -> None:
    """Raise ``UnsupportedModelError`` naming the feature when prompt tokens cannot be inserted into ``model``."""
    describe(model)
    if getattr(model, "dynamic_img_size", False):
        raise UnsupportedModelError(
            "visual prompts on a dynamic_img_size model are not supported (timm resamples position embeddings "
            "with num_prefix_tokens); build the model with a fixed img_size"
        )


def add_prompt_tokens(
    model: nn.Module, shallow: torch.Tensor, deep: Sequence[torch.Tensor] = (), *, dropout: float = 0.0
) -> list[str]:
    """Insert prompt tokens into ``model`` in place; returns the names of the new parameters.

    ``shallow`` ``[1, P, D]``: the prompts inserted after the prefix tokens (the input of the first block).
    ``deep``: empty, or one ``[1, P, D]`` tensor for each block after the first (forward order), which replaces
    the prompt slots of that block's input. ``dropout`` applies to the prompts in training. The tensors are
    moved to the patch embedding's device and dtype.
    """
    check_prompt_tokens(model)
    info = describe(model)
    if deep and len(deep) != info.depth - 1:
        raise ValueError(f"deep prompts: one set per block after the first ({info.depth - 1}), got {len(deep)}")
    params = install_prompts(model, prompt_class(type(model)), shallow, deep, int(info.num_prefix_tokens), dropout)
    if isinstance(getattr(model, "patch_drop", None), PatchDropout):
        model.patch_drop.num_prefix_tokens = model.num_prefix_tokens
    return params


def install_prompts(model: nn.Module, cls: type, shallow: torch.Tensor, deep, start: int, dropout: float) -> list[str]:
    """Swap ``model`` to the prompt class ``cls``, add the shallow prompts after the ``start`` prefix tokens and one
    deep set per later block (a pre-hook replaces its prompt slots), count them as prefix tokens; returns the new
    parameters' names. Shared by every host whose blocks sit in ``model.blocks``."""
    ref = next(model.patch_embed.parameters())  # the patch projection, or a conv stem (``proj`` may be Identity)
    dev, dt = ref.device, ref.dtype
    P = int(shallow.shape[1])
    model.__dict__[ORIG_CLASS] = type(model)
    model.__class__ = cls
    model.vpt_prompt = nn.Parameter(shallow.to(dev, dt))
    setattr(model, START_ATTR, start)
    setattr(model, DROP_ATTR, float(dropout))
    params = [PROMPT_PARAM]
    for i, prompts in enumerate(deep, start=1):  # block 0's prompts are the inserted ones
        blk = model.blocks[i]
        blk.vpt_prompt = nn.Parameter(prompts.to(dev, dt))
        setattr(blk, START_ATTR, start)
        setattr(blk, DROP_ATTR, float(dropout))
        blk.register_forward_pre_hook(deep_prompt_hook, with_kwargs=True)
        params.append(f"blocks.{i}.{PROMPT_PARAM}")
    model.num_prefix_tokens = start + P
    setattr(model, PROMPT_TOKENS_ATTR, int(getattr(model, PROMPT_TOKENS_ATTR, 0) or 0) + P)
    return params
