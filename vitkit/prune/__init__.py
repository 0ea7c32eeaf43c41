"""Structured pruning of timm ViTs (heads, MLP neurons, blocks) — NViT / Taylor / magnitude / DIMAP saliency."""

from .config import PruneConfig
from .transform import apply_prune, structure, unpruned_teacher

__all__ = ["PruneConfig", "apply_prune", "structure", "unpruned_teacher"]
