"""Teacher-forced scoring of completions, the routine the pilot, the calibration rewards and
both trainers share: each distinct prompt runs once and its KV cache is gathered for every
completion that continues it; the head then runs over chunks of rows, so no [R·C, V] logits are
held at once.

Shapes: P prompts, S prompt slots, R completion rows, C completion slots, D hidden, V
vocabulary. Padding has position −1 (the decoder never attends to it).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from kdknob_jax.models.api import forward, head_of
from kdknob_jax.models.cache import init_cache
from kdknob_jax.models.config import ExecConfig, ModelConfig
from kdknob_jax.ops.head import HeadSpec, auto_chunk, chunk_rows, head_logits, unchunk_rows
from kdknob_jax.ops.kl import log_probs

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("cfg", "execution"))
def predictor_hidden(params: dict, cfg: ModelConfig, prompts: Array, prompt_pos: Array,
                      owner: Array, completions: Array, completion_pos: Array,
                      execution: ExecConfig = ExecConfig()) -> Array:
  """Final hidden states [R, C, D] that predict each completion token.

  Each distinct prompt [P] is run once; its cache is then gathered for every completion row
  that continues it (`owner` [R] picks the prompt row), and the completions [R, C] run on top.
  Completion token j is predicted by hidden state j − 1, and token 0 by the prompt's last one.
  `execution` sets rematerialization and the attention form of both passes.
  """
  cache = init_cache(cfg, prompts.shape[0], prompts.shape[1] + completions.shape[1])
  _, cache, hp = forward(params, cfg, prompts, prompt_pos, cache, compute_logits=False,
                         execution=execution)
  last = jnp.maximum(jnp.max(prompt_pos, axis=1), 0)  # the last real prompt position
  h_last = hp[owner, last[owner]]
  cache = {"k": jnp.take(cache["k"], owner, axis=1), "v": jnp.take(cache["v"], owner, axis=1),
           "pos": cache["pos"][owner], "index": cache["index"]}
  _, _, hc = forward(params, cfg, completions, completion_pos, cache, compute_logits=False,
                     execution=execution)
  return jnp.concatenate([h_last[:, None], hc[:, :-1]], axis=1)


def round_up(n: int, step: int) -> int:
  """n rounded up to a multiple of `step`, at least `step` (the scoring arrays' slot sizes)."""
  return max(step, -(-n // step) * step)


def prompt_slot_count(longest: int, fixed: int = 0) -> int:
  """Prompt slots S of a scoring batch whose longest prompt has `longest` tokens.

  A run that fixes its slots (`fixed` ≥ longest: its longest prompt) has one shape whatever the
  bucket, so it pads only to a multiple of 8; otherwise S is bucketed by 32, so batches of
  varied prompts share few compiled shapes.
  """
  if fixed >= longest:
    return round_up(fixed, 8)
  return round_up(longest, 32)


def call_rows(n: int, rows_per_call: int) -> int:
  """Rows of each scoring call for n sequences: `rows_per_call`, or the power of two that holds
  all n when that is fewer, so a small batch is not padded to a large call (every padded row
  costs a full row's forward and head)."""
  if rows_per_call < 1:
    raise ValueError(f"rows_per_call must be >= 1, got {rows_per_call}.")
  return min(rows_per_call, 1 << max(n - 1, 0).bit_length())


def pack_calls(sequences, rows_per_call: int) -> list[list[tuple[tuple[int, ...], list[int]]]]:
  """Groups sequences by prompt and packs the groups into calls of at most rows_per_call
  completions (a larger group is split), so each prompt is run once per call."""
  groups: dict[tuple[int, ...], list[int]] = {}
  for i, (p, _) in enumerate(sequences):
    groups.setdefault(tuple(int(t) for t in p), []).append(i)
  calls, current, used = [], [], 0
  for prompt, members in groups.items():
    for start in range(0, len(members), rows_per_call):
      piece = members[start:start + rows_per_call]
      if used + len(piece) > rows_per_call:
        calls.append(current)
        current, used = [], 0
      current.append((prompt, piece))
      used += len(piece)
  if current:
    calls.append(current)
  return calls


def call_arrays(call, sequences, rows_per_call: int, prompt_slots: int = 0,
                completion_slots: int = 0) -> tuple[list[int], tuple[np.ndarray, ...]]:
  """The padded arrays of one packed call (see `pack_calls`) for `predictor_hidden`.

  Returns:
    (the sequence indices in row order, (prompts [R', P], prompt positions, owner [R],
    completions [R, C], completion positions)), where padding has position -1, P and C are
    bucketed (at least `prompt_slots` and `completion_slots`: a caller that passes its
    largest sizes gets one compiled shape), R' is a power of two and R = rows_per_call.
  """
  members = [i for _, piece in call for i in piece]
  n_prompts = 1 << (len(call) - 1).bit_length()  # powers of two: few compiled shapes
  p_len = prompt_slot_count(max(len(p) for p, _ in call), prompt_slots)
  c_len = round_up(max(max(len(sequences[i][1]) for i in members), completion_slots), 16)
  prompts = np.zeros((n_prompts, p_len), np.int32)
  prompt_pos = np.full((n_prompts, p_len), -1, np.int32)
  owner = np.zeros(rows_per_call, np.int32)
  comps = np.zeros((rows_per_call, c_len), np.int32)
  comp_pos = np.full((rows_per_call, c_len), -1, np.int32)
  row = 0
  for r, (prompt, piece) in enumerate(call):
    prompts[r, :len(prompt)] = prompt
    prompt_pos[r, :len(prompt)] = np.arange(len(prompt))
    for i in piece:
      c = sequences[i][1]
      owner[row] = r
      comps[row, :len(c)] = c
      comp_pos[row, :len(c)] = len(prompt) + np.arange(len(c))
      row += 1
  return members, (prompts, prompt_pos, owner, comps, comp_pos)


@functools.partial(jax.jit, static_argnames=("spec", "chunk"))
def realized_from_hidden(hidden: Array, weight: Array, tokens: Array, *, spec: HeadSpec,
                         chunk: int) -> Array:
  """Float32 log-probs [N] of tokens [N] from hidden states [N, D], chunk by chunk over N."""
  def one(xs):
    h, t = xs
    lp = log_probs(head_logits(h, weight, spec))
    return jnp.take_along_axis(lp, t[:, None], axis=1)[:, 0]

  out = jax.lax.map(one, (chunk_rows(hidden, chunk), chunk_rows(tokens.astype(jnp.int32), chunk)))
  return unchunk_rows(out, hidden.shape[0])


def completion_logp(params: dict, cfg: ModelConfig, batch: dict[str, Array], chunk: int,
                    execution: ExecConfig = ExecConfig(), temperature: float = 1.0) -> Array:
  """Float32 log-probs [N, T] of every completion token under `params` (0 on padding).

  The head runs over chunks of rows under `jax.checkpoint`, so the backward pass holds one
  chunk's [chunk, V] logits at a time; `execution` sets the decoder's rematerialization and
  attention form; the log-probs are those of logits / `temperature` (after any softcap, as a
  sampler divides them).
  """
  hidden = predictor_hidden(params, cfg, batch["prompts"], batch["prompt_pos"], batch["owner"],
                            batch["completions"], batch["completion_pos"], execution)
  n, t, d = hidden.shape
  weight, spec = head_of(params, cfg)

  @jax.checkpoint
  def one(xs):
    h, tok = xs
    logits = head_logits(h, weight, spec)
    lp = log_probs(logits if temperature == 1.0 else logits / temperature)
    return jnp.take_along_axis(lp, tok[:, None], axis=1)[:, 0]

  rows = n * t
  c = chunk or auto_chunk(rows, cfg.vocab_size)
  out = jax.lax.map(one, (chunk_rows(hidden.reshape(rows, d), c),
                          chunk_rows(batch["completions"].reshape(rows).astype(jnp.int32), c)))
  lp = unchunk_rows(out, rows).reshape(n, t)
  return jnp.where(batch["completion_pos"] >= 0, lp, 0.0)
