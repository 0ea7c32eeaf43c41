"""Distillation recovery: soft / DeiT hard / NKD / feature KD, G2SD two stages, TinyViT logit cache, exact
resume, torchrun; ``progress_to(fn)`` reports training steps (the library is silent otherwise)."""

from .trainer import DistillConfig, apply_distill, distill, progress_to

__all__ = ["DistillConfig", "apply_distill", "distill", "progress_to"]
