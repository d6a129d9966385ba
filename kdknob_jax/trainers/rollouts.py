"""Rollouts of the teacher and their rewards, on the host side of the calibration step.

A rollout batch: P prompts from the train split in a seeded per-epoch order, G samples of
each from the current (adapted) teacher, graded by the task's verifier, laid out as the arrays
the jitted step reads (see `kdknob_jax.trainers.step`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from kdknob_jax.decode.engine import Generation
from kdknob_jax.diagnostics.traps import _bucket  # the scoring kernels' own row/length buckets
from kdknob_jax.hf.tokenizer import Tokenizer
from kdknob_jax.rl.rewards import completion_ids, text_logprobs


def data_indices(step: int, per_step: int, n_records: int, seed: int) -> np.ndarray:
  """The train rows of a step: positions step·P .. step·P + P − 1 of an endless stream that
  visits every row once per epoch in a seeded order, so a resumed run sees the same rows."""
  pos = np.arange(step * per_step, (step + 1) * per_step)
  epochs, offsets = pos // n_records, pos % n_records
  out = np.empty_like(pos)
  for e in np.unique(epochs):
    order = np.random.default_rng([seed, int(e)]).permutation(n_records)
    out[epochs == e] = order[offsets[epochs == e]]
  return out


@dataclasses.dataclass
class Rollouts:
  """One step's samples as host arrays (rows prompt-major, N = P·G real rows first).

  Attributes:
    arrays: the step's input arrays except log-probs and advantages (see `step.BATCH_FIELDS`).
    texts: [N] decoded completions.
    stopped: [N] ended on a stop token.
    lengths: [N] completion tokens.
    prompt_of: [N] index into the step's prompts.
  """
  arrays: dict[str, np.ndarray]
  texts: list[str]
  stopped: np.ndarray
  lengths: np.ndarray
  prompt_of: np.ndarray


def layout(prompt_ids: Sequence[Sequence[int]], gen: Generation, tokenizer: Tokenizer,
           row_multiple: int = 1, prompt_slots: int = 0, completion_slots: int = 0
           ) -> Rollouts:
  """Arrays for `predictor_hidden`-style scoring: prompts [P', S] run once, rows [N', T].

  P' and N' are padded to multiples of `row_multiple` (the data-parallel degree); S and T are
  at least `prompt_slots` and `completion_slots` (a run passes its largest, so that every step
  has one shape and compiles once) and bucketed; padding has position −1 and mask 0.
  """
  n_rows = gen.tokens.shape[0]
  p_pad = _bucket(len(prompt_ids), row_multiple)
  r_pad = _bucket(n_rows, row_multiple)
  s = _bucket(max(max(len(p) for p in prompt_ids), prompt_slots), 32)
  t = _bucket(max(int(gen.lengths.max()), completion_slots, 1), 16)
  prompts = np.zeros((p_pad, s), np.int32)
  prompt_pos = np.full((p_pad, s), -1, np.int32)
  for i, p in enumerate(prompt_ids):
    prompts[i, :len(p)] = p
    prompt_pos[i, :len(p)] = np.arange(len(p))
  owner = np.zeros(r_pad, np.int32)
  comps = np.zeros((r_pad, t), np.int32)
  comp_pos = np.full((r_pad, t), -1, np.int32)
  for r in range(n_rows):
    ln, p = int(gen.lengths[r]), int(gen.prompt_index[r])
    owner[r] = p
    comps[r, :ln] = gen.tokens[r, :ln]
    comp_pos[r, :ln] = len(prompt_ids[p]) + np.arange(ln)
  arrays = {"prompts": prompts, "prompt_pos": prompt_pos, "owner": owner,
            "completions": comps, "completion_pos": comp_pos,
            "mask": (comp_pos >= 0).astype(np.float32)}
  texts = [tokenizer.decode(gen.row_tokens(r)) for r in range(n_rows)]
  return Rollouts(arrays, texts, np.asarray(gen.stopped, bool), np.asarray(gen.lengths),
                  np.asarray(gen.prompt_index))


def target_logprobs(target, tokenizer: Tokenizer, prompts: Sequence[str], rollouts: Rollouts,
                    chat: bool | None, rows_per_call: int, prompt_slots: int = 0,
                    completion_slots: int = 0) -> np.ndarray:
  """log π_target(y|x) [N] of each completion's text, scored with the target's own tokenizer
  and prompt format. A completion with no text under that tokenizer (e.g. only special tokens,
  no stop) scores 0."""
  n = len(rollouts.texts)
  keep = [i for i in range(n)
          if completion_ids(tokenizer, rollouts.texts[i], bool(rollouts.stopped[i]))]
  out = np.zeros(n)
  if keep:
    out[keep] = text_logprobs(
        target, tokenizer, [prompts[int(rollouts.prompt_of[i])] for i in keep],
        [rollouts.texts[i] for i in keep], [bool(rollouts.stopped[i]) for i in keep],
        chat=chat, rows_per_call=rows_per_call, prompt_slots=prompt_slots,
        completion_slots=completion_slots)
  return out
