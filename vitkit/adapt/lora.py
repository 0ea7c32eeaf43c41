"""LoRA on a timm ViT's linear layers, folded back into plain weights for deployment.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (ICLR 2022), Eq. 3, as LoRAT (Lin et
al., "Tracking Meets LoRA", CVPR 2024) applies it to ViTs: each targeted ``nn.Linear`` computes
``y = W0 x + b + (α/r) · B A dropout(x)``; ``A`` Kaiming-uniform, ``B`` zero, so the adapted model starts
exactly as the base model. Only ``A``, ``B`` (and by default the classifier head) are trained.

What changes (``__class__`` swap, ToMe-style): a targeted ``nn.Linear`` becomes :class:`LoRALinear` (a
subclass) with two extra parameters ``lora_A [r, in]`` / ``lora_B [out, r]``; its ``weight``/``bias`` keys
are untouched. :func:`vitkit.merge_back` (the ``lora_merge`` step) folds ``W0 + (α/r) B A`` into ``weight``,
deletes the factors and swaps the class back, leaving a plain timm model with the original state-dict keys.

``variant="hira"`` (HiRA, Huang et al., ICLR 2025) trains the same factors but applies them as
``y = W0 x + b + (α/r) · (W0 ⊙ B A) dropout(x)``: a high-rank update for LoRA's parameter count, folded back
the same way (``W0 + (α/r) W0 ⊙ B A``). On the digits benchmark it is +1.5 pt over LoRA at r=3 (5-fold CV).

``init="pissa"`` (PiSSA, Meng et al., NeurIPS 2024) keeps LoRA's architecture and changes its start: ``B A``
begins as the top-r SVD part of ``W0`` and the frozen ``weight`` becomes the residual ``W0 − (α/r) B A``
(outputs unchanged at start); training then moves the principal directions instead of starting from zero.
It folds back the same way (``W_res + (α/r) B A``) to a plain model with the original keys.

Default targets: the attention and MLP linears of every block, as the host adapter names them (linear roles
``qkv`` / ``attn_out`` / ``mlp_in`` / ``mlp_out``; on a timm ViT ``blocks.*.attn.qkv``, ``blocks.*.attn.proj``,
``blocks.*.mlp.fc1``, ``blocks.*.mlp.fc2``, see :data:`DEFAULT_TARGETS`) — never ``patch_embed.proj`` (a Conv2d)
or the classifier unless asked (peft's ``target_modules=["proj"]``
would also wrap ``patch_embed.proj``; ``"all-linear"`` wraps the head). ``targets`` are globs over the
names of the model's ``nn.Linear`` modules.

Kinds: ``lora`` is a *structure* step (it adds parameters; an artifact replays it before loading the
weights); ``lora_merge`` (folding) is a *weights* step, so a recipe runs ``lora → finetune → lora_merge →
ptq → tome`` and the order check refuses folding after quantization.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..adapters import adapter_for
from ..adapters.timm_vit_adapt import LORA_TARGETS
from ..configs import TransformConfig, select_names
from ..errors import ConfigError
from ..history import step_history
from ..ops.lora import fold_lora, init_lora, pissa_init
from ..registry import register_transform
from ..validate import check_choice, check_int, check_number
from .common import KIND_NAMES, adapter_kinds, check_can_add, freeze_base, trainable_summary, unfreeze_base

_log = logging.getLogger(__name__)

#: ``variant`` → the update each adapted layer adds: LoRA ``BA`` or HiRA ``W0 ⊙ BA``.
VARIANTS = ("lora", "hira")
#: ``init`` → how the factors start: LoRA's (``A`` random, ``B`` zero) or PiSSA's (principal SVD part).
INITS = ("lora", "pissa")

#: Linear roles (see :data:`vitkit.adapters.protocol.LINEAR_ROLES`) adapted when no ``targets`` are given.
DEFAULT_ROLES = ("qkv", "attn_out", "mlp_in", "mlp_out")
#: The default targets on a timm ViT as globs over module names (documentation: the default is taken from the
#: host adapter's linear roles, :func:`default_targets`; on a timm ViT both select the same layers).
DEFAULT_TARGETS = LORA_TARGETS


@dataclass(frozen=True)
class LoRAConfig(TransformConfig):
    """LoRA of rank ``rank`` and scale ``alpha / rank`` on ``targets`` (globs over ``nn.Linear`` names;
    None = attention qkv/proj + MLP fc1/fc2 of every block). ``dropout`` on the LoRA branch input.
    ``train_also``: parameter-name globs left trainable besides the factors (None = the classifier
    head(s), ``[]`` = nothing). ``seed`` fixes the initialisation of ``A``. ``variant``: ``"lora"`` (ΔW = BA)
    or ``"hira"`` (ΔW = W0 ⊙ BA, high-rank for the same parameters). ``init``: ``"lora"`` (A random, B zero)
    or ``"pissa"`` (BA starts as the top-r SVD part of W0, the frozen weight keeps the residual)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    train_also: tuple[str, ...] | None = None
    seed: int = 0
    variant: str = "lora"
    init: str = "lora"

    def validate(self) -> None:
        check_int(self.rank, "LoRAConfig.rank", low=1)
        check_number(self.alpha, "LoRAConfig.alpha", low=0.0, low_open=True)
        check_number(self.dropout, "LoRAConfig.dropout", low=0.0, high=1.0, high_open=True)
        check_choice(self.variant, "LoRAConfig.variant", VARIANTS)
        check_choice(self.init, "LoRAConfig.init", INITS)
        if self.init == "pissa" and self.variant != "lora":
            raise ConfigError(
                f"LoRAConfig.init='pissa' applies to variant='lora' only (got variant={self.variant!r}): "
                "use init='lora' with HiRA"
            )

    @property
    def scale(self) -> float:
        return float(self.alpha) / int(self.rank)


class LoRALinear(nn.Linear):
    """``nn.Linear`` + LoRA branch: ``y = x Wᵀ + b + s · (dropout(x) Aᵀ) Bᵀ`` (LoRA Eq. 3, ``s = α/r``), or
    with ``lora_hadamard`` (HiRA) ``y = x Wᵀ + b + s · dropout(x) (W ⊙ B A)ᵀ``.

    What changed vs ``nn.Linear``: parameters ``lora_A [r, in]``, ``lora_B [out, r]``, a float
    ``lora_scale``, a bool ``lora_hadamard`` and a ``lora_dropout`` module; ``weight``/``bias`` are the
    frozen base weights. With PiSSA, ``weight`` is the residual ``W0 − s·B0 A0`` and buffers
    ``lora_A0``/``lora_B0`` keep the starting factors, so the update relative to ``W0`` stays known.
    """

    vitkit_adapt_kind = "lora"
    lora_hadamard = False

    @property
    def lora_init(self) -> str:
        """``"pissa"`` if the factors started as W0's principal part (the start is kept), else ``"lora"``."""
        return "pissa" if "lora_A0" in self._buffers else "lora"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)  # [..., out]
        if self.lora_hadamard:  # the update is a full [out, in] matrix: W0 ⊙ (B A)
            return out + self.lora_scale * F.linear(self.lora_dropout(x), self.weight * (self.lora_B @ self.lora_A))
        low = F.linear(self.lora_dropout(x), self.lora_A)  # [..., r]
        return out + self.lora_scale * F.linear(low, self.lora_B)  # [..., out]

    def extra_repr(self) -> str:
        kind = ", hira" if self.lora_hadamard else ", pissa" if self.lora_init == "pissa" else ""
        return f"{super().extra_repr()}, lora_rank={self.lora_A.shape[0]}, lora_scale={self.lora_scale:g}{kind}"


def linear_names(model: nn.Module) -> list[str]:
    """Names of every ``nn.Linear`` in ``model`` (what LoRA targets are matched against)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n]


def default_targets(model: nn.Module) -> list[str]:
    """The attention and MLP linears of every block (roles :data:`DEFAULT_ROLES`), by the host adapter."""
    return [name for name, r in adapter_for(model).linear_roles(model).items() if r.role in DEFAULT_ROLES]


def target_linears(
    model: nn.Module, targets: Iterable[str] | None, skip: Iterable[str] = (), *, what: str = "linear layers"
) -> list[str]:
    """Names of the ``nn.Linear`` layers matching ``targets`` globs minus ``skip`` globs, in model order;
    no ``targets``: the :func:`default_targets` that are ``nn.Linear`` layers (minus ``skip``)."""
    names = linear_names(model)
    if targets:
        return select_names(names, targets, skip, what=what)
    defaults = set(default_targets(model)).intersection(names)
    if not defaults:
        sample = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise ConfigError(f"no attention/MLP linear layers to use as the default {what}; {what} are: {sample}")
    return [n for n in select_names(names, None, skip, what=what) if n in defaults]


def plan_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """The linear layers ``cfg`` adapts, checked (rank not above the layer's smaller side)."""
    adapter_for(model).describe(model)  # refuses models vitkit does not handle, naming the feature
    names = target_linears(model, cfg.targets, cfg.skip, what="linear layers (LoRA targets)")
    for name in names:
        lin = model.get_submodule(name)
        limit = min(lin.in_features, lin.out_features)
        if cfg.rank > limit:
            raise ConfigError(
                f"LoRAConfig.rank={cfg.rank} is larger than {name} ({lin.in_features}→{lin.out_features}); "
                f"use rank <= {limit} or skip that layer"
            )
    return names


def inject_lora(
    lin: nn.Linear,
    rank: int,
    scale: float,
    dropout: float = 0.0,
    *,
    generator: torch.Generator | None = None,
    hadamard: bool = False,
    init: str = "lora",
) -> LoRALinear:
    """Turn ``lin`` into a :class:`LoRALinear` in place (outputs unchanged at start; ``hadamard``: HiRA's
    update; ``init="pissa"``: factors start as the principal SVD part and ``weight`` becomes the residual)."""
    dev, dt = lin.weight.device, lin.weight.dtype
    if init == "pissa":
        a, b, residual = pissa_init(lin.weight, rank, scale)
        with torch.no_grad():
            lin.weight.copy_(residual)
        lin.register_buffer("lora_A0", a.to(dev, dt).clone())  # [r, in]: the start, for W0-relative export
        lin.register_buffer("lora_B0", b.to(dev, dt).clone())  # [out, r]
    else:
        a, b = init_lora(rank, lin.in_features, lin.out_features, generator=generator)
    lin.__class__ = LoRALinear
    lin.lora_A = nn.Parameter(a.to(dev, dt))  # [r, in]
    lin.lora_B = nn.Parameter(b.to(dev, dt))  # [out, r]
    lin.lora_scale = float(scale)
    if hadamard:
        lin.lora_hadamard = True
    lin.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
    return lin


def fold_module(lin: LoRALinear) -> nn.Linear:
    """Fold ``W0 + s·BA`` into ``lin.weight`` and turn it back into a plain ``nn.Linear`` in place."""
    with torch.no_grad():
        lin.weight.copy_(fold_lora(lin.weight, lin.lora_A, lin.lora_B, lin.lora_scale, hadamard=lin.lora_hadamard))
    for attr in ("lora_A", "lora_B", "lora_dropout", "lora_A0", "lora_B0"):
        if hasattr(lin, attr):
            delattr(lin, attr)
    lin.__dict__.pop("lora_scale", None)
    lin.__dict__.pop("lora_hadamard", None)
    lin.__class__ = nn.Linear
    return lin


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


@register_transform(
    LoRAConfig,
    name="lora",
    kind="structure",
    paper="LoRA (Hu et al., ICLR 2022); LoRAT — Tracking Meets LoRA (CVPR 2024); HiRA (Huang et al., ICLR 2025); "
    "PiSSA (Meng et al., NeurIPS 2024)",
    restore=lambda model, cfg, decisions: _add_lora(model, cfg, decisions["modules"]),
    example={"rank": 2, "init": "pissa"},
    zero={"rank": 2},  # B starts at zero: the adapted model computes exactly the base model
)
def apply_lora(model: nn.Module, cfg: LoRAConfig, *, calib=None, dry_run: bool = False) -> dict:
    """Inject LoRA into the target linears and freeze the rest (see module docstring)."""
    check_can_add(model, "lora")
    names = plan_lora(model, cfg)
    added = sum(cfg.rank * (m.in_features + m.out_features) for m in map(model.get_submodule, names))
    decisions = {
        "modules": names,
        "lora_params": int(added),
        "summary": f"{'HiRA' if cfg.variant == 'hira' else 'LoRA'} rank {cfg.rank} (scale {cfg.scale:g}"
        f"{', PiSSA init' if cfg.init == 'pissa' else ''}) on "
        f"{len(names)} linears, +{added} params",
    }
    if not dry_run:
        _add_lora(model, cfg, names)
        decisions["trainable"] = trainable_summary(model)
    return decisions


def _add_lora(model: nn.Module, cfg: LoRAConfig, names: list[str]) -> None:
    gen = torch.Generator().manual_seed(int(cfg.seed))
    route = getattr(adapter_for(model), "route_linears", None)
    if callable(route):  # the host's forward must call the adapted modules (some hosts read a weight directly)
        route(model, names)
    params = []
    for name in names:
        lin = model.get_submodule(name)
        inject_lora(
            lin, cfg.rank, cfg.scale, float(cfg.dropout), generator=gen, hadamard=cfg.variant == "hira", init=cfg.init
        )
        params += [f"{name}.lora_A", f"{name}.lora_B"]
    freeze_base(model, params, cfg.train_also)


# -- folding back ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoRAMergeConfig(TransformConfig):
    """Fold every LoRA update into its base weight (``W ← W0 + (α/r) B A``) and drop the factors."""


def _check_mergeable(model: nn.Module) -> dict[str, LoRALinear]:
    mods = lora_modules(model)
    others = [k for k in adapter_kinds(model) if k != "lora"]
    if others:
        names = ", ".join(KIND_NAMES[k] for k in others)
        raise ConfigError(
            f"model has {names}, which cannot be folded into the weights (non-linear branch or extra tokens): "
            "keep them as modules — artifacts save and restore them"
        )
    if not mods:
        steps = [s.name for s in step_history(model)]
        if "lora_merge" in steps:
            raise ConfigError("LoRA was already merged back into the weights; there is nothing left to merge")
        raise ConfigError("model has no LoRA layers to merge back: add them with LoRAConfig first")
    return mods


def _fold_all(model: nn.Module) -> list[str]:
    mods = _check_mergeable(model)
    for mod in mods.values():
        fold_module(mod)
    unfreeze_base(model)
    return list(mods)


@register_transform(
    LoRAMergeConfig,
    name="lora_merge",
    kind="weights",
    paper="LoRA (Hu et al., ICLR 2022) §4.1: merged weights, no inference latency",
    restore=lambda model, cfg, decisions: _fold_all(model),
    example={},
    zero={},  # folding a LoRA that has not trained (B = 0) changes nothing
    after=("lora",),
)
def apply_lora_merge(model: nn.Module, cfg: LoRAMergeConfig, *, calib=None, dry_run: bool = False) -> dict:
    if dry_run:  # earlier steps of the same dry run have not added their LoRA layers: plan, do not check
        mods = lora_modules(model)
        return {"modules": list(mods), "summary": "fold the LoRA updates (added by the lora step) into the weights"}
    mods = _check_mergeable(model)
    names = _fold_all(model)
    return {"modules": names, "summary": f"folded {len(names)} LoRA updates into their weights"}
