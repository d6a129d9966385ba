"""The paper's models as HF config dicts, with their published parameter counts.

Configs are the architecture keys of each hub `config.json` (Gemma-3: the `text_config`, with
transformers' Gemma3TextConfig defaults for keys the file omits). `published` is the figure the
model's authors state and `counts` says what it counts:
  Qwen3: model cards' "Number of Parameters (Non-Embedding)" (embeddings and untied LM head
    excluded), the more precise of the two figures the cards give.
  Gemma-3: tech report (arXiv 2503.19786) Table 1, embedding + non-embedding (text only; the
    417M vision encoder is not loaded).
  Llama: Meta's model cards / hub totals (3.21B for Llama-3.2-3B, 8.03B for Llama-3.1-8B).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kdknob_jax.models.config import ModelConfig


def _qwen3(hidden, inter, layers, heads, tied) -> dict[str, Any]:
  return dict(model_type="qwen3", vocab_size=151936, hidden_size=hidden, intermediate_size=inter,
              num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=8,
              head_dim=128, rms_norm_eps=1e-6, rope_theta=1_000_000.0, rope_scaling=None,
              tie_word_embeddings=tied, max_position_embeddings=40960, attention_bias=False,
              hidden_act="silu")


def _gemma3(hidden, inter, layers, heads, kv, window, **extra) -> dict[str, Any]:
  text = dict(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=kv, sliding_window=window,
              rope_scaling={"factor": 8.0, "rope_type": "linear"}, **extra)
  return dict(model_type="gemma3", text_config=text)


def _llama3(hidden, inter, layers, heads, tied, factor) -> dict[str, Any]:
  return dict(model_type="llama", vocab_size=128256, hidden_size=hidden, intermediate_size=inter,
              num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=8,
              head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0,
              rope_scaling={"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
              tie_word_embeddings=tied, max_position_embeddings=131072, attention_bias=False,
              mlp_bias=False, hidden_act="silu")


@dataclasses.dataclass(frozen=True)
class Variant:
  hub_id: str
  hf_config: dict[str, Any]
  published: float  # parameters
  counts: str  # "total" or "non_embedding"

  def config(self, dtype: str = "float32") -> ModelConfig:
    return ModelConfig.from_hf(self.hf_config, dtype=dtype)


VARIANTS: dict[str, Variant] = {v.hub_id: v for v in [
    Variant("Qwen/Qwen3-0.6B", _qwen3(1024, 3072, 28, 16, True), 0.44e9, "non_embedding"),
    Variant("Qwen/Qwen3-1.7B", _qwen3(2048, 6144, 28, 16, True), 1.4e9, "non_embedding"),
    Variant("Qwen/Qwen3-4B", _qwen3(2560, 9728, 36, 32, True), 3.6e9, "non_embedding"),
    Variant("Qwen/Qwen3-8B", _qwen3(4096, 12288, 36, 32, False), 6.95e9, "non_embedding"),
    Variant("Qwen/Qwen3-14B", _qwen3(5120, 17408, 40, 40, False), 13.2e9, "non_embedding"),
    Variant("Qwen/Qwen3-32B", _qwen3(5120, 25600, 64, 64, False), 31.2e9, "non_embedding"),
    Variant("deepseek-ai/DeepSeek-R1-0528-Qwen3-8B", dict(
        _qwen3(4096, 12288, 36, 32, False), max_position_embeddings=131072,
        rope_scaling={"rope_type": "yarn", "factor": 4.0,
                      "original_max_position_embeddings": 32768,
                      "attn_factor": 0.8782488562869419}), 8.19e9, "total"),
    Variant("google/gemma-3-1b-it", dict(
        model_type="gemma3_text", vocab_size=262144, hidden_size=1152, intermediate_size=6912,
        num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        sliding_window=512, rope_scaling=None, max_position_embeddings=32768),
            1.000e9, "total"),
    Variant("google/gemma-3-4b-it", _gemma3(2560, 10240, 34, 8, 4, 1024), 3.884e9, "total"),
    Variant("google/gemma-3-12b-it", _gemma3(3840, 15360, 48, 16, 8, 1024), 11.771e9, "total"),
    Variant("google/gemma-3-27b-it", _gemma3(5376, 21504, 62, 32, 16, 1024, head_dim=128,
                                             query_pre_attn_scalar=168), 27.016e9, "total"),
    Variant("meta-llama/Llama-3.1-8B-Instruct", _llama3(4096, 14336, 32, 32, False, 8.0),
            8.03e9, "total"),
    Variant("meta-llama/Llama-3.2-3B-Instruct", _llama3(3072, 8192, 28, 24, True, 32.0),
            3.21e9, "total"),
]}


def counted_params(cfg: ModelConfig, total: int, counts: str) -> int:
  """The part of a total parameter count that a published figure of kind `counts` covers."""
  if counts == "total":
    return total
  embed = cfg.vocab_size * cfg.hidden_size
  return total - embed * (1 if cfg.tie_embeddings else 2)
