"""Distillation recovery: soft / DeiT hard / NKD / feature KD, TinyViT logit cache, exact resume, torchrun."""

from .trainer import DistillConfig, apply_distill, distill

__all__ = ["DistillConfig", "apply_distill", "distill"]
