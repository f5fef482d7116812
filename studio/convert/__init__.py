"""Bring weights from other libraries into studio models (and back, where it makes sense)."""

from studio.convert.transformer_lens import from_transformer_lens_native

__all__ = ["from_transformer_lens_native"]
