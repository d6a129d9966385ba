"""Loading Hugging Face checkpoints and GGUF files (never torch, never pickle)."""

from kdknob_jax.hf.load import LoadedModel, load_config, load_model, load_tokenizer, read_hf_config
from kdknob_jax.hf.registry import EMBEDDED, ModelSource, resolve

__all__ = ["EMBEDDED", "LoadedModel", "ModelSource", "load_config", "load_model",
           "load_tokenizer", "read_hf_config", "resolve"]
