"""Our side of the comparison: teacher-forced logits and a cached greedy continuation."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdknob_jax.models import ModelConfig, forward, init_cache

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


@functools.partial(jax.jit, static_argnums=1, donate_argnums=4)
def _step(params, cfg: ModelConfig, tokens, positions, cache):
  logits, cache = forward(params, cfg, tokens, positions, cache)
  return logits, cache


def greedy(params: dict, cfg: ModelConfig, ids: Sequence[int], new_tokens: int) -> list[int]:
  """Greedy continuation of exactly `new_tokens` tokens: one prefill, then one-token steps."""
  tokens, positions = _padded(ids)
  cache = init_cache(cfg, 1, tokens.shape[1] + new_tokens)
  logits, cache = _step(params, cfg, tokens, positions, cache)
  nxt = int(jnp.argmax(logits[0, len(ids) - 1]))
  out = [nxt]
  for i in range(1, new_tokens):
    pos = np.array([[len(ids) + i - 1]], np.int32)
    logits, cache = _step(params, cfg, np.array([[nxt]], np.int32), pos, cache)
    nxt = int(jnp.argmax(logits[0, 0]))
    out.append(nxt)
  return out
