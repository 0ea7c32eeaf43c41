"""The seam between vitkit's methods and a host model family: :class:`HostAdapter`.

Every method asks the adapter — never the model — where things are: the stages and blocks, each block's
attention / MLP / norm modules and its (norm → linear) pairs, the prefix tokens, the classifier head(s), the
role of every state-dict key, and how to run the host forward as ``embed → blocks → pool → head``. Adding a
model family means writing one adapter (``adapters/<family>.py``) and listing it in :data:`ADAPTERS`; no
method file changes. Anything an adapter does not handle raises :class:`~vitkit.errors.UnsupportedModelError`
naming the feature, never a silent patch.

Hierarchical hosts (Swin, EfficientFormer, TinyViT) are part of the design: :meth:`HostAdapter.stages` groups
blocks into stages with their token grid, window size and the downsampling module between stages; a plain
ViT is one stage with no windows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn

from ..errors import UnsupportedModelError


@dataclass(frozen=True)
class Stage:
    """A run of blocks at one resolution. ``window`` is the attention window (None = global attention);
    ``downsample`` names the module that runs before the stage's first block (patch merging), if any."""

    name: str
    block_names: tuple[str, ...]
    grid: tuple[int, int]
    window: tuple[int, int] | None = None
    downsample: str | None = None


@dataclass(frozen=True)
class NormLinear:
    """A LayerNorm feeding Linear layers directly (``norm1 → qkv``, ``norm2 → fc1``): the pairs RepQ-ViT folds
    per-channel activation scales through. Names are module names relative to the model."""

    norm: str
    linears: tuple[str, ...]
    role: str  # "attn" | "mlp"


@dataclass(frozen=True)
class LinearRole:
    """What a Linear does in the host: ``role`` is one of :data:`LINEAR_ROLES`, ``block`` its block index
    (``None`` for heads), ``family`` the quantization family name used in reports (``qkv``, ``proj``, ...)."""

    name: str
    role: str
    block: int | None
    family: str = ""


@dataclass(frozen=True)
class AttentionCore:
    """The module of one block that computes ``softmax(q·kᵀ·scale)·v`` — the inputs of its two matmuls are what
    attention quantizers see. ``name`` relative to the model; ``scale`` multiplies ``q`` before ``q·kᵀ``; ``block``
    is None for a core outside the blocks (an attention-pool head: it runs after the Linear of role ``pool_kv``)."""

    name: str
    block: int | None
    num_heads: int
    head_dim: int
    scale: float


#: Roles a Linear can play: attention in/out, MLP in/out, classifier; ``conv``: a hybrid's convolution outside the
#: attention blocks (stem, MBConv, downsampling, conv MLPs), quantized per output channel like the patch projection;
#: ``downsample``: a Linear between stages (Swin's patch-merging reduction, fed by a LayerNorm).
LINEAR_ROLES = ("qkv", "attn_out", "mlp_in", "mlp_out", "head", "conv", "downsample")


@dataclass(frozen=True)
class KeyRole:
    """The role of one state-dict key: which block (None outside blocks), which part (see :data:`LINEAR_ROLES`
    plus ``norm1``/``norm2``/``embed``/``pos``/``prefix``/``final_norm``/``layer_scale``), and the tensor kind."""

    key: str
    block: int | None
    part: str
    tensor: str  # "weight" | "bias" | "param"
    extra: dict = field(default_factory=dict, compare=False)


# -- role-level tables shared by every host (permutation-based merging reads them) --------------------------------
#: Unit-permutation groups that leave a transformer's function unchanged (see ``HostAdapter.permutation_axes``).
#: the residual stream's channels (one permutation for the whole network; LayerNorm is permutation-equivariant).
RESIDUAL = "residual"
#: rows of a block's fused q/k/v projection: heads as units and the dims within each head.
ATTN_QKV = "attn_qkv"
#: the value dims (heads and dims within heads) entering the attention output projection.
ATTN_V = "attn_v"
#: a block's MLP hidden neurons.
MLP_HIDDEN = "mlp_hidden"

#: the linear roles inside a block, in forward order.
BLOCK_LINEARS = ("qkv", "attn_out", "mlp_in", "mlp_out")


@dataclass
class BlockKeys:
    """One block's linears by role (``linears[role]`` = module name, roles :data:`BLOCK_LINEARS`), its
    LayerScale keys by the role of the linear they scale, and whether it has per-head q/k norms."""

    index: int
    linears: dict[str, str] = field(default_factory=dict)
    layer_scale: dict[str, str] = field(default_factory=dict)
    qk_norm: bool = False


def block_keys(roles: Mapping[str, KeyRole]) -> list[BlockKeys]:
    """Per block (in index order), the :class:`BlockKeys` read from ``roles``."""
    blocks: dict[int, BlockKeys] = {}
    for role in roles.values():
        if role.block is None:
            continue
        b = blocks.setdefault(role.block, BlockKeys(role.block))
        if role.part in BLOCK_LINEARS and role.tensor == "weight":
            b.linears[role.part] = role.extra["module"]
        elif role.part == "layer_scale":
            b.layer_scale[role.extra["scales"]] = role.key
        elif role.part == "qk_norm" and role.tensor == "weight":
            b.qk_norm = True
    return [blocks[i] for i in sorted(blocks)]


@runtime_checkable
class HostAdapter(Protocol):
    """What methods may ask of a host model; one implementation per family (see :mod:`.timm_vit`)."""

    name: str

    def matches(self, model: nn.Module) -> bool:
        """True when this adapter handles ``model`` (checked in :data:`ADAPTERS` order)."""

    def describe(self, model: nn.Module):
        """Static facts (:class:`~vitkit.adapters.timm_vit.ViTInfo`): depth, heads, head_dim, prefix tokens, pool,
        and per block ``block_dims`` (residual width), ``block_tokens``, ``block_spans`` (keys per query)."""

    def stages(self, model: nn.Module) -> list[Stage]: ...

    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """Every transformer block in forward order, with its module name."""

    def block_parts(self, block: nn.Module, *, index: int | None = None):
        """norm1 / attn / ls1 / drop_path1 / norm2 / mlp / ls2 / drop_path2 of one block."""

    def norm_linear_pairs(self, model: nn.Module) -> list[NormLinear]: ...

    def linear_roles(self, model: nn.Module) -> dict[str, LinearRole]: ...

    def attention_cores(self, model: nn.Module) -> list[AttentionCore]:
        """Each block's attention core (where ``q·kᵀ`` and ``attn·v`` happen), in forward order."""

    def outer_layers(self, model: nn.Module):
        """The layers around the blocks: patch projection, prefix tokens, positions, pre/final/pool norms."""

    def block_layers(self, block: nn.Module, *, index: int | None = None):
        """One block by role (norms, the four linears, attention core, MLP activation, layer scales), for
        converters that rebuild the whole block."""

    def heads(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The classifier head(s) (a distilled DeiT has two, averaged at inference)."""

    def key_roles(self, state_dict: dict[str, torch.Tensor]) -> dict[str, KeyRole]: ...

    def permutation_axes(self, roles: Mapping[str, KeyRole]) -> dict[str, tuple[tuple[int, str], ...]]:
        """Per key the ``(axis, group)`` pairs a unit permutation acts on (:data:`RESIDUAL`, :data:`ATTN_QKV`,
        :data:`ATTN_V`, :data:`MLP_HIDDEN`); ``UnsupportedModelError`` naming a key whose symmetry is unknown."""

    def set_mlp_widths(self, model: nn.Module, widths: Sequence[int]) -> None:
        """Resize each block's MLP hidden layer to ``widths[i]`` neurons (shapes only; load weights after)."""

    def input_size(self, model: nn.Module) -> tuple[int, int, int]: ...

    def block_input_shape(self, model: nn.Module, index: int) -> tuple[int, ...]:
        """The shape of one image's tokens entering block ``index`` at the default input size, without the batch
        dim: ``(N, D)`` for a plain ViT, ``(H, W, C)`` for a host whose blocks keep the token grid (Swin)."""

    # -- the host forward, split once: ``head(pool(blocks(embed(x))))`` -------------------------------------
    def embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) → tokens (B, N, D) entering the first block: patches, prefix tokens, positions."""

    def block_state(self, model: nn.Module, x: torch.Tensor, positions: torch.Tensor | None = None) -> dict:
        """Keyword arguments every block call of one forward on images ``x`` takes besides the tokens (EVA: ``rope``,
        the rotary embedding of the patch tokens; ``{}`` for a plain ViT). ``positions`` (``[B, T, 2]``, see
        :meth:`token_positions`): the state for patch tokens at those positions, after token merging."""

    def token_positions(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """Positions ``[1, T, 2]`` of the patch tokens entering the first block when the blocks' computation depends
        on them (RoPE), for token reduction to track (merged tokens: size-weighted mean); None when it does not."""

    def pool(self, model: nn.Module, tokens: torch.Tensor, *, size: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens after the last block → pooled features (B, D), final norm included (a host with several
        classifier heads may return one feature per head, (B, heads, D), for :meth:`head` to combine).
        ``size`` (B, N, 1): token sizes after merging, weighting average pooling."""

    def head(self, model: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """Pooled features → logits (B, classes)."""

    def token_grid(self, model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
        """The patch-token grid (h, w) for images ``x`` (the first stage's grid for a hierarchical host)."""

    def prefix_tokens(self, model: nn.Module) -> int:
        """Tokens ahead of the patch tokens right now (cls, dist, registers, prompts): never merged or dropped."""

    def final_norm(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block → final token features (B, N, D), before pooling."""

    def feature_norm(self, model: nn.Module) -> nn.Module | None:
        """The norm module the pooled feature has passed before the classifier (exit heads start from it)."""

    # -- inside a block: ``mlp_residual(attention_residual(x))``; runtime steps go in between ------------------
    def attention_residual(
        self,
        block: nn.Module,
        x: torch.Tensor,
        *,
        bias: torch.Tensor | None = None,
        is_causal: bool = False,
        needs: frozenset[str] = frozenset(),
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``x`` + the attention branch, and the extras named in ``needs`` (``metric``: head-mean keys,
        ``cls_attn``: the first token's attention row, ``global_attn``: attention each token receives). A host with
        a non-empty :meth:`block_state` takes it here too, as keyword arguments."""

    def mlp_residual(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``x`` + the MLP branch."""

    def block_linears(self, block: nn.Module, *, index: int | None = None) -> dict[str, nn.Module | None]:
        """A block's Linear layers by role: ``qkv``, ``attn_out``, ``attn_gate``, ``mlp_in``, ``mlp_out``, and
        ``mlp_gate`` for a split GLU MLP (its gate Linear; ``mlp_in`` is then the value Linear). An ``mlp_in`` with
        ``k × hidden`` rows stacks ``k`` rows per neuron (a packed GLU). Separate q/k/v projections: ``qkv`` is None
        and ``attn_q`` / ``attn_k`` / ``attn_v`` are given."""

    def residual_branches(self, block: nn.Module, *, index: int | None = None) -> tuple[nn.Module, nn.Module]:
        """The attention and MLP residual branches (norm included) as modules sharing the block's weights."""

    def route_linears(self, model: nn.Module, names: Sequence[str]) -> None:
        """A method is about to give the Linears ``names`` extra computation (LoRA): make the host's forward call
        those modules (a host whose forward reads a weight directly switches to calling the module)."""

    # -- structured pruning: shape surgery that keeps the model exact ----------------------------------------
    def check_prunable(self, model: nn.Module, groups) -> None:
        """Raise ``UnsupportedModelError`` naming the feature when ``groups`` cannot be pruned exactly."""

    def prune_heads(self, block: nn.Module, keep, *, index: int | None = None) -> None:
        """Keep only attention heads ``keep`` of ``block``."""

    def prune_mlp(self, block: nn.Module, keep, *, index: int | None = None) -> None:
        """Keep only hidden MLP neurons ``keep`` of ``block``."""

    def keep_blocks(self, model: nn.Module, keep) -> None:
        """Keep only blocks ``keep`` (indices in forward order)."""

    # -- adaptation: where extra tokens and parallel branches attach ----------------------------------------
    def check_prompt_tokens(self, model: nn.Module) -> None:
        """Raise ``UnsupportedModelError`` naming the feature when prompt tokens cannot be inserted."""

    def add_prompt_tokens(self, model: nn.Module, shallow: torch.Tensor, deep=(), *, dropout: float = 0.0) -> list[str]:
        """Insert prompt tokens ``shallow`` ``[1, P, D]`` after the prefix tokens (they count as prefix tokens
        from then on); ``deep``: empty or one ``[1, P, D]`` set per block after the first, replacing the prompt
        slots of that block's input. Returns the new parameters' names."""

    def mlp_branch_dim(self, model: nn.Module, block_name: str) -> int:
        """Input width of block ``block_name``'s MLP, or ``UnsupportedModelError`` when no parallel branch can
        be attached to it."""

    def add_mlp_branch(self, model: nn.Module, block_name: str, mixin: type, modules: dict, **attrs) -> str:
        """Mix ``mixin`` into block ``block_name``'s MLP (its ``forward`` sees the MLP's input ``h`` and calls
        ``super().forward(h)``), register ``modules`` and set ``attrs`` on it; returns the MLP's module name."""


#: Registered adapters, tried in order by :func:`adapter_for`. Families append themselves on import.
ADAPTERS: list[HostAdapter] = []

#: host attention class → its explicit twin: a subclass with both matmuls written out whose ``site(name, x)``
#: hook sees each matmul input (``"q"`` scaled, ``"k"``, ``"attn"`` the softmax map, ``"v"``, ``"out"`` the heads'
#: output). Methods that quantize or lower the attention (fake quantization, low-precision runtimes) swap a core's
#: ``__class__`` to a subclass of its twin; each adapter registers the twins of its attention classes.
EXPLICIT_ATTENTION: dict[type, type] = {}


def register_explicit_attention(twin: type) -> type:
    """Register ``twin`` (which names the host class it replaces as ``twin.host_class``)."""
    EXPLICIT_ATTENTION[twin.host_class] = twin
    return twin


def foreign_override(cls: type, host: type, method: str = "forward") -> type | None:
    """The first class in ``cls``'s MRO below ``host`` that defines ``method`` and is not vitkit's own (a user
    subclass that changes the computation), None when ``cls`` computes what ``host`` computes."""
    for klass in cls.__mro__:
        if klass is host:
            return None
        if method in vars(klass) and not klass.__module__.startswith("vitkit."):
            return klass
    return None


def check_host_module(module: nn.Module, host: type, where: str) -> None:
    """THE capability check for a host module of class ``host`` (attention, MLP): ``host`` itself, vitkit's patches
    of it and user subclasses that keep its ``forward`` are handled by every method; a subclass with its own
    ``forward`` is refused with one message (methods run the host's computation and would bypass it)."""
    klass = foreign_override(type(module), host)
    if klass is not None:
        raise UnsupportedModelError(
            f"{where} is a {type(module).__name__}, a subclass of {host.__module__.split('.')[0]} {host.__name__} "
            f"whose {klass.__name__}.forward replaces {host.__name__}.forward: vitkit's methods run "
            f"{host.__name__}'s computation and would bypass it; keep {host.__name__}.forward (put custom logic "
            "in sub-modules) or add an adapter in vitkit/adapters/"
        )


def explicit_host(cls: type) -> type | None:
    """The registered host attention class (:data:`EXPLICIT_ATTENTION`) that ``cls`` stands for: the class itself,
    or a subclass that overrides no ``forward`` anywhere below it (then it computes exactly what its host does)."""
    for host in EXPLICIT_ATTENTION:
        if issubclass(cls, host) and not any("forward" in vars(k) for k in cls.__mro__[: cls.__mro__.index(host)]):
            return host
    return None


def arch_name(model: nn.Module) -> str:
    """The timm architecture name a model was built as (its ``pretrained_cfg``), else its class name."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture", type(model).__name__))


def register_adapter(adapter: HostAdapter) -> HostAdapter:
    ADAPTERS.append(adapter)
    return adapter


def adapter_for(model: nn.Module) -> HostAdapter:
    """The adapter for ``model``, or ``UnsupportedModelError`` listing the families vitkit handles."""
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter
    handled = ", ".join(a.name for a in ADAPTERS) or "none"
    raise UnsupportedModelError(
        f"{type(model).__name__} is not a model family vitkit has an adapter for (handled: {handled}); "
        "load a supported timm model or add an adapter in vitkit/adapters/"
    )


def run_forward(
    model: nn.Module, x: torch.Tensor, *, block_fn: Callable[[int, nn.Module, torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """The host forward through the adapter: ``head(pool(blocks(embed(x))))``, each stage's downsampling module
    (patch merging) before its first block; ``block_fn(i, block, tokens)`` replaces the plain ``block(tokens)``
    call (token reduction, early exit, feature capture)."""
    host = adapter_for(model)
    tokens = host.embed(model, x)
    make_state = getattr(host, "block_state", None)  # per-forward block arguments (RoPE), {} for most hosts
    state = make_state(model, x) if callable(make_state) else {}
    blocks = iter(enumerate(host.blocks(model)))
    for stage in host.stages(model):
        if stage.downsample is not None:
            tokens = model.get_submodule(stage.downsample)(tokens)
        for _ in stage.block_names:
            i, (_, block) = next(blocks)
            tokens = block(tokens, **state) if block_fn is None else block_fn(i, block, tokens)
    return host.head(model, host.pool(model, tokens))
