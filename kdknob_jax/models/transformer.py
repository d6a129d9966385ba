"""One Flax linen decoder for Llama-3 (and SmolLM2), Qwen3 and Gemma-3 text models.

Modules here only declare parameters (with logical axis names) and call the math in
`kdknob_jax.ops`. Layers are stacked with `nn.scan`, so every per-layer parameter has a leading
`layers` axis and compile time does not grow with depth. The KV cache is an explicit pytree
(`kdknob_jax.models.cache`): passed in, returned updated, never hidden module state.

Einsum letters: see `ModelConfig`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdknob_jax.models.config import ExecConfig, ModelConfig
from kdknob_jax.ops.attention import attention, attention_mask, shared_prefix_attention
from kdknob_jax.ops.head import HeadSpec, head_matmul, softcap
from kdknob_jax.ops.layers import mlp_activation, projection, rms_norm
from kdknob_jax.ops.rope import apply_rope, rope_tables

Array = jax.Array

# Longer than any distance, so a global layer's "window" hides nothing.
_NO_WINDOW = 2**30

# The adapters' collection: {"layers": {target: {"a": A, "b": B}}}, scanned like the params.
LORA = "lora"

_REMAT = {"nothing": jax.checkpoint_policies.nothing_saveable,
          # Projections are dots without batch dimensions; attention's dots have (b, k).
          "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _kernel(std: float = 0.02):
  return nn.initializers.normal(stddev=std)


class Block(nn.Module):
  """One decoder layer; `nn.scan` stacks L of them.

  Attributes:
    config: the model.
    lora_scale: α / r of the adapters in the "lora" collection (when one is given).
    execution: the attention form and its query chunk.
  """
  config: ModelConfig
  lora_scale: float = 1.0
  execution: ExecConfig = ExecConfig()

  def _param(self, name: str, shape: tuple[int, ...], axes: tuple[str, ...], init=None) -> Array:
    init = init or _kernel()
    return self.param(name, nn.with_logical_partitioning(init, axes), shape,
                      jnp.dtype(self.config.dtype))

  def _norm(self, name: str, x: Array, size: int, axis_name: str) -> Array:
    cfg = self.config
    # Gemma stores w with output x*(1+w), so zeros is the identity; Llama/Qwen store w itself.
    init = nn.initializers.zeros if cfg.gemma else nn.initializers.ones
    scale = self._param(name, (size,), (axis_name,), init)
    return rms_norm(x, scale, cfg.rms_norm_eps, cfg.gemma)

  def _proj(self, name: str, eq: str, x: Array, w: Array) -> Array:
    """x·W with this layer's adapter of `name` applied, if the "lora" collection has one."""
    adapter = None
    if self.has_variable(LORA, name):
      ab = self.get_variable(LORA, name)
      adapter = (ab["a"], ab["b"])
    return projection(eq, x, w, adapter, self.lora_scale)

  @nn.compact
  def __call__(self, x: Array, layer: dict[str, Any], shared: dict[str, Any]):
    """Runs one layer.

    Args:
      x: residual stream [B, T, D].
      layer: this layer's scanned inputs: `sliding` (bool scalar) and, with a cache, its
        `k` and `v` [B, K, S, H] (read only); or, in the per-layer layout of
        `kdknob_jax.models.split`, the rows' own `kt` [B, K, H, S] and `v` [B, K, S, H]
        (updated here at `shared["slot"]`) and the prompts' `prompt_kt` and `prompt_v`.
      shared: inputs every layer sees: positions, RoPE tables, key positions of the cache
        (in the per-layer layout, `k_pos` after this forward's tokens are written, and
        `prompt_k_pos` [B, P] repeated to the rows).

    Returns:
      (x [B, T, D], {"k", "v"} this layer's new keys and values [B, K, T, H] for the cache,
      {"kt", "v"} the updated per-layer cache, or empty without a cache).
    """
    cfg = self.config
    d, n, kv, h, f = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                      cfg.intermediate_size)
    wq = self._param("q_proj", (d, n, h), ("embed", "heads", "head_dim"))
    wk = self._param("k_proj", (d, kv, h), ("embed", "kv_heads", "head_dim"))
    wv = self._param("v_proj", (d, kv, h), ("embed", "kv_heads", "head_dim"))
    wo = self._param("o_proj", (n, h, d), ("heads", "head_dim", "embed"))

    hx = self._norm("input_norm", x, d, "embed")
    q = self._proj("q_proj", "btd,dnh->btnh", hx, wq)
    k = self._proj("k_proj", "btd,dkh->btkh", hx, wk)
    v = self._proj("v_proj", "btd,dkh->btkh", hx, wv)
    if cfg.qk_norm:
      q = self._norm("q_norm", q, h, "head_dim")
      k = self._norm("k_norm", k, h, "head_dim")
    sliding = layer["sliding"]
    cos = jnp.where(sliding, shared["cos_local"], shared["cos"])
    sin = jnp.where(sliding, shared["sin_local"], shared["sin"])
    q = nn.with_logical_constraint(apply_rope(q, cos, sin), ("batch", "length", "heads", "head_dim"))
    k = nn.with_logical_constraint(apply_rope(k, cos, sin),
                                   ("batch", "length", "kv_heads", "head_dim"))

    window = None
    if cfg.sliding_window is not None:
      window = jnp.where(sliding, cfg.sliding_window, _NO_WINDOW)
    q_pos = shared["q_pos"]
    new_cache, blocks = {}, []
    # Keys and values go to [B, K, T, H], the cache's layout: batch dims leading, so the
    # attention dots read the cache in place with no transpose.
    k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    ex = self.execution
    if "kt" in layer:
      # The rows' own cache (`kdknob_jax.models.split`): written first, then read whole, so
      # its old value's only use is the in-place update and XLA copies nothing. The prompt's
      # keys, one copy per prompt for its n samples, are only read.
      slot = shared["slot"]
      kt = jax.lax.dynamic_update_slice(
          layer["kt"], jnp.swapaxes(k, 2, 3).astype(layer["kt"].dtype), (0, 0, 0, slot))
      v = jax.lax.dynamic_update_slice(layer["v"], v.astype(layer["v"].dtype), (0, 0, slot, 0))
      prefix = (layer["prompt_kt"], layer["prompt_v"],
                attention_mask(q_pos, shared["prompt_k_pos"], window))
      own = (kt, v, attention_mask(q_pos, shared["k_pos"], window))
      o = shared_prefix_attention(q, prefix, own, cfg.query_scale, cfg.attn_logit_softcap)
      new_cache = {"kt": kt, "v": v}
    else:
      if "k" in layer:
        # The cache is only read here and written once after all layers (see `Decoder`), so
        # a decode step never copies it; the new keys are a second block of the same softmax.
        k, v = k.astype(layer["k"].dtype), v.astype(layer["v"].dtype)
        new_cache = {"k": k, "v": v}
        blocks.append((layer["k"], layer["v"], attention_mask(q_pos, shared["k_pos"], window)))
      blocks.append((k, v, attention_mask(q_pos, q_pos, window)))
      o = attention(q, blocks, cfg.query_scale, cfg.attn_logit_softcap, ex.attention,
                    ex.query_chunk)
    attn_out = self._proj("o_proj", "btnh,nhd->btd", o, wo)
    if cfg.gemma:
      attn_out = self._norm("post_attn_norm", attn_out, d, "embed")
    x = nn.with_logical_constraint(x + attn_out, ("batch", "length", "embed"))

    hx = self._norm("pre_mlp_norm", x, d, "embed")
    w_gate = self._param("gate_proj", (d, f), ("embed", "mlp"))
    w_up = self._param("up_proj", (d, f), ("embed", "mlp"))
    w_down = self._param("down_proj", (f, d), ("mlp", "embed"))
    gate = self._proj("gate_proj", "btd,df->btf", hx, w_gate)
    up = self._proj("up_proj", "btd,df->btf", hx, w_up)
    hidden = nn.with_logical_constraint(mlp_activation(gate, cfg.gemma) * up,
                                        ("batch", "length", "mlp"))
    mlp_out = self._proj("down_proj", "btf,fd->btd", hidden, w_down)
    if cfg.gemma:
      mlp_out = self._norm("post_mlp_norm", mlp_out, d, "embed")
    x = nn.with_logical_constraint(x + mlp_out, ("batch", "length", "embed"))
    return x, new_cache


def head_spec(cfg: ModelConfig) -> HeadSpec:
  """How the config's head maps hidden states to logits (tying, final softcap)."""
  return HeadSpec(cfg.tie_embeddings, cfg.final_logit_softcap)


def output_logits(x: Array, weight: Array, cfg: ModelConfig) -> Array:
  """Float32 logits [B, T, V] from final-normed hidden states [B, T, D].

  Args:
    x: hidden states.
    weight: the embedding [V, D] when tied, else the LM head [D, V].
    cfg: the model config (tying and final softcap).
  """
  spec = head_spec(cfg)
  logits = softcap(head_matmul(x, weight, spec), spec)
  return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def embed_tokens(embedding: Array, tokens: Array, cfg: ModelConfig) -> Array:
  """Token ids [B, T] to the residual stream [B, T, D] (Gemma's sqrt(D) scaling included)."""
  x = jnp.take(embedding, tokens, axis=0)
  if cfg.gemma:
    # HF casts sqrt(D) to the weight dtype before multiplying; bf16 rounding included.
    x = x * jnp.asarray(math.sqrt(cfg.hidden_size), embedding.dtype)
  return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def shared_inputs(cfg: ModelConfig, positions: Array) -> dict[str, Array]:
  """What every layer reads: RoPE tables (global and local) of `positions` [B, T] and the
  query positions; callers with a cache add the key positions `k_pos`."""
  dtype = jnp.dtype(cfg.dtype)
  cos, sin = rope_tables(positions, cfg.rope, cfg.head_dim, dtype)
  cos_l, sin_l = (cos, sin) if cfg.rope_local is None else rope_tables(
      positions, cfg.rope_local, cfg.head_dim, dtype)
  return {"cos": cos, "sin": sin, "cos_local": cos_l, "sin_local": sin_l, "q_pos": positions}


class Decoder(nn.Module):
  """Token ids to float32 logits, with an optional explicit KV cache.

  Attributes:
    config: the model.
    lora_scale: α / r of the adapters, when the "lora" collection holds them.
    execution: rematerialization and attention form (memory and speed, not the math).
  """
  config: ModelConfig
  lora_scale: float = 1.0
  execution: ExecConfig = ExecConfig()

  @nn.compact
  def __call__(self, tokens: Array, positions: Array, cache: dict[str, Array] | None = None,
               return_hidden: bool = False, compute_logits: bool = True):
    """Forward pass.

    Args:
      tokens: int [B, T].
      positions: int [B, T] absolute positions; a negative position marks padding, which no
        query attends to.
      cache: None for a plain forward, or a cache from `init_cache` whose `index` is the slot
        where these T tokens are written.
      return_hidden: also return the final-normed hidden states [B, T, D].
      compute_logits: False skips the LM head (a prefill needs logits at one position only,
        and [B, T, V] float32 can be gigabytes); logits are then None and hidden states are
        returned.

    Returns:
      (logits [B, T, V] float32, updated cache or None), plus hidden states if asked.
    """
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    embedding = self.param(
        "embed", nn.with_logical_partitioning(_kernel(), ("vocab", "embed")),
        (cfg.vocab_size, cfg.hidden_size), dtype)
    x = embed_tokens(embedding, tokens, cfg)
    shared = shared_inputs(cfg, positions)
    layer_xs: dict[str, Array] = {"sliding": jnp.asarray(cfg.sliding_flags, dtype=bool)}
    if cache is not None:
      # Slots about to be written hold stale entries for this forward: hide them; the new keys
      # are attended as their own block.
      shared["k_pos"] = jax.lax.dynamic_update_slice(
          cache["pos"], jnp.full(positions.shape, -1, cache["pos"].dtype), (0, cache["index"]))
      layer_xs.update(k=cache["k"], v=cache["v"])

    block = Block
    if self.execution.remat != "none":
      # scan already keeps the recomputation from being merged back into the forward pass.
      block = nn.remat(Block, policy=_REMAT[self.execution.remat], prevent_cse=False)
    layers = nn.scan(
        block, variable_axes={"params": 0, LORA: 0}, split_rngs={"params": True},
        in_axes=(0, nn.broadcast), length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"})(cfg, self.lora_scale, self.execution,
                                                         name="layers")
    x, kv = layers(x, layer_xs, shared)

    scale = self.param(
        "final_norm", nn.with_logical_partitioning(
            nn.initializers.zeros if cfg.gemma else nn.initializers.ones, ("embed",)),
        (cfg.hidden_size,), dtype)
    x = rms_norm(x, scale, cfg.rms_norm_eps, cfg.gemma)
    head = None
    if not cfg.tie_embeddings:
      head = self.param("lm_head", nn.with_logical_partitioning(_kernel(), ("embed", "vocab")),
                        (cfg.hidden_size, cfg.vocab_size), dtype)
    new_cache = None
    if cache is not None:
      index = cache["index"]
      new_cache = {
          "k": jax.lax.dynamic_update_slice(cache["k"], kv["k"], (0, 0, 0, index, 0)),
          "v": jax.lax.dynamic_update_slice(cache["v"], kv["v"], (0, 0, 0, index, 0)),
          "pos": jax.lax.dynamic_update_slice(
              cache["pos"], positions.astype(cache["pos"].dtype), (0, index)),
          "index": index + tokens.shape[1]}
    if not compute_logits:
      return None, new_cache, x
    logits = output_logits(x, embedding if head is None else head, cfg)
    if return_hidden:
      return logits, new_cache, x
    return logits, new_cache
