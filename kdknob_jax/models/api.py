"""Functional entry points over the linen decoder: params are plain nested dicts."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdknob_jax.models.config import ExecConfig, ModelConfig
from kdknob_jax.models.lora import ADAPTER_KEY, Adapter
from kdknob_jax.models.transformer import LORA, Decoder, head_spec, output_logits
from kdknob_jax.ops.head import HeadSpec


@functools.lru_cache(maxsize=None)
def decoder(cfg: ModelConfig, lora_scale: float = 1.0,
            execution: ExecConfig = ExecConfig()) -> Decoder:
  """The (stateless) module for a config, an adapter scale and an execution setting."""
  return Decoder(cfg, lora_scale, execution)


def _dummy_inputs():
  return jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, 1), jnp.int32)


def _boxed_shapes(cfg: ModelConfig):
  return jax.eval_shape(lambda: decoder(cfg).init(jax.random.PRNGKey(0), *_dummy_inputs()))


def abstract_params(cfg: ModelConfig) -> dict:
  """Params as a nested dict of `jax.ShapeDtypeStruct`, computed without allocating."""
  return nn.unbox(_boxed_shapes(cfg))["params"]


def param_axes(cfg: ModelConfig) -> dict:
  """The logical axis names of every param: a nested dict of `PartitionSpec`s."""
  return nn.get_partition_spec(_boxed_shapes(cfg))["params"]


def param_count(cfg: ModelConfig) -> int:
  """Number of parameters (tied embeddings counted once)."""
  leaves = jax.tree_util.tree_leaves(abstract_params(cfg))
  return int(sum(int(np.prod(x.shape)) for x in leaves))


def init_params(cfg: ModelConfig, rng: jax.Array) -> dict:
  """Randomly initialized params (for tests and benchmarks with random weights)."""
  return _init(cfg, rng)


@functools.partial(jax.jit, static_argnums=0)
def _init(cfg: ModelConfig, rng: jax.Array) -> dict:
  # One compiled program: run op by op, flax's init compiles each initializer's ops for each
  # shape (seconds for a 3-layer model, every time).
  return nn.unbox(decoder(cfg).init(rng, *_dummy_inputs()))["params"]


def forward(params: dict, cfg: ModelConfig, tokens: jax.Array, positions: jax.Array | None = None,
            cache: dict | None = None, return_hidden: bool = False, compute_logits: bool = True,
            execution: ExecConfig = ExecConfig()):
  """Runs the decoder. See `Decoder.__call__`; positions default to 0..T-1 for every row.

  `params` may carry LoRA adapters (`kdknob_jax.models.lora.adapted`): they are applied
  inside each projection, never merged. `execution` picks rematerialization and the attention
  form (the result is the same).
  """
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  variables = {"params": params}
  adapter: Adapter | None = params.get(ADAPTER_KEY)
  scale = 1.0
  if adapter is not None:
    variables = {"params": {k: v for k, v in params.items() if k != ADAPTER_KEY},
                 LORA: {"layers": adapter.layers}}
    scale = adapter.scale
  return decoder(cfg, scale, execution).apply(variables, tokens, positions, cache,
                                              return_hidden, compute_logits)


def head_of(params: dict, cfg: ModelConfig) -> tuple[jax.Array, HeadSpec]:
  """A model's output weight (the embedding when tied, else the LM head) and its `HeadSpec`."""
  weight = params["embed"] if cfg.tie_embeddings else params["lm_head"]
  return weight, head_spec(cfg)


def logits_from_hidden(params: dict, cfg: ModelConfig, hidden: jax.Array) -> jax.Array:
  """Float32 logits [B, T, V] of final-normed hidden states [B, T, D] (from `forward` with
  `return_hidden` or `compute_logits=False`)."""
  return output_logits(hidden, head_of(params, cfg)[0], cfg)
