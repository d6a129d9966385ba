"""Smaller models derived from a loaded one, for experiments at embedded scale.

The two embedded models have different tokenizers, so a token-level pilot or distillation
between them is impossible. A student that shares a teacher's tokenizer is made here from the
teacher itself: its embeddings, its first layers, its final norm and head. Wherever such a
student is used the config says so ("student_layers").
"""

from __future__ import annotations

import dataclasses

import jax

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
  new = dict(params)
  new["layers"] = jax.tree_util.tree_map(lambda x: x[:keep], params["layers"])
  types = cfg.layer_types[:keep] if cfg.layer_types else ()
  return new, dataclasses.replace(cfg, num_layers=keep, layer_types=types)
