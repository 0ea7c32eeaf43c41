"""Model loading: timm names, presets, checkpoints on disk and vitkit artifacts."""

from . import convert as _convert  # noqa: F401  (registers the vitkit_vit timm architecture)
from . import hf as _hf  # noqa: F401  (registers vitkit.load(<transformers save_pretrained folder>))
from . import open_clip as _open_clip  # noqa: F401  (registers vitkit.load("open_clip:ARCH/TAG"))
from .fingerprint import model_fingerprint
from .load import arch_record, build_arch, load, load_state_dict_strict
from .presets import PRESETS

__all__ = ["PRESETS", "arch_record", "build_arch", "load", "load_state_dict_strict", "model_fingerprint"]
