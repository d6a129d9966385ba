"""The explicit KV cache: a plain dict pytree passed into and returned from the decoder.

Layout (einsum letters of `ModelConfig`):
  k, v:  [L, B, K, S, H]  keys after RoPE, and values, one slot per token (batch and head
                          axes lead, so attention reads the cache without transposing it);
  pos:   [B, S] int32     the absolute position of the token in each slot, -1 when empty or
                          padding, so masks are decided on positions and slots can be shared
                          by rows of different lengths;
  index: int32 scalar     the next slot to write; a forward over T tokens writes slots
                          [index, index + T) and returns index + T.
Memory is L * B * S * K * H * 2 elements: bounded by batch x (prompt + new tokens).
"""

from __future__ import annotations

import jax.numpy as jnp

from kdknob_jax.models.config import ModelConfig

CACHE_AXES = {
    "k": ("layers", "batch", "kv_heads", "cache_length", "head_dim"),
    "v": ("layers", "batch", "kv_heads", "cache_length", "head_dim"),
    "pos": ("batch", "cache_length"),
    "index": (),
}


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype: str | None = None) -> dict:
  """An empty cache for `batch` rows of up to `length` tokens each.

  Args:
    cfg: the model config.
    batch: B.
    length: S, the number of slots (prompt plus new tokens).
    dtype: of keys and values; defaults to the model's dtype.
  """
  kv_shape = (cfg.num_layers, batch, cfg.num_kv_heads, length, cfg.head_dim)
  dt = jnp.dtype(dtype or cfg.dtype)
  return {
      "k": jnp.zeros(kv_shape, dt),
      "v": jnp.zeros(kv_shape, dt),
      "pos": jnp.full((batch, length), -1, jnp.int32),
      "index": jnp.zeros((), jnp.int32),
  }
