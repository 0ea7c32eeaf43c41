"""Other tools' formats in and out: Hugging Face ``peft`` LoRA adapters (:mod:`.peft`).

Sits above :mod:`vitkit.api`: importing an adapter is applying a recorded ``lora`` step."""

from .peft import export_peft, import_peft

__all__ = ["export_peft", "import_peft"]
