"""Where adaptation methods attach to a timm ``VisionTransformer``: a parallel branch beside a block's MLP
(AdaptFormer's AdaptMLP) and vitkit's default LoRA targets written as timm module-name globs.

A parallel MLP branch sees what the block's MLP sees — the normed input ``h = norm2(x')`` — and adds to what it
returns, so the branch goes through the block's ``ls2`` / ``drop_path2`` together with the MLP. The MLP module
(timm's plain ``Mlp``) takes the method's mixin by ``__class__`` swap: its own parameters keep their names and
the branch's modules are registered on it (``blocks.i.mlp.<branch module>.*``). Any MLP kind of :mod:`.timm_mlp`
takes a branch (a GLU's input is the same ``h``).
"""

from __future__ import annotations

import torch.nn as nn

from ..errors import UnsupportedModelError
from ..patching import mixin_class
from . import timm_mlp
from .timm_vit import block_parts, describe

#: ``vitkit.adapt``'s default LoRA targets as globs over a timm ViT's module names: exactly the block linears
#: whose :func:`~.timm_vit_layers.linear_roles` role is qkv / attn_out / mlp_in / mlp_out (never the patch
#: projection or the classifier). The method takes its default from the roles; this is the same list as globs for
#: timm's plain ``Mlp`` (a GLU MLP's gate / value / out Linears are selected by their roles alike).
LORA_TARGETS = ("blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2")


def _mlp(model: nn.Module, block_name: str) -> nn.Module:
    names = describe(model).block_names
    if block_name not in names:
        raise ValueError(f"{block_name!r} is not a block of this model; blocks are {list(names)}")
    return block_parts(model.get_submodule(block_name), index=names.index(block_name)).mlp


def mlp_branch_dim(model: nn.Module, block_name: str) -> int:
    """Width of the input of block ``block_name``'s MLP (what a parallel branch reads and writes), or
    ``UnsupportedModelError`` when no branch can be attached there (anything but one of
    :data:`.timm_mlp.MLP_CLASSES` exactly, e.g. an MLP that already has a branch)."""
    mlp = _mlp(model, block_name)
    if type(mlp) not in timm_mlp.MLP_CLASSES:
        raise UnsupportedModelError(
            f"{block_name}.mlp is a {type(mlp).__name__}; a parallel MLP branch (AdaptFormer) needs one of "
            f"{timm_mlp.HANDLED}, unpatched"
        )
    return timm_mlp.mlp_in_features(mlp)


def _branch_class(mixin: type, base: type) -> type:
    """``mixin`` before ``base``, named like ``mixin`` (one class per pair, importable from this module)."""
    return mixin_class(mixin, base, mixin.__name__, module=__name__)


def add_mlp_branch(model: nn.Module, block_name: str, mixin: type, modules: dict[str, nn.Module], **attrs) -> str:
    """Give block ``block_name``'s MLP the class ``mixin`` + its own class (``mixin.forward`` calls
    ``super().forward(h)`` for the MLP and adds its branch), register ``modules`` on it (moved to the MLP's
    device and dtype, in the given order) and set ``attrs``; returns the MLP's module name."""
    mlp_branch_dim(model, block_name)
    mlp = _mlp(model, block_name)
    ref = next(mlp.parameters())
    dev, dt = ref.device, ref.dtype
    mlp.__class__ = _branch_class(mixin, type(mlp))
    for name, module in modules.items():
        setattr(mlp, name, module.to(dev, dt))
    for name, value in attrs.items():
        setattr(mlp, name, value)
    return f"{block_name}.mlp"
