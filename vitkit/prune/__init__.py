"""Structured pruning of ViTs (heads, MLP neurons, blocks; head dims via the adapter) to a params / MACs /
measured-latency target — NViT / Taylor / magnitude / DIMAP saliency. Shape surgery is the host adapter's."""

from .config import PruneConfig
from .transform import apply_prune, structure, unpruned_teacher

__all__ = ["PruneConfig", "apply_prune", "structure", "unpruned_teacher"]
