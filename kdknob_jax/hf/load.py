"""Loading a model by name: config, params (optionally sharded on a mesh) and tokenizer."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

from kdknob_jax import sharding as sharding_lib
from kdknob_jax.errors import CheckpointMismatchError
from kdknob_jax.hf import gguf_file
from kdknob_jax.hf.convert import load_params
from kdknob_jax.hf.registry import ModelSource, resolve
from kdknob_jax.hf.sources import GGUFSource, SafetensorsSource
from kdknob_jax.hf.tokenizer import Tokenizer
from kdknob_jax.hf.tokenizer import load_tokenizer as _load_tokenizer
from kdknob_jax.models import ModelConfig, abstract_params, param_axes
from kdknob_jax.models.variants import VARIANTS


@dataclasses.dataclass
class LoadedModel:
  """A loaded model: `params` is a plain nested dict of jax arrays."""
  config: ModelConfig
  params: dict
  source: ModelSource
  hf_config: dict[str, Any]


def _as_source(name: str | os.PathLike | ModelSource) -> ModelSource:
  return name if isinstance(name, ModelSource) else resolve(name)


def read_hf_config(source: ModelSource, g: gguf_file.GGUFFile | None = None) -> dict[str, Any]:
  """The HF config dict of a model (from config.json, or derived from GGUF metadata)."""
  if source.kind == "gguf":
    g = g or gguf_file.GGUFFile(str(source.path), skip_arrays=(
        "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.scores",
        "tokenizer.ggml.token_type"))
    return gguf_file.hf_config(g)
  try:
    return json.loads((source.path / "config.json").read_text())
  except json.JSONDecodeError as e:
    raise CheckpointMismatchError(f"{source.path / 'config.json'} is not valid JSON: {e}") from e


def load_config(name: str | os.PathLike | ModelSource, dtype: str = "float32") -> ModelConfig:
  """The ModelConfig of a named model, reading no weights."""
  return ModelConfig.from_hf(read_hf_config(_as_source(name)), dtype=dtype)


def config_of(name: str, dtype: str = "float32") -> ModelConfig:
  """A model's config without its weights or files: the paper's variants table for its hub ids
  (so full-size configs plan and check on a laptop), else `load_config`."""
  if name in VARIANTS:
    return VARIANTS[name].config(dtype)
  return load_config(name, dtype=dtype)


def load_model(name: str | os.PathLike | ModelSource, dtype: str = "float32", mesh=None,
               rules: Sequence[tuple[str, object]] = sharding_lib.DEFAULT_RULES) -> LoadedModel:
  """Loads a model's weights into our param tree.

  Args:
    name: an embedded short name, a checkpoint directory, a .gguf path, or a cached hub id.
    dtype: "float32" or "bfloat16".
    mesh: optional `jax.sharding.Mesh`; params are then placed shard by shard per `rules`.
    rules: logical-axis to mesh-axis rules.

  Raises:
    ModelNotFoundError, UnsupportedModelError, CheckpointMismatchError: with the fix.
  """
  source = _as_source(name)
  if source.kind == "gguf":
    g = gguf_file.GGUFFile(str(source.path))
    hf = read_hf_config(source, g)
    cfg = ModelConfig.from_hf(hf, dtype=dtype)
    tensors = GGUFSource(g, hf)
  else:
    hf = read_hf_config(source)
    cfg = ModelConfig.from_hf(hf, dtype=dtype)
    tensors = SafetensorsSource(source.path)
  abstract = abstract_params(cfg)
  shardings = None
  if mesh is not None:
    shardings = sharding_lib.shardings_for(abstract, param_axes(cfg), mesh, rules)
  params = load_params(cfg, tensors, abstract, shardings)
  return LoadedModel(cfg, params, source, hf)


def load_tokenizer(name: str | os.PathLike | ModelSource) -> Tokenizer:
  """The tokenizer of a named model; EOS ids include the config's `eos_token_id` list."""
  source = _as_source(name)
  eos = read_hf_config(source).get("eos_token_id")
  extra = [eos] if isinstance(eos, int) else list(eos or [])
  return _load_tokenizer(source, extra)
