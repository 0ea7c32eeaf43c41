""":class:`GridInfo`: the static facts of a host whose blocks change width, grid or attention span across the
network (Swin, TinyViT, EfficientFormer) — the fields a plain ViT's :class:`~.timm_vit.ViTInfo` has, plus the
per-block geometry pruning's cost model reads. Family adapters subclass it with their own extra fields."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class GridInfo:
    """``block_dims``: residual width per block, ``block_tokens``: tokens of each block's grid, ``block_spans``:
    keys each query attends to (the window area under windowed attention). ``embed_dim`` is the first block's
    width and ``grid_size`` its token grid (as timm names them); ``patch_size`` the stem's total stride."""

    arch: str
    depth: int
    embed_dim: int
    num_heads: tuple[int, ...]
    head_dim: tuple[int, ...]
    mlp_hidden: tuple[int, ...]
    block_dims: tuple[int, ...]
    block_tokens: tuple[int, ...]
    block_spans: tuple[int, ...]
    global_pool: str
    patch_size: tuple[int, int]
    grid_size: tuple[int, int]
    img_size: tuple[int, int]
    in_chans: int
    num_classes: int
    block_names: tuple[str, ...]
    features: frozenset[str]
    num_prefix_tokens: int = 0
    has_class_token: bool = False
    has_dist_token: bool = False
    num_reg_tokens: int = 0
    num_prompt_tokens: int = 0
    pool_include_prefix: bool = False

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_tokens(self) -> int:
        """Tokens entering the first block at the default input size."""
        return self.num_patches
