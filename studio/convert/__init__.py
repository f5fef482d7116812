"""Bring weights from other libraries into studio models (and back, where it makes sense)."""

from studio.convert.hf_llama import from_hf_llama, spec_from_hf_llama_config
from studio.convert.transformer_lens import from_transformer_lens_native

__all__ = ["from_transformer_lens_native"]
