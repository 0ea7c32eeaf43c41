"""Other tools' formats in and out: Hugging Face ``peft`` LoRA adapters (:mod:`.peft`), ``transformers`` folders
(:mod:`.hf_export`).

Sits above :mod:`vitkit.api`: importing an adapter is applying a recorded ``lora`` step."""

from .hf_export import export_hf
from .peft import export_peft, import_peft

__all__ = ["export_hf", "export_peft", "import_peft"]
