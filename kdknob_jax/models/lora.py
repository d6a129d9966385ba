"""LoRA adapters on the stacked decoder weights, as plain pytrees.

For a target weight W of a layer, with input dims I and output dims O (e.g. q_proj maps
D → (N, H)), the adapter is A [L, I..., r] and B [L, r, O...], and the layer computes
x·W + (α / r)·(x·A)·B. B starts at zero, so the adapted model is exactly the base model until
the first update.

Training, scoring and sampling apply the adapter inside each projection (`adapted`: a view of
the base params with the adapters beside them, no copy of any weight); the base params alone
are the reference model, which the KL anchor needs. `merge` (W + (α/r)·A·B, one rounding to
W's dtype) is for export and for inference the user asks to merge.

Shapes use `ModelConfig`'s letters: L layers, D hidden, N heads, K kv heads, H head dim,
F MLP width, r the rank.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import string
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from kdknob_jax.sharding import mesh_context

Array = jax.Array

# How many leading dims (after the layer axis) of each target are its input dims.
INPUT_DIMS = {"q_proj": 1, "k_proj": 1, "v_proj": 1, "o_proj": 2, "gate_proj": 1,
              "up_proj": 1, "down_proj": 1}
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Rank, scale and targets of the adapters (the paper: r = 128, α = 128, all projections).

  Attributes:
    rank: r.
    alpha: the update is scaled by alpha / rank.
    targets: weight names among `INPUT_DIMS`.
  """
  rank: int = 128
  alpha: float = 128.0
  targets: tuple[str, ...] = ATTENTION + MLP

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f"LoRA rank must be >= 1, got {self.rank}.")
    unknown = sorted(set(self.targets) - set(INPUT_DIMS))
    if unknown or not self.targets:
      raise ValueError(f"LoRA targets {unknown or '()'} are not projections of the decoder; "
                       f"choose from {sorted(INPUT_DIMS)}.")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


# Where `adapted` puts the adapters in a params dict.
ADAPTER_KEY = "lora"


@flax.struct.dataclass
class Adapter:
  """Adapters beside a base model's params: `layers` {target: {"a", "b"}} and the static α/r."""
  layers: dict
  scale: float = flax.struct.field(pytree_node=False)


def adapted(params: dict, lora: dict | None, cfg: LoraConfig) -> dict:
  """The base params with the adapters beside them (applied, never merged, by `forward`);
  `lora=None` returns the base params unchanged. No weight is copied."""
  if lora is None:
    return params
  return dict(params, **{ADAPTER_KEY: Adapter(lora["layers"], cfg.scale)})


def init_lora(params: dict, cfg: LoraConfig, key: Array, dtype=jnp.float32) -> dict:
  """Adapters for the targets, initialized as PEFT does: A kaiming-uniform (a = √5, i.e.
  U(−1/√in_features, 1/√in_features)), B = 0.

  Args:
    params: the base model's params (only shapes are read).
    cfg: rank and targets.
    key: PRNG key for A.
    dtype: of the adapter params (float32 keeps small updates exact).

  Returns:
    {"layers": {name: {"a": A, "b": B}}}.
  """
  shapes = tuple((name, tuple(params["layers"][name].shape)) for name in cfg.targets)
  return _init_lora(key, shapes, cfg.rank, jnp.dtype(dtype))


# One compiled program for all the adapters: drawn op by op, each target's shapes cost XLA
# compiles of their own (about a second each on a 2-core CPU).
@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _init_lora(key: Array, shapes: tuple, rank: int, dtype) -> dict:
  out = {}
  keys = jax.random.split(key, len(shapes))
  for k, (name, shape) in zip(keys, shapes):
    n_in = INPUT_DIMS[name]
    in_shape, out_shape = shape[1:1 + n_in], shape[1 + n_in:]
    bound = math.prod(in_shape)**-0.5
    a = jax.random.uniform(k, (shape[0], *in_shape, rank), dtype, -bound, bound)
    out[name] = {"a": a, "b": jnp.zeros((shape[0], rank, *out_shape), dtype)}
  return {"layers": out}


def lora_axes(base_axes: dict, cfg: LoraConfig) -> dict:
  """Logical axes of the adapters: A keeps W's input axes, B its output axes; the rank axis is
  unsharded (it is small)."""
  out = {}
  for name in cfg.targets:
    axes = tuple(base_axes["layers"][name])
    n_in = INPUT_DIMS[name]
    out[name] = {"a": PartitionSpec(*axes[:1 + n_in], None),
                 "b": PartitionSpec(axes[0], None, *axes[1 + n_in:])}
  return {"layers": out}


def _delta(a: Array, b: Array, n_in: int) -> Array:
  """A·B over the rank axis: [L, I..., r] x [L, r, O...] -> [L, I..., O...]."""
  letters = string.ascii_lowercase
  ins, outs = letters[:n_in], letters[n_in:n_in + b.ndim - 2]
  return jnp.einsum(f"l{ins}r,lr{outs}->l{ins}{outs}", a, b,
                    preferred_element_type=jnp.float32)


def merge(params: dict, lora: dict | None, cfg: LoraConfig) -> dict:
  """The params with W + (α/r)·A·B for every adapted weight (W's dtype kept); `lora=None`
  returns the base params unchanged."""
  if lora is None:
    return params
  layers = dict(params["layers"])
  for name, ab in lora["layers"].items():
    w = layers[name]
    delta = _delta(ab["a"], ab["b"], INPUT_DIMS[name])
    layers[name] = (w.astype(jnp.float32) + cfg.scale * delta).astype(w.dtype)
  return dict(params, layers=layers)


@functools.partial(jax.jit, static_argnames=("lcfg", "mesh", "rules"))
def merged_params(base: dict, lora: dict, *, lcfg: LoraConfig, mesh=None, rules=()) -> dict:
  """`merge` as one jitted program under the mesh: merged weights for export."""
  with mesh_context(mesh, rules):
    return merge(base, lora, lcfg)


def count(lora: dict) -> int:
  """Number of trainable adapter parameters."""
  return int(sum(x.size for x in jax.tree_util.tree_leaves(lora)))


def targets_from_names(names: Sequence[str] | str) -> tuple[str, ...]:
  """Target names from a config value: "all", "attention", "mlp", or a comma list."""
  if isinstance(names, str):
    groups = {"all": ATTENTION + MLP, "attention": ATTENTION, "mlp": MLP}
    if names in groups:
      return groups[names]
    names = [n.strip() for n in names.split(",") if n.strip()]
  return tuple(names)
