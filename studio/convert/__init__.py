"""Bring weights from other libraries into studio models (and back, where it makes sense).

`from_hf` is the front door for Hugging Face models (a known name such as "smollm2", or a local Llama
folder); `from_hf_llama` converts a transformers Llama model already in memory; `from_transformer_lens_native`
a TransformerLens model."""

from studio.convert.hf import PRETRAINED_NAMES, from_hf
from studio.convert.hf_llama import from_hf_llama, spec_from_hf_llama_config
from studio.convert.transformer_lens import from_transformer_lens_native

__all__ = ["from_hf", "PRETRAINED_NAMES", "from_hf_llama", "spec_from_hf_llama_config", "from_transformer_lens_native"]
