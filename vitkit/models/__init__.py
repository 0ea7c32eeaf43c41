"""Model loading: timm names, presets, checkpoints on disk and vitkit artifacts."""

from .fingerprint import model_fingerprint
from .load import arch_record, build_arch, load, load_state_dict_strict
from .presets import PRESETS

__all__ = ["PRESETS", "arch_record", "build_arch", "load", "load_state_dict_strict", "model_fingerprint"]
