"""A decode step over per-layer arrays: the layout a sampler's loop runs fastest on XLA:CPU.

The scanned `Decoder` keeps every per-layer weight and the KV cache stacked on a leading
`layers` axis. In a decode loop XLA:CPU then copies each layer's slice of those stacks before
its matmuls, every step: all the weights and the whole cache, read and written once more
(about a quarter of a SmolLM2 step on a 2-core CPU, by a profile of the step). Here the stacks
are cut into per-layer arrays once per call (`split_params`, `split_cache`), and a step runs
the same `Block` on them layer by layer. The prompts' keys and values are kept once per prompt
and only read: the n samples of a prompt attend to them in one dot
(`shared_prefix_attention`), reading them once instead of n times. Each row's own cache, of
its new tokens, is written first and then read whole, so its update is in place. Keys are
kept transposed, [B, K, H, S]: at one query per row XLA:CPU's score dot is about 6x faster
on that layout than on [B, K, S, H].

The math is `Decoder`'s (the same `Block`, embedding, norms and head); only the program's
layout differs, and the tests hold the two to the same tokens and log-probs. The price: the
per-layer weights are a copy of the stacked ones for the call's life, and the program grows
with depth (its compile time too).

Einsum letters: see `ModelConfig`; L layers.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdknob_jax.models.config import ExecConfig, ModelConfig
from kdknob_jax.models.lora import ADAPTER_KEY
from kdknob_jax.models.transformer import LORA, Block, embed_tokens, output_logits, shared_inputs
from kdknob_jax.ops.layers import rms_norm

Array = jax.Array

# Logical axes of one layer's cache in this layout (prompt and own blocks alike).
SPLIT_CACHE_AXES = {"kt": ("batch", "kv_heads", "head_dim", "cache_length"),
                    "v": ("batch", "kv_heads", "cache_length", "head_dim")}
SPLIT_CACHE_AXES.update(prompt_kt=SPLIT_CACHE_AXES["kt"], prompt_v=SPLIT_CACHE_AXES["v"])


def split_params(params: dict, cfg: ModelConfig) -> dict:
  """`params` with `layers` (and the adapters' layers) as lists of L per-layer dicts.

  Args:
    params: a model's params, with or without adapters beside them (`lora.adapted`).
    cfg: its config.

  Returns:
    The top-level params as they are, `layers` a list, and with adapters `adapters` (a list)
    and `lora_scale`.
  """
  def cut(tree):
    return [jax.tree_util.tree_map(lambda a, i=i: a[i], tree) for i in range(cfg.num_layers)]

  out = {k: v for k, v in params.items() if k not in ("layers", ADAPTER_KEY)}
  out["layers"] = cut(params["layers"])
  adapter = params.get(ADAPTER_KEY)
  if adapter is not None:
    out["adapters"] = cut(adapter.layers)
    out["lora_scale"] = adapter.scale
  return out


def constrain_split_cache(cache: dict) -> dict:
  """The per-layer cache with its logical sharding constraints (batch and heads split)."""
  return dict(cache, **{name: [nn.with_logical_constraint(a, SPLIT_CACHE_AXES[name])
                               for a in cache[name]] for name in SPLIT_CACHE_AXES})


def split_cache(prompt_cache: dict, n: int, slots: int) -> dict:
  """The decode loop's cache from a prefilled stacked one (`init_cache`, prompts only).

  Args:
    prompt_cache: the prefill's cache of B prompts over P slots.
    n: rows per prompt (its samples); row r continues prompt r // n.
    slots: S, the rows' own slots for their new tokens.

  Returns:
    `prompt_kt` (L arrays [B, K, H, P], keys transposed), `prompt_v` (L arrays [B, K, P, H]),
    `prompt_pos` [B, P]; the rows' own `kt` [R, K, H, S], `v` [R, K, S, H] and `pos` [R, S]
    (empty: position -1), and `index` 0, the next own slot to write.
  """
  k, v = prompt_cache["k"], prompt_cache["v"]
  layers, b, kv, _, h = k.shape
  r = b * n
  out = {"prompt_kt": [jnp.swapaxes(a, 2, 3) for a in k], "prompt_v": list(v),
         "prompt_pos": prompt_cache["pos"],
         "kt": [jnp.zeros((r, kv, h, slots), k.dtype) for _ in range(layers)],
         "v": [jnp.zeros((r, kv, slots, h), v.dtype) for _ in range(layers)],
         "pos": jnp.full((r, slots), -1, jnp.int32), "index": jnp.zeros((), jnp.int32)}
  return constrain_split_cache(out)


def step(split: dict, cfg: ModelConfig, tokens: Array, positions: Array, cache: dict,
         execution: ExecConfig = ExecConfig()) -> tuple[Array, dict]:
  """`forward` with a cache, on the `split_params` and `split_cache` layouts.

  Args:
    split: from `split_params` (the LoRA scale travels in it).
    cfg: the model config.
    tokens: int [B, T].
    positions: int [B, T] absolute positions, negative for padding or finished rows.
    cache: from `split_cache` (B here is its R); `index` is the own slot where these T
      tokens are written.
    execution: settings of the layers (the attention here is always the dense form).

  Returns:
    (logits [B, T, V] float32, the updated cache in the same layout).
  """
  index = cache["index"]
  pos = jax.lax.dynamic_update_slice(cache["pos"], positions.astype(cache["pos"].dtype),
                                     (0, index))
  n = tokens.shape[0] // cache["prompt_pos"].shape[0]
  shared = dict(shared_inputs(cfg, positions), k_pos=pos, slot=index,
                prompt_k_pos=jnp.repeat(cache["prompt_pos"], n, axis=0))
  x = embed_tokens(split["embed"], tokens, cfg)
  block = Block(cfg, split.get("lora_scale", 1.0), execution)
  adapters = split.get("adapters")
  new = {"kt": [], "v": []}
  for i, layer_params in enumerate(split["layers"]):
    variables = {"params": layer_params}
    if adapters is not None:
      variables[LORA] = adapters[i]
    layer = {"sliding": jnp.asarray(cfg.sliding_flags[i]),
             **{name: cache[name][i] for name in SPLIT_CACHE_AXES}}
    x, kv = block.apply(variables, x, layer, shared)
    new["kt"].append(kv["kt"])
    new["v"].append(kv["v"])
  x = rms_norm(x, split["final_norm"], cfg.rms_norm_eps, cfg.gemma)
  head = split["embed"] if cfg.tie_embeddings else split["lm_head"]
  new_cache = constrain_split_cache(dict(cache, kt=new["kt"], v=new["v"], pos=pos,
                                          index=index + tokens.shape[1]))
  return output_logits(x, head, cfg), new_cache
