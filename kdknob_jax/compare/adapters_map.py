"""Our adapters and weights in PEFT's and HF's layouts and back (numpy only; no torch).

PEFT keeps one adapter per layer and projection as two `nn.Linear` weights, lora_A [r, in] and
lora_B [out, r], with the projection's input and output dims flattened. Ours stack the layers
and keep each projection's dims (`kdknob_jax.models.lora`): A [L, I..., r], B [L, r, O...].
Both flatten heads the same way (HF's q_proj output is heads-major, which is our (N, H)), so a
transpose and a reshape map one onto the other; the forward pass is x·W + (α/r)·(x·A)·B on
both sides.

Full weights map through the loader's own recipes (`kdknob_jax.hf.convert.recipes`): each is
a transpose/reshape of HF's tensor, linear, so gradients map by the same function.

Keys name one tensor of one layer in both layouts: "layers.{l}.{target}.{a|b}" for adapters,
"layers.{l}.{name}" or "{name}" for weights.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import numpy as np

from kdknob_jax.hf.convert import recipes
from kdknob_jax.models import ModelConfig
from kdknob_jax.models.lora import ATTENTION

# A PEFT adapter weight's name, as `named_parameters` of a PeftModel spells it.
_PEFT_NAME = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)\.lora_([AB])\.\w+\.weight$")


def adapter_key(layer: int, target: str, part: str) -> str:
  """The key of one layer's A or B ("a" / "b") of one target."""
  return f"layers.{layer}.{target}.{part}"


def peft_key(name: str) -> str | None:
  """The adapter key of a PEFT parameter name, or None when it is not an adapter weight."""
  m = _PEFT_NAME.search(name)
  return None if m is None else adapter_key(int(m.group(1)), m.group(2), m.group(3).lower())


def peft_module(target: str) -> str:
  """The HF submodule that holds a target projection ("self_attn" or "mlp")."""
  return "self_attn" if target in ATTENTION else "mlp"


def lora_to_peft(lora: dict) -> dict[str, np.ndarray]:
  """Our adapter tree → {key: PEFT weight}: A [r, in], B [out, r], float32."""
  out = {}
  for target, ab in lora["layers"].items():
    a, b = np.asarray(ab["a"], np.float32), np.asarray(ab["b"], np.float32)
    rank = a.shape[-1]
    for layer in range(a.shape[0]):
      out[adapter_key(layer, target, "a")] = np.ascontiguousarray(a[layer].reshape(-1, rank).T)
      out[adapter_key(layer, target, "b")] = np.ascontiguousarray(b[layer].reshape(rank, -1).T)
  return out


def lora_from_peft(tensors: Mapping[str, np.ndarray], like: dict) -> dict:
  """{key: PEFT weight} → our adapter tree, shaped like `like` (an adapter tree).

  Raises:
    KeyError: an adapter of `like` that `tensors` lacks.
  """
  layers = {}
  for target, ab in like["layers"].items():
    a_shape, b_shape = np.shape(ab["a"]), np.shape(ab["b"])
    a = [np.asarray(tensors[adapter_key(i, target, "a")]).T.reshape(a_shape[1:])
         for i in range(a_shape[0])]
    b = [np.asarray(tensors[adapter_key(i, target, "b")]).T.reshape(b_shape[1:])
         for i in range(b_shape[0])]
    layers[target] = {"a": np.stack(a), "b": np.stack(b)}
  return {"layers": layers}


def per_layer_adapters(lora: dict) -> dict[str, np.ndarray]:
  """Our adapter tree split into one array per key (our layout, one layer each)."""
  out = {}
  for target, ab in lora["layers"].items():
    for part in ("a", "b"):
      x = np.asarray(ab[part])
      for layer in range(x.shape[0]):
        out[adapter_key(layer, target, part)] = x[layer]
  return out


def params_from_hf(tensors: Mapping[str, np.ndarray], cfg: ModelConfig,
                   names: Iterable[str] | None = None) -> dict:
  """HF tensors (weights, or their gradients) → our param tree (layers stacked).

  Args:
    tensors: HF name → array; a tied head is absent (its weight is the embedding's).
    cfg: our config of the model.
    names: every HF name of the checkpoint (default: the keys of `tensors`).

  Raises:
    KeyError: a tensor the config needs that `tensors` lacks.
  """
  out: dict = {}
  for path, recipe in recipes(cfg, set(names if names is not None else tensors)).items():
    if recipe.stacked:
      x = np.stack([recipe.transform(np.asarray(tensors[hf])) for hf in recipe.hf_names])
    else:
      x = recipe.transform(np.asarray(tensors[recipe.hf_names[0]]))
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = np.ascontiguousarray(x)
  return out


def per_layer_params(params: dict) -> dict[str, np.ndarray]:
  """Our param tree split into one array per key (the layer axis taken apart)."""
  out = {}
  for name, x in params.items():
    if name == "layers":
      for sub, y in x.items():
        y = np.asarray(y)
        for layer in range(y.shape[0]):
          out[f"layers.{layer}.{sub}"] = y[layer]
    else:
      out[name] = np.asarray(x)
  return out
