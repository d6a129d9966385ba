"""Hugging Face tensor names and layouts to our param tree, and placement onto devices.

Each of our params has a recipe: the HF tensors it is made of (one per layer for stacked
params) and a transform from HF's `nn.Linear` layout ([out, in]) to ours (einsum letters).
Placement builds each device's shard from the host arrays with `make_array_from_callback`, so a
mesh never holds a full copy of a sharded weight per device.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from kdknob_jax.errors import CheckpointMismatchError
from kdknob_jax.models.config import ModelConfig

# Prefixes under which checkpoints keep the text decoder: plain causal LMs, multimodal Gemma-3
# saved by transformers 4.x, and by transformers 5.
_DECODER_PREFIXES = ("model.", "language_model.model.", "model.language_model.")
_HEAD_NAMES = ("lm_head.weight", "language_model.lm_head.weight")


class TensorSource(Protocol):
  """Read access to a checkpoint's tensors by HF name."""

  def names(self) -> set[str]:
    ...

  def get(self, name: str) -> np.ndarray:
    ...


@dataclasses.dataclass(frozen=True)
class Recipe:
  hf_names: tuple[str, ...]  # one name, or one per layer for stacked params
  transform: Callable[[np.ndarray], np.ndarray]
  stacked: bool


def _identity(w):
  return w


def _layer_recipes(cfg: ModelConfig) -> dict[str, tuple[str, Callable]]:
  d, n, kv, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  out = {
      "q_proj": ("self_attn.q_proj.weight", lambda w: w.T.reshape(d, n, h)),  # [NH, D] -> DNH
      "k_proj": ("self_attn.k_proj.weight", lambda w: w.T.reshape(d, kv, h)),
      "v_proj": ("self_attn.v_proj.weight", lambda w: w.T.reshape(d, kv, h)),
      "o_proj": ("self_attn.o_proj.weight", lambda w: w.T.reshape(n, h, d)),  # [D, NH] -> NHD
      "gate_proj": ("mlp.gate_proj.weight", lambda w: w.T),  # [F, D] -> DF
      "up_proj": ("mlp.up_proj.weight", lambda w: w.T),
      "down_proj": ("mlp.down_proj.weight", lambda w: w.T),  # [D, F] -> FD
      "input_norm": ("input_layernorm.weight", _identity),
  }
  if cfg.qk_norm:
    out["q_norm"] = ("self_attn.q_norm.weight", _identity)
    out["k_norm"] = ("self_attn.k_norm.weight", _identity)
  if cfg.gemma:
    out["post_attn_norm"] = ("post_attention_layernorm.weight", _identity)
    out["pre_mlp_norm"] = ("pre_feedforward_layernorm.weight", _identity)
    out["post_mlp_norm"] = ("post_feedforward_layernorm.weight", _identity)
  else:
    out["pre_mlp_norm"] = ("post_attention_layernorm.weight", _identity)
  return out


def _find_prefix(names: set[str]) -> str:
  for prefix in _DECODER_PREFIXES:
    if prefix + "embed_tokens.weight" in names:
      return prefix
  raise CheckpointMismatchError(
      "No embedding tensor found (looked for "
      f"{[p + 'embed_tokens.weight' for p in _DECODER_PREFIXES]}); this does not look like a "
      "Llama/Qwen3/Gemma-3 causal LM checkpoint.")


def recipes(cfg: ModelConfig, names: set[str]) -> dict[tuple[str, ...], Recipe]:
  """Recipes keyed by our param path, for a checkpoint with these tensor names."""
  prefix = _find_prefix(names)
  out = {
      ("embed",): Recipe((prefix + "embed_tokens.weight",), _identity, False),
      ("final_norm",): Recipe((prefix + "norm.weight",), _identity, False),
  }
  if not cfg.tie_embeddings:
    head = next((h for h in _HEAD_NAMES if h in names), _HEAD_NAMES[0])
    out[("lm_head",)] = Recipe((head,), lambda w: w.T, False)  # [V, D] -> DV
  for ours, (theirs, fn) in _layer_recipes(cfg).items():
    layer_names = tuple(f"{prefix}layers.{i}.{theirs}" for i in range(cfg.num_layers))
    out[("layers", ours)] = Recipe(layer_names, fn, True)
  return out


def _flatten(tree: Mapping, prefix=()) -> dict[tuple[str, ...], object]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflatten(flat: Mapping[tuple[str, ...], object]) -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return out


def check_tensors(cfg: ModelConfig, source: TensorSource, abstract: Mapping) -> dict:
  """Validates names and shapes of every tensor a config needs, before reading any data.

  Returns:
    the recipes keyed by param path.

  Raises:
    CheckpointMismatchError: missing tensors, or a tensor whose shape contradicts the config.
  """
  names = source.names()
  plan = recipes(cfg, names)
  missing = [n for r in plan.values() for n in r.hf_names if n not in names]
  if missing:
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    raise CheckpointMismatchError(f"Checkpoint lacks tensors the config needs: {missing[:5]}"
                                  f"{more}. Is config.json from the same model as the weights?")
  flat_abstract = _flatten(abstract)
  if set(plan) != set(flat_abstract):
    raise CheckpointMismatchError(f"Param paths differ: {sorted(set(plan) ^ set(flat_abstract))}")
  return plan


def _host_param(recipe: Recipe, source: TensorSource, layers: range | None = None) -> np.ndarray:
  if not recipe.stacked:
    return recipe.transform(source.get(recipe.hf_names[0]))
  idx = layers if layers is not None else range(len(recipe.hf_names))
  return np.stack([recipe.transform(source.get(recipe.hf_names[i])) for i in idx])


def _checked(path, arr: np.ndarray, want_shape, hf_names) -> np.ndarray:
  if tuple(arr.shape) != tuple(want_shape):
    raise CheckpointMismatchError(
        f"Tensor {hf_names[0]} gives param {'/'.join(path)} shape {tuple(arr.shape)}, but the "
        f"config implies {tuple(want_shape)}. The weights and config.json disagree.")
  return arr


def load_params(cfg: ModelConfig, source: TensorSource, abstract: Mapping,
                shardings: Mapping | None = None) -> dict:
  """Reads, converts and places every param.

  Args:
    cfg: the model config (its dtype is the params' dtype).
    source: the checkpoint's tensors.
    abstract: `abstract_params(cfg)`, for expected shapes.
    shardings: optional tree of `NamedSharding`s like `abstract`; each device then receives
      only its shard, built per layer from host arrays.

  Returns:
    The nested-dict param tree.
  """
  plan = check_tensors(cfg, source, abstract)
  flat_abstract = _flatten(abstract)
  flat_shard = _flatten(shardings) if shardings is not None else {}
  dtype = jnp.dtype(cfg.dtype)
  out = {}
  for path, recipe in plan.items():
    want = flat_abstract[path].shape
    sharding = flat_shard.get(path)
    if sharding is None:
      host = _checked(path, _host_param(recipe, source), want, recipe.hf_names)
      out[path] = jnp.asarray(host.astype(dtype))
      continue
    # Validate one (layer's) tensor up front: a mismatch then fails before any device work.
    _checked(path, recipe.transform(source.get(recipe.hf_names[0])),
             want[1:] if recipe.stacked else want, recipe.hf_names)

    def shard(index, recipe=recipe):
      if recipe.stacked:
        layers = range(*index[0].indices(len(recipe.hf_names)))
        return _host_param(recipe, source, layers)[(slice(None),) + tuple(index[1:])].astype(dtype)
      return _host_param(recipe, source)[index].astype(dtype)

    out[path] = jax.make_array_from_callback(tuple(want), sharding, shard)
  return _unflatten(out)
