"""Cheap adaptation of a pretrained ViT: LoRA (folded back to plain weights), AdaptFormer adapters, visual
prompts, SlimFit freezing, LoRA-FAIR aggregation, and the rank a full fine-tuning used.

Registered steps and their kinds (order: structure → weights → numerics → runtime):

* ``lora`` / ``adapter`` / ``prompt`` — *structure* (they add parameters; artifacts replay them before
  loading the weights). One kind per model: adding another is refused, naming the one present.
* ``finetune`` — *weights* (trains what the adaptation left trainable, on a bundled/imagefolder dataset).
* ``lora_merge`` — *weights* (folds LoRA into the weights: a plain timm model, same state-dict keys).

So a recipe runs ``lora → finetune → lora_merge → ptq → tome``; AdaptFormer adapters and prompts are not
linear-foldable and stay modules (saved and restored with the artifact).
"""

from .adapter import AdapterConfig, AdaptFormerMlp
from .aggregate import aggregate_lora, load_lora_state_dict, lora_state_dict
from .common import adapter_kind, adapter_kinds, trainable_summary
from .lora import DEFAULT_TARGETS, LoRAConfig, LoRALinear, LoRAMergeConfig, lora_modules
from .prompt import PromptConfig
from .rank import truncate_to_rank, update_spectrum
from .slimfit import SlimFitConfig, SlimFitFreezer
from .train import (
    FineTuneConfig,
    FineTuneResult,
    MemoryMeter,
    finetune,
    lora_plus_scales,
)

__all__ = [
    "DEFAULT_TARGETS",
    "AdaptFormerMlp",
    "AdapterConfig",
    "FineTuneConfig",
    "FineTuneResult",
    "LoRAConfig",
    "LoRALinear",
    "LoRAMergeConfig",
    "MemoryMeter",
    "PromptConfig",
    "SlimFitConfig",
    "SlimFitFreezer",
    "adapter_kind",
    "adapter_kinds",
    "aggregate_lora",
    "finetune",
    "load_lora_state_dict",
    "lora_modules",
    "lora_plus_scales",
    "lora_state_dict",
    "trainable_summary",
    "truncate_to_rank",
    "update_spectrum",
]
