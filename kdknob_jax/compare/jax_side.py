"""Our side of the comparison: teacher-forced logits, and greedy continuations by the decoder."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import numpy as np

from kdknob_jax.decode import GREEDY, Sampler
from kdknob_jax.models import ModelConfig, forward

_BUCKET = 16  # prompts are padded to a multiple of this, so few lengths compile


def _padded(ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  length = -(-len(ids) // _BUCKET) * _BUCKET
  tokens = np.zeros((1, length), np.int32)
  positions = np.full((1, length), -1, np.int32)  # -1: padding, masked everywhere
  tokens[0, :len(ids)] = ids
  positions[0, :len(ids)] = np.arange(len(ids))
  return tokens, positions


@functools.partial(jax.jit, static_argnums=1)
def _logits(params, cfg: ModelConfig, tokens, positions):
  return forward(params, cfg, tokens, positions)[0]


def logits(params: dict, cfg: ModelConfig, ids: Sequence[int]) -> np.ndarray:
  """Float32 logits [T, V] of one sequence."""
  tokens, positions = _padded(ids)
  return np.asarray(_logits(params, cfg, tokens, positions))[0, :len(ids)]


def greedy(params: dict, cfg: ModelConfig, ids: Sequence[int], new_tokens: int) -> list[int]:
  """Greedy continuation of exactly `new_tokens` tokens (no stop ids), by the batched decoder."""
  gen = Sampler(cfg)(params, [list(ids)], max_new_tokens=new_tokens, sampling=GREEDY)
  return gen.row_tokens(0)
