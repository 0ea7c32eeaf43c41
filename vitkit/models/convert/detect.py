"""Which layout a foreign ViT state dict has: ``torchvision``, ``lucidrains`` — or a one-line error naming the
closest layout and the keys it lacks."""

from __future__ import annotations

from ...errors import CheckpointError
from .common import StateDict

#: layout → (its name in messages, the keys that identify it)
SIGNATURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "torchvision": (
        "torchvision VisionTransformer",
        (
            "conv_proj.weight",
            "class_token",
            "encoder.pos_embedding",
            "encoder.layers.encoder_layer_0.ln_1.weight",
            "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
            "encoder.layers.encoder_layer_0.mlp.0.weight",
            "encoder.ln.weight",
            "heads.head.weight",
        ),
    ),
    "lucidrains": (
        "lucidrains vit_pytorch.ViT",
        (
            "to_patch_embedding.*",
            "cls_token",
            "pos_embedding",
            "transformer.layers.0.0.norm.weight",
            "transformer.layers.0.0.to_qkv.weight",
            "transformer.layers.0.1.net.1.weight",
            "transformer.norm.weight",
            "mlp_head.weight",
        ),
    ),
}
#: layouts vitkit loads directly, named in the error so the user is sent there
_TIMM_KEYS = ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight")


def _has(state: StateDict, key: str) -> bool:
    if key.endswith("*"):
        return any(k.startswith(key[:-1]) for k in state)
    if key == "encoder.layers.encoder_layer_0.mlp.0.weight":  # old torchvision checkpoints: mlp.linear_1
        return key in state or "encoder.layers.encoder_layer_0.mlp.linear_1.weight" in state
    return key in state


def missing_keys(state: StateDict, layout: str) -> list[str]:
    return [k for k in SIGNATURES[layout][1] if not _has(state, k)]


def detect(state: StateDict) -> str:
    """``"torchvision"`` or ``"lucidrains"``; ``CheckpointError`` naming the closest layout otherwise."""
    scores = {name: len(SIGNATURES[name][1]) - len(missing_keys(state, name)) for name in SIGNATURES}
    full = [name for name in SIGNATURES if not missing_keys(state, name)]
    if full:
        return full[0]
    if all(k in state for k in _TIMM_KEYS):
        raise CheckpointError(
            "this is already a timm ViT state dict: load it with vitkit.load(path, arch=...) instead of converting"
        )
    best = max(scores, key=lambda n: scores[n])
    if scores[best] == 0:
        first = list(state)[:3]
        raise CheckpointError(
            f"state dict matches no known layout (first keys {first}): vitkit converts torchvision "
            "VisionTransformer and lucidrains vit_pytorch.ViT state dicts; pass --from to force one"
        )
    lacks = missing_keys(state, best)
    raise CheckpointError(
        f"looks like {SIGNATURES[best][0]} but lacks {', '.join(lacks[:4])}"
        f"{' ...' if len(lacks) > 4 else ''}: is it a complete state_dict of that model?"
    )
