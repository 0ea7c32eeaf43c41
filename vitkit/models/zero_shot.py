"""Zero-shot classification: an image-embedding model plus class-prompt text embeddings → a C-way classifier.

The class-prompt file is safetensors: ``embeddings`` ``[C, D]`` and, in its metadata, ``classnames`` (a JSON
list, in label order) and ``format``. Write one with :func:`vitkit.models.open_clip.write_class_embeddings` or
``vitkit zero-shot-embed``; use it with ``vitkit eval MODEL --zero-shot FILE`` or a recipe's
``eval: {zero_shot: FILE}``. Nothing here needs open_clip.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._io import atomic_write_bytes
from ..errors import CheckpointError, ConfigError, UnsupportedModelError
from .load import ARCH_ATTR

_log = logging.getLogger(__name__)

FORMAT = "vitkit-zero-shot/1"


def save_class_embeddings(
    path: str | Path, embeddings: torch.Tensor, classnames: Sequence[str], *, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``embeddings`` ``[C, D]`` and the ``C`` class names (label order) atomically."""
    from safetensors.torch import save

    names = [str(c) for c in classnames]
    if embeddings.ndim != 2 or embeddings.shape[0] != len(names):
        raise ConfigError(
            f"embeddings must be [C, D], one row per class name: got {tuple(embeddings.shape)} for {len(names)} names"
        )
    metadata = {"format": FORMAT, "classnames": json.dumps(names)}
    metadata.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (meta or {}).items()})
    data = save({"embeddings": embeddings.detach().float().cpu().contiguous()}, metadata=metadata)
    return atomic_write_bytes(path, data)


def read_class_embeddings(path: str | Path) -> tuple[torch.Tensor, list[str]]:
    """``(embeddings [C, D], classnames)`` from a class-prompt file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"class-embedding file not found: {path}; write one with `vitkit zero-shot-embed`")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if "embeddings" not in fh.keys():
                raise CheckpointError(f"{path} has no 'embeddings' tensor: write it with `vitkit zero-shot-embed`")
            emb = fh.get_tensor("embeddings").float()
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt class-embedding file {path}: {str(exc).splitlines()[0]}") from None
    try:
        names = json.loads(meta["classnames"])
    except (KeyError, ValueError):
        raise CheckpointError(
            f"{path} has no class names in its metadata: write it with `vitkit zero-shot-embed`"
        ) from None
    if emb.ndim != 2 or not isinstance(names, list) or len(names) != emb.shape[0]:
        raise CheckpointError(f"{path}: embeddings {tuple(emb.shape)} do not match its {len(names)} class names")
    return emb, [str(n) for n in names]


class ZeroShotHead(nn.Module):
    """A head that could not be folded (e.g. quantized): its embedding, then cosine-to-class scores."""

    def __init__(self, embed: nn.Module, classes: torch.Tensor) -> None:
        super().__init__()
        self.embed = embed
        self.classes = nn.Linear(classes.shape[1], classes.shape[0], bias=False)
        self.classes.weight.data.copy_(classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classes(self.embed(x))


def zero_shot_head(model: nn.Module, embeddings: torch.Tensor) -> nn.Module:
    """Turn an image-embedding model (head ``f = W x + b``, ``D`` outputs) into a ``C``-way classifier, in place.

    Logits are ``f · ê_c`` with ``ê_c = e_c / |e_c|``: the head becomes ``Ê W`` with bias ``Ê b`` (0 for a
    converted open_clip tower). CLIP's zero-shot rule picks ``argmax_c cos(f, e_c) = argmax_c (f · ê_c) / |f|``;
    ``|f|`` is the same for every class and positive, so dividing by it (or multiplying by CLIP's logit scale)
    does not change the argmax: top-1 here equals CLIP zero-shot top-1 exactly. A plain ``nn.Linear`` head is
    folded (the model saves and rebuilds as a C-class model: its arch record says ``num_classes=C``); any other
    head (e.g. already quantized) is wrapped in :class:`ZeroShotHead`, for evaluation only.
    """
    head = getattr(model, "head", None)
    if embeddings.ndim != 2:
        raise ConfigError(f"class embeddings must be [C, D], got {tuple(embeddings.shape)}")
    e = F.normalize(embeddings.detach().float(), dim=-1)  # [C, D] unit rows
    out_features = getattr(head, "out_features", None)
    if not isinstance(head, nn.Module) or out_features is None:
        raise UnsupportedModelError(
            f"zero-shot needs a linear embedding head (model.head); this {type(model).__name__} has "
            f"{type(head).__name__}"
        )
    if out_features != e.shape[1]:
        raise ConfigError(
            f"class embeddings have dim {e.shape[1]} but the model outputs {out_features}: "
            "write them with the CLIP model this image tower came from"
        )
    c = e.shape[0]
    if type(head) is nn.Linear:
        w = head.weight.detach().float()  # [D, width]
        new = nn.Linear(head.in_features, c, bias=True, device=head.weight.device, dtype=head.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(e @ w)  # [C, D] @ [D, width] → [C, width]
            new.bias.copy_(e @ head.bias.detach().float() if head.bias is not None else torch.zeros(c))
        model.head = new
        rec = getattr(model, ARCH_ATTR, None)
        if rec is not None:
            rec.setdefault("kwargs", {})["num_classes"] = c
            overlay = rec["kwargs"].get("pretrained_cfg_overlay")
            if isinstance(overlay, dict) and "num_classes" in overlay:
                overlay["num_classes"] = c
    else:
        _log.warning("head %s is not a plain Linear: zero-shot head wrapped (evaluation only)", type(head).__name__)
        model.head = ZeroShotHead(head, e.to(next(head.parameters()).device))
    if hasattr(model, "num_classes"):
        model.num_classes = c
    return model
