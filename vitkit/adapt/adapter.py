"""AdaptFormer — Chen et al., "AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition"
(NeurIPS 2022), §3.2, Eqs. 4–5: a bottleneck ("AdaptMLP") in parallel with each block's MLP,

    x̃ = ReLU(LN(x') · W_down) · W_up,      x_out = MLP(LN(x')) + s · x̃ + x'

with ``W_down [d → d̂]``, ``W_up [d̂ → d]``, scale ``s`` (0.1 in the paper), ``W_up`` zero-initialised so the
adapted model starts as the base model. Only the adapters (and by default the head) are trained.

What changes (``__class__`` swap, done by the host adapter: ``adapter_for(model).add_mlp_branch``): each
targeted block's MLP (timm ``Mlp``) becomes ``AdaptFormerMlp`` (:class:`AdaptFormerMlp` mixed before the MLP's
class), which adds ``adapter_down`` / ``adapter_up`` Linears and returns ``mlp(h) + s · up(ReLU(down(h)))`` for
the block's normed input ``h = norm2(x')`` (the LN is shared, as in Eq. 4). Deliberate differences: with
LayerScale/drop-path the adapter branch goes through the block's ``ls2``/``drop_path2`` together with the MLP
(the paper's ViT has neither).

Not foldable: the branch has a ReLU, so it cannot be merged into ``fc1``/``fc2``; the adapter stays a
module. It is a *structure* step with a restore hook, so artifacts rebuild the adapters before the
weights are loaded (state-dict keys ``blocks.i.mlp.adapter_down.weight`` etc.).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..adapters import adapter_for
from ..configs import TransformConfig, select_names
from ..errors import ConfigError
from ..registry import register_transform
from ..validate import check_int, check_number
from .common import check_can_add, freeze_base, trainable_summary


@dataclass(frozen=True)
class AdapterConfig(TransformConfig):
    """AdaptFormer bottleneck of width ``bottleneck`` and scale ``scale`` beside the MLP of each block in
    ``targets`` (globs over block names, None = all). ``dropout`` inside the bottleneck; ``train_also`` as
    in :class:`~vitkit.adapt.LoRAConfig`."""

    bottleneck: int = 64
    scale: float = 0.1
    dropout: float = 0.0
    train_also: tuple[str, ...] | None = None
    seed: int = 0

    def validate(self) -> None:
        check_int(self.bottleneck, "AdapterConfig.bottleneck", low=1)
        check_number(self.scale, "AdapterConfig.scale")
        if self.scale == 0:
            raise ConfigError(f"AdapterConfig.scale must be a non-zero number, got {self.scale!r}")
        check_number(self.dropout, "AdapterConfig.dropout", low=0.0, high=1.0, high_open=True)


class AdaptFormerMlp(nn.Module):
    """Parallel AdaptMLP, mixed before the host's MLP class: ``mlp(h) + s · up(drop(ReLU(down(h))))``
    (AdaptFormer Eq. 4–5). The patched module's class is named ``AdaptFormerMlp`` and is a subclass of this."""

    vitkit_adapt_kind = "adapter"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = super().forward(x)  # [B, N, C]: the host MLP
        low = self.adapter_drop(F.relu(self.adapter_down(x)))  # [B, N, d̂]
        return base + self.adapter_scale * self.adapter_up(low)  # [B, N, C]


def adapter_branch(dim: int, bottleneck: int, dropout: float, generator: torch.Generator) -> dict[str, nn.Module]:
    """The AdaptMLP modules for an MLP of width ``dim``, in registration order (``up`` zero ⇒ identity at start)."""
    down, up = nn.Linear(dim, bottleneck), nn.Linear(bottleneck, dim)
    with torch.no_grad():  # AdaptFormer's "lora" init: down Kaiming-uniform, biases and up zero
        bound = 1.0 / math.sqrt(dim)
        down.weight.copy_((torch.rand(bottleneck, dim, generator=generator) * 2 - 1) * bound)
        down.bias.zero_()
        up.weight.zero_()
        up.bias.zero_()
    return {
        "adapter_down": down,
        "adapter_up": up,
        "adapter_drop": nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
    }


def plan_adapter(model: nn.Module, cfg: AdapterConfig) -> dict[str, int]:
    """``{block name: MLP width}`` of the blocks ``cfg`` adapts, checked."""
    host = adapter_for(model)
    info = host.describe(model)
    names = select_names(info.block_names, cfg.targets, cfg.skip, what="blocks")
    if cfg.bottleneck > info.embed_dim:
        raise ConfigError(
            f"AdapterConfig.bottleneck={cfg.bottleneck} is wider than the model (embed_dim {info.embed_dim}); "
            f"use bottleneck <= {info.embed_dim}"
        )
    return {name: host.mlp_branch_dim(model, name) for name in names}


def _add_adapters(model: nn.Module, cfg: AdapterConfig, names: list[str]) -> None:
    host = adapter_for(model)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    params = []
    for name in names:
        dim = host.mlp_branch_dim(model, name)
        branch = adapter_branch(dim, cfg.bottleneck, float(cfg.dropout), gen)
        mlp = host.add_mlp_branch(model, name, AdaptFormerMlp, branch, adapter_scale=float(cfg.scale))
        params += [f"{mlp}.adapter_{w}.{p}" for w in ("down", "up") for p in ("weight", "bias")]
    freeze_base(model, params, cfg.train_also)


@register_transform(
    AdapterConfig,
    name="adapter",
    kind="structure",
    paper="AdaptFormer (Chen et al., NeurIPS 2022)",
    restore=lambda model, cfg, decisions: _add_adapters(model, cfg, decisions["blocks"]),
    example={"bottleneck": 4, "scale": 0.5},
    zero={"bottleneck": 4},  # W_up starts at zero: the branch adds nothing until trained
)
def apply_adapter(model: nn.Module, cfg: AdapterConfig, *, calib=None, dry_run: bool = False) -> dict:
    check_can_add(model, "adapter")
    dims = plan_adapter(model, cfg)
    names = list(dims)
    added = sum(2 * dim * cfg.bottleneck + dim + cfg.bottleneck for dim in dims.values())
    decisions = {
        "blocks": names,
        "adapter_params": int(added),
        "summary": f"bottleneck {cfg.bottleneck} (scale {cfg.scale:g}) in {len(names)} blocks, +{added} params",
    }
    if not dry_run:
        _add_adapters(model, cfg, names)
        decisions["trainable"] = trainable_summary(model)
    return decisions
