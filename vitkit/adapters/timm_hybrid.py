"""What the conv + attention hybrids (TinyViT, EfficientFormer) share: :class:`HybridAdapter`, the
:class:`~vitkit.adapters.protocol.HostAdapter` both families implement with a few family hooks.

A hybrid is a convolutional network whose later stages hold pre-norm attention blocks. To vitkit's methods it
shows:

* **blocks** — the attention blocks only (TinyViT's ``TinyVitBlock``, EfficientFormer's ``MetaBlock1d``), each
  with the four block linears (``qkv``, ``attn_out``, ``mlp_in``, ``mlp_out``), its attention core (whose two
  matmuls keep the host's learned attention biases, see the families' explicit twins) and its two
  (LayerNorm → Linear) pairs, so PTQ, RepQ-ViT, LoRA and head / MLP / block pruning act on them as on a ViT
  block (a head's ``[q | k | v]`` rows sit together in the head-major ``qkv``; pruning it also drops its row of
  the attention biases; a pruned TinyViT block takes its ``local_conv`` with it);
* **conv layers** — every other ``nn.Conv2d`` (stem, MBConv, patch merging / downsampling, EfficientFormer's
  1×1 conv MLPs) under the linear role ``conv``: PTQ gives each a per-output-channel weight quantizer and a
  per-tensor input quantizer. The BatchNorm after a conv is **not** folded first: a per-output-channel weight
  quantizer commutes with BN's per-channel affine (``Q_s(γ·W) = γ·Q_{s/γ}(W)`` for ``γ > 0``; for ``γ < 0``
  up to rounding ties), so fake-quantizing the conv weight before BN simulates quantizing the folded weight
  (tested, ``test_conv_bn_quantization_commutes``); the ONNX exporter folds BN into the conv (eval mode) before
  any int8 runtime sees it;
* **refusals by name** — token reduction (``tome``, ``evit``, ``pitome``, ``hiprune``, ``random_drop``), early
  exit and prompt tokens need a token sequence the host does not have (tokens live on a fixed grid, the
  attention biases are indexed by grid offsets); unit-permutation merging (PLeaS) has no symmetry table for the conv
  stages. Each refusal says why and which methods apply (:meth:`HybridAdapter.refuse`).

:meth:`HybridAdapter.describe` walks the whole model first and raises ``UnsupportedModelError`` naming the first
module it does not handle, so no method starts patching a model it would leave half-done.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.layers import Mlp

from ..errors import UnsupportedModelError
from ..patching import mixin_class
from . import timm_hybrid_surgery as surgery
from .grid_info import GridInfo
from .protocol import AttentionCore, KeyRole, LinearRole, NormLinear, Stage
from .timm_vit_layers import OuterLayers

#: why methods that change the token sequence do not apply to a hybrid (``{family}``, ``{what}`` filled in)
TOKEN_REFUSAL = (
    "{family} keeps its tokens on a fixed H×W grid (convolutions and downsampling between and inside its "
    "stages, attention biases indexed by grid offsets), so tokens cannot be {what}"
)


@dataclass(frozen=True, kw_only=True)
class HybridInfo(GridInfo):
    """What methods need to know about a hybrid: the fields a plain ViT's :class:`~.timm_vit.ViTInfo` has, over
    the attention blocks only, plus per-block geometry (``block_dims``: residual width, ``block_tokens``: tokens of
    the block's grid, ``block_spans``: keys each query attends to, ``block_stages``: stage index).

    ``embed_dim`` is the first attention block's width and ``grid_size`` its token grid; ``num_features`` the width
    the classifier reads. ``patch_size`` is the stem's total stride."""

    block_stages: tuple[int, ...]
    num_features: int


@dataclass(frozen=True)
class BlockLayout:
    """Where one attention block keeps its parts (module names relative to the block): the norm before the
    attention (inside the attention module on TinyViT), the attention core (holding ``qkv`` / ``proj``), the norm
    before the MLP (inside the MLP on TinyViT) and the MLP (holding ``fc1`` / ``fc2``)."""

    attn_norm: str
    attn: str
    mlp_norm: str
    mlp: str

    def linears(self) -> dict[str, str]:
        """Block linear role → name relative to the block, in forward order."""
        return {
            "qkv": f"{self.attn}.qkv",
            "attn_out": f"{self.attn}.proj",
            "mlp_in": f"{self.mlp}.fc1",
            "mlp_out": f"{self.mlp}.fc2",
        }


def check_modules(model: nn.Module, handled: tuple[type, ...], family: str) -> None:
    """Raise ``UnsupportedModelError`` naming the first module of ``model`` that is not an instance of ``handled``
    (vitkit's own modules — quantizers, LoRA / adapter branches, outlier splits — are accepted)."""
    for name, module in model.named_modules():
        if isinstance(module, handled) or type(module).__module__.startswith("vitkit."):
            continue
        raise UnsupportedModelError(
            f"{name or 'the model'} is a {type(module).__name__}, which the {family} adapter does not handle "
            f"(it handles timm's own {family} layers: {', '.join(sorted({c.__name__ for c in handled}))}); "
            "no method was applied"
        )


class HybridAdapter:
    """The :class:`~vitkit.adapters.protocol.HostAdapter` of a conv + attention hybrid. A family subclass sets
    ``name``, ``family`` (display name), ``model_class``, ``layout`` (:class:`BlockLayout`), ``methods`` (what
    applies, for refusals) and implements :meth:`describe`, :meth:`attention_blocks`, :meth:`outer_layers`,
    :meth:`heads` and :meth:`input_size`."""

    name = "timm hybrid"
    family = "hybrid"
    model_class: type = nn.Module
    layout: BlockLayout
    methods = ""

    # -- family hooks ------------------------------------------------------------------------------------------
    def describe(self, model: nn.Module) -> HybridInfo:
        raise NotImplementedError

    def attention_blocks(self, model: nn.Module) -> list[tuple[str, nn.Module, int]]:
        """Every attention block as ``(name, module, stage index)`` in forward order."""
        raise NotImplementedError

    def stage_grids(self, model: nn.Module) -> list[tuple[int, int]]:
        """Each stage's token grid at the default input size."""
        raise NotImplementedError

    def outer_layers(self, model: nn.Module) -> OuterLayers:
        raise NotImplementedError

    def heads(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        raise NotImplementedError

    def input_size(self, model: nn.Module) -> tuple[int, int, int]:
        """(C, H, W) from ``pretrained_cfg["input_size"]`` (these models run at the size they were built for; set
        another with ``pretrained_cfg_overlay``), else (in_chans, 224, 224)."""
        cfg = getattr(model, "pretrained_cfg", None) or {}
        c, h, w = cfg.get("input_size", (int(getattr(model, "in_chans", 3)), 224, 224))
        return int(c), int(h), int(w)

    # -- refusals ----------------------------------------------------------------------------------------------
    def refuse(self, method: str, why: str) -> UnsupportedModelError:
        """The named refusal of ``method``: why, and which methods do apply to this family."""
        return UnsupportedModelError(
            f"{method} does not apply to {self.family}: {why}; methods that apply: {self.methods}"
        )

    def refuse_tokens(self, model: nn.Module) -> UnsupportedModelError:
        why = TOKEN_REFUSAL.format(family=self.family, what="merged, dropped or reordered")
        return self.refuse("token reduction (tome, evit, pitome, hiprune, random_drop)", why)

    # -- structure ---------------------------------------------------------------------------------------------
    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, self.model_class)

    def stages(self, model: nn.Module) -> list[Stage]:
        info = self.describe(model)
        grids = self.stage_grids(model)
        out = []
        for s, grid in enumerate(grids):
            names = tuple(n for n, st in zip(info.block_names, info.block_stages, strict=True) if st == s)
            ds = getattr(model.stages[s], "downsample", None)
            ds_name = None if ds is None or isinstance(ds, nn.Identity) else f"stages.{s}.downsample"
            out.append(Stage(f"stages.{s}", names, grid, self.stage_window(model, s), ds_name))
        return out

    def stage_window(self, model: nn.Module, stage: int) -> tuple[int, int] | None:
        return None

    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(name, blk) for name, blk, _ in self.attention_blocks(model)]

    def block_input_shape(self, model: nn.Module, index: int) -> tuple[int, ...]:
        """One image's tokens entering attention block ``index``: ``(N, D)``, or ``(H, W, C)`` when the block keeps
        the grid (TinyViT, :attr:`grid_blocks`)."""
        info = self.describe(model)
        grid = self.stage_grids(model)[info.block_stages[index]]
        dim = info.block_dims[index]
        return (*grid, dim) if self.grid_blocks else (grid[0] * grid[1], dim)

    #: whether the attention blocks take ``[B, H, W, C]`` (True) or ``[B, N, C]`` tokens
    grid_blocks = False

    def block_state(self, model: nn.Module, x: torch.Tensor, positions: torch.Tensor | None = None) -> dict:
        return {}  # blocks take nothing but their input

    def token_positions(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def route_linears(self, model: nn.Module, names) -> None:
        return None  # every Linear is called as a module

    def _block(self, block: nn.Module, part: str) -> nn.Module:
        return block.get_submodule(part)

    def block_parts(self, block: nn.Module, *, index: int | None = None):
        raise self.refuse(
            "a method that rebuilds whole pre-norm blocks",
            f"{self.family} blocks are not timm ViT Blocks (norms inside the attention / MLP, or convolutions "
            "between them)",
        )

    def norm_linear_pairs(self, model: nn.Module) -> list[NormLinear]:
        """Per attention block: attention norm → ``qkv`` (role ``attn``), MLP norm → ``fc1`` (role ``mlp``)."""
        lay, pairs = self.layout, []
        for name, _, _ in self.attention_blocks(model):
            pairs.append(NormLinear(f"{name}.{lay.attn_norm}", (f"{name}.{lay.attn}.qkv",), "attn"))
            pairs.append(NormLinear(f"{name}.{lay.mlp_norm}", (f"{name}.{lay.mlp}.fc1",), "mlp"))
        return pairs

    def linear_roles(self, model: nn.Module) -> dict[str, LinearRole]:
        """Every quantizable layer by role, in module order: the attention blocks' linears, every ``nn.Conv2d``
        but the stem's first (role ``conv``; that one is ``outer_layers().patch_proj_name``), the heads."""
        self.describe(model)
        block_linears = {}
        for i, (name, _, _) in enumerate(self.attention_blocks(model)):
            for role, rel in self.layout.linears().items():
                block_linears[f"{name}.{rel}"] = LinearRole(f"{name}.{rel}", role, i, rel.rsplit(".", 1)[-1])
        heads = {name for name, _ in self.heads(model)}
        stem = self.outer_layers(model).patch_proj_name
        roles: dict[str, LinearRole] = {}
        for name, mod in model.named_modules():
            if name in block_linears:
                roles[name] = block_linears[name]
            elif name in heads and isinstance(mod, nn.Linear):
                roles[name] = LinearRole(name, "head", None, name)
            elif isinstance(mod, nn.Conv2d) and name != stem and not _inside_vitkit_module(model, name):
                roles[name] = LinearRole(name, "conv", None, "conv")
        return roles

    def attention_cores(self, model: nn.Module) -> list[AttentionCore]:
        cores = []
        for i, (name, blk, _) in enumerate(self.attention_blocks(model)):
            attn = self._block(blk, self.layout.attn)
            cores.append(
                AttentionCore(
                    f"{name}.{self.layout.attn}", i, int(attn.num_heads), int(attn.key_dim), float(attn.scale)
                )
            )
        return cores

    def block_layers(self, block: nn.Module, *, index: int | None = None):
        raise self.refuse(
            "the integer-only converter", f"it rebuilds plain ViT blocks, and {self.family} has conv stages"
        )

    def block_linears(self, block: nn.Module, *, index: int | None = None) -> dict[str, nn.Module | None]:
        out: dict[str, nn.Module | None] = {
            role: self._block(block, rel) for role, rel in self.layout.linears().items()
        }
        out["attn_gate"] = None
        return {k: out[k] for k in ("qkv", "attn_out", "attn_gate", "mlp_in", "mlp_out")}

    def residual_branches(self, block: nn.Module, *, index: int | None = None) -> tuple[nn.Module, nn.Module]:
        raise self.refuse("latency-priced pruning (prune target='latency')", "it times ViT residual branches")

    # -- state-dict keys ---------------------------------------------------------------------------------------
    def key_roles(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, KeyRole]:
        """See :func:`.timm_hybrid_surgery.key_roles` (keys of the conv stages: part ``other``)."""
        lay = self.layout
        return surgery.key_roles(state_dict, lay.linears(), lay.attn, lay.attn_norm, lay.mlp_norm, self._head_names())

    def _head_names(self) -> tuple[str, ...]:
        return ()

    def permutation_axes(self, roles: Mapping[str, KeyRole]) -> dict[str, tuple[tuple[int, str], ...]]:
        raise self.refuse(
            "unit-permutation merging (PLeaS)",
            "its conv stages, BatchNorms and head-major fused qkv have no permutation-symmetry table; use "
            "task_arithmetic, ties, dare, average, regmean or another merge method that needs no permutation",
        )

    def set_mlp_widths(self, model: nn.Module, widths: Sequence[int]) -> None:
        mlps = [self._block(blk, self.layout.mlp) for _, blk, _ in self.attention_blocks(model)]
        surgery.set_mlp_widths(mlps, widths)

    # -- the host forward: refused (no token sequence to reduce or exit from) ---------------------------------
    def embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise self.refuse_tokens(model)

    def pool(self, model: nn.Module, tokens: torch.Tensor, *, size: torch.Tensor | None = None) -> torch.Tensor:
        raise self.refuse_tokens(model)

    def head(self, model: nn.Module, features: torch.Tensor) -> torch.Tensor:
        raise self.refuse_tokens(model)

    def token_grid(self, model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
        raise self.refuse_tokens(model)

    def prefix_tokens(self, model: nn.Module) -> int:
        raise self.refuse_tokens(model)

    def final_norm(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        raise self.refuse_tokens(model)

    def feature_norm(self, model: nn.Module) -> nn.Module | None:
        why = TOKEN_REFUSAL.format(family=self.family, what="pooled after an intermediate block")
        raise self.refuse("early exit", f"{why} (exit heads read the token sequence between blocks)")

    def attention_residual(self, block, x, *, bias=None, is_causal=False, needs=frozenset()):
        raise self.refuse_tokens(None)

    def mlp_residual(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise self.refuse_tokens(None)

    # -- structured pruning: heads, MLP neurons, whole attention blocks (:mod:`.timm_hybrid_surgery`) ---------
    def check_prunable(self, model: nn.Module, groups) -> None:
        """Heads, MLP neurons and whole attention blocks can all be removed (any groups)."""
        self.describe(model)

    def prune_heads(self, block: nn.Module, keep, *, index: int | None = None) -> None:
        where = f"attention block {index}" if index is not None else "block"
        surgery.prune_heads(self._block(block, self.layout.attn), keep, where)

    def prune_mlp(self, block: nn.Module, keep, *, index: int | None = None) -> None:
        where = f"attention block {index}" if index is not None else "block"
        surgery.prune_mlp(self._block(block, self.layout.mlp), keep, where)

    def keep_blocks(self, model: nn.Module, keep) -> None:
        surgery.keep_blocks(model.stages, [blk for _, blk, _ in self.attention_blocks(model)], keep)

    # -- adaptation --------------------------------------------------------------------------------------------
    def check_prompt_tokens(self, model: nn.Module) -> None:
        why = TOKEN_REFUSAL.format(family=self.family, what="inserted")
        raise self.refuse("prompt tokens (VPT)", why)

    def add_prompt_tokens(self, model: nn.Module, shallow: torch.Tensor, deep=(), *, dropout: float = 0.0):
        self.check_prompt_tokens(model)

    #: the MLP class a parallel branch attaches to (exact class: a patched MLP has its branch already)
    branch_mlp_class: type = Mlp

    def branch_class(self, mixin: type, mlp_class: type) -> type:
        """The class an MLP of ``mlp_class`` takes to run ``mixin``'s branch beside it (``mixin`` first)."""
        return mixin_class(mixin, mlp_class, mixin.__name__, module=__name__)

    def mlp_branch_dim(self, model: nn.Module, block_name: str) -> int:
        """Input width of attention block ``block_name``'s MLP, where a parallel branch (AdaptFormer) reads what
        the MLP's first Linear reads (the normalized stream)."""
        blocks = dict(self.blocks(model))
        if block_name not in blocks:
            raise ValueError(f"{block_name!r} is not an attention block of this model; blocks are {list(blocks)}")
        mlp = self._block(blocks[block_name], self.layout.mlp)
        if type(mlp) is not self.branch_mlp_class:
            raise UnsupportedModelError(
                f"{block_name}.{self.layout.mlp} is a {type(mlp).__name__}; a parallel MLP branch needs timm's "
                f"{self.branch_mlp_class.__name__} there"
            )
        return int(mlp.fc1.in_features)

    def add_mlp_branch(self, model: nn.Module, block_name: str, mixin: type, modules: dict, **attrs) -> str:
        """Give block ``block_name``'s MLP the class :meth:`branch_class`, register ``modules`` on it (on the MLP's
        device and dtype) and set ``attrs``; returns the MLP's module name."""
        self.mlp_branch_dim(model, block_name)
        mlp = self._block(dict(self.blocks(model))[block_name], self.layout.mlp)
        dev, dt = mlp.fc1.weight.device, mlp.fc1.weight.dtype
        mlp.__class__ = self.branch_class(mixin, type(mlp))
        for name, module in modules.items():
            setattr(mlp, name, module.to(dev, dt))
        for name, value in attrs.items():
            setattr(mlp, name, value)
        return f"{block_name}.{self.layout.mlp}"


def _inside_vitkit_module(model: nn.Module, name: str) -> bool:
    """True when a parent of module ``name`` is one of vitkit's own modules (e.g. a LoRA or outlier branch)."""
    parts = name.split(".")
    return any(
        type(model.get_submodule(".".join(parts[:i]))).__module__.startswith("vitkit.") for i in range(1, len(parts))
    )


def attention_bias(attn: nn.Module, device: torch.device) -> torch.Tensor:
    """A LeViT-style attention's bias per head and (query, key) pair ``[H, N, N]``; the host's eval-mode cache only
    without autograd (a cached tensor's graph would be walked again by a second backward)."""
    if torch.is_grad_enabled() and attn.attention_biases.requires_grad:
        return attn.attention_biases[:, attn.attention_bias_idxs]
    return attn.get_attention_biases(device)


def stem_grid(img_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """The token grid after a stem of total ``stride`` made of stride-2, pad-1, kernel-3 convs."""
    h, w = img_size
    while stride > 1:
        h, w, stride = (h + 1) // 2, (w + 1) // 2, stride // 2
    return h, w
