"""Hugging Face ``transformers`` folders ⇄ exact timm models (:func:`load_hf_folder`, converters by ``model_type``)."""

from .folder import is_hf_folder, load_hf_folder, read_hf_folder
from .registry import supported_model_types

__all__ = ["is_hf_folder", "load_hf_folder", "read_hf_folder", "supported_model_types"]
