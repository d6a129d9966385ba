"""Our side of the comparison: teacher-forced logits, and greedy continuations by the decoder."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import numpy as np

from kdknob_jax.decode import GREEDY, Sampler
from kdknob_jax.models import ModelConfig, forward

_BUCKET = 16  # sequences are padded to a multiple of this, so few lengths compile


def _padded(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded tokens [B, L] and positions [B, L] (-1 on padding, masked everywhere)."""
  length = -(-max(len(s) for s in seqs) // _BUCKET) * _BUCKET
  tokens = np.zeros((len(seqs), length), np.int32)
  positions = np.full((len(seqs), length), -1, np.int32)
  for b, ids in enumerate(seqs):
    tokens[b, :len(ids)] = ids
    positions[b, :len(ids)] = np.arange(len(ids))
  return tokens, positions


@functools.partial(jax.jit, static_argnums=1)
def _logits(params, cfg: ModelConfig, tokens, positions):
  return forward(params, cfg, tokens, positions)[0]


def batch_logits(params: dict, cfg: ModelConfig, seqs: Sequence[Sequence[int]]) -> list[
    np.ndarray]:
  """Float32 logits [T_b, V] of each sequence, all computed in one padded forward (one compile
  for the batch, where a call per sequence compiled each bucketed length)."""
  tokens, positions = _padded(seqs)
  out = np.asarray(_logits(params, cfg, tokens, positions))
  return [out[b, :len(ids)] for b, ids in enumerate(seqs)]


def batch_greedy(params: dict, cfg: ModelConfig, prompts: Sequence[Sequence[int]],
                 new_tokens: int) -> list[list[int]]:
  """Greedy continuations of exactly `new_tokens` tokens (no stop ids) of every prompt, in one
  padded batch of the decoder (its output does not depend on batch mates: tests/test_decode)."""
  gen = Sampler(cfg)(params, [list(p) for p in prompts], max_new_tokens=new_tokens,
                     sampling=GREEDY)
  return [gen.row_tokens(b) for b in range(len(prompts))]

