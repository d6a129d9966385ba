"""Smaller models derived from a loaded one, for experiments at embedded scale.

The two embedded models have different tokenizers, so a token-level pilot or distillation
between them is impossible. A student that shares a teacher's tokenizer is made here from the
teacher itself: its embeddings, its first layers, its final norm and head. Wherever such a
student is used the config says so ("student_layers").
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from kdknob_jax.errors import ConfigError
from kdknob_jax.models.config import ModelConfig


def first_layers(params: dict, cfg: ModelConfig, keep: int) -> tuple[dict, ModelConfig]:
  """The model made of the first `keep` decoder layers (embeddings, final norm and head kept).

  Args:
    params: the full model's params (layers stacked on a leading [L] axis).
    cfg: its config.
    keep: how many layers to keep, 1..num_layers.

  Returns:
    (params, config) of the smaller model; the arrays are slices, not copies, until written.
  """
  if not 1 <= keep <= cfg.num_layers:
    raise ValueError(f"keep must be in 1..{cfg.num_layers} (the model's layers), got {keep}.")
  return keep_layers(params, cfg, range(keep))


def keep_layers(params: dict, cfg: ModelConfig, indices: Sequence[int]) -> tuple[dict, ModelConfig]:
  """The model made of the listed decoder layers, in order (embeddings, final norm, head kept).

  Dropping a block of middle layers keeps a model coherent where cutting its top does not (the
  final layers expect the representation the middle ones built), so this is the general form.

  Args:
    params: the full model's params (layers stacked on a leading [L] axis).
    cfg: its config.
    indices: distinct layer indices in 0..num_layers − 1.

  Returns:
    (params, config) of the smaller model.
  """
  idx = [int(i) for i in indices]
  if not idx or len(set(idx)) != len(idx) or not all(0 <= i < cfg.num_layers for i in idx):
    raise ValueError(f"indices must be distinct layers in 0..{cfg.num_layers - 1}, got {idx}.")
  new = dict(params)
  if idx == list(range(len(idx))):  # a prefix: slices, no copy until written
    new["layers"] = jax.tree_util.tree_map(lambda x: x[:len(idx)], params["layers"])
  else:
    take = np.asarray(idx)
    new["layers"] = jax.tree_util.tree_map(lambda x: x[take], params["layers"])
  types = tuple(cfg.layer_types[i] for i in idx) if cfg.layer_types else ()
  return new, dataclasses.replace(cfg, num_layers=len(idx), layer_types=types)


def parse_keep(spec: str, num_layers: int) -> tuple[int, ...]:
  """Layer indices from "0-14,21-29" (inclusive ranges and single indices); "" is all.

  Raises:
    ConfigError: a malformed range, an index outside 0..num_layers−1, or a repeat.
  """
  if not str(spec).strip():
    return tuple(range(num_layers))
  out = []
  for part in str(spec).split(","):
    lo, _, hi = part.strip().partition("-")
    try:
      a, b = int(lo), int(hi or lo)
    except ValueError as e:
      raise ConfigError(f"config.student_keep {spec!r}: {part!r} is not an index or a range "
                        "like 0-14.") from e
    out.extend(range(a, b + 1))
  bad = [i for i in out if not 0 <= i < num_layers]
  if bad or len(set(out)) != len(out) or not out:
    raise ConfigError(f"config.student_keep {spec!r} must list distinct layers in "
                      f"0..{num_layers - 1} (the student's layers), in order.")
  return tuple(out)
