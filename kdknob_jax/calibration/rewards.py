"""The calibration reward (paper Eq. 8): r_cal = log π_target(y|x) − log π_teacher(y|x).

Each model scores x and y in its own prompt format, so the target may have another vocabulary
than the teacher. Boundary rules, the same for every model: the prompt is rendered and encoded
by the model's own `Tokenizer.encode_prompt` (chat template, or plain text with the BOS its
config asks for); only completion tokens are summed.

- Same vocabulary (`same_vocabulary`: identical token -> id maps): the target scores exactly
  the ids the teacher sampled, its stop token included (`ids_logprobs`). Re-encoding decoded
  text would change non-canonical tokenizations and the bytes of a UTF-8 character cut at
  max_new_tokens, so the two models would score different sequences.
- Other vocabularies: the completion *text* is encoded with no special tokens; a completion
  that ended on a stop token then gets the model's own end: the tokens its chat template closes
  an assistant turn with, through the first special one (Gemma-3 `<end_of_turn>`, Qwen3
  `<|im_end|>`, Llama-3 `<|eot_id|>`), or its first EOS id for a plain-text prompt
  (`kdknob_jax.hf.tokenizer.end_ids`). The newline templates write after that token is not
  scored: the model stops at the token and never produces it.
- A completion the target cannot score (no text under its tokenizer and no stop, e.g. only
  special tokens until max_new_tokens) has no log π_target; 0 there would make r_cal =
  −log π_teacher > 0, a bonus. Such a row instead gets the worst r_cal of the scored rows of
  its group under the run's λ (the lowest for λ > 0, the highest for λ < 0, since A adds
  λ·norm(r_cal)), else of the batch, else 0 (`worst_for_unscored`): a tie with the group's
  least rewarded rollout, so it is never preferred to one the target did score whichever way
  λ pushes (no loophole of producing unscoreable text), and scale-free, unlike a fixed penalty.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from kdknob_jax.hf.tokenizer import Tokenizer, completion_ids, uses_chat
from kdknob_jax.models import ModelConfig, head_of
from kdknob_jax.models.scoring import (call_arrays, call_rows, pack_calls, predictor_hidden,
                                       realized_from_hidden)
from kdknob_jax.ops.head import auto_chunk

Array = jax.Array


def text_logprobs(model: tuple[dict, ModelConfig], tokenizer: Tokenizer,
                  prompts: Sequence[str | Sequence[dict[str, str]]], completions: Sequence[str],
                  stopped: Sequence[bool], *, chat: bool | None = None,
                  rows_per_call: int = 16, prompt_slots: int = 0,
                  completion_slots: int = 0) -> np.ndarray:
  """Summed log-probs of each completion text given its prompt, under one model.

  Args:
    model: (params, config).
    tokenizer: that model's tokenizer.
    prompts: per completion, a prompt string or chat messages.
    completions: the completion texts.
    stopped: whether each completion ended on a stop token.
    chat: wrap string prompts in the chat template (default: when the tokenizer has one).
    rows_per_call: completions per forward pass at most (fewer sequences: the power of two
      that holds them, `scoring.call_rows`).
    prompt_slots, completion_slots: pad every call to at least these lengths (one compiled
      shape for a training loop).

  Returns:
    Float64 [N].
  """
  if not len(prompts) == len(completions) == len(stopped):
    raise ValueError(f"prompts ({len(prompts)}), completions ({len(completions)}) and stopped "
                     f"({len(stopped)}) must have one entry per completion.")
  seqs = []
  for p, c, s in zip(prompts, completions, stopped):
    ids = completion_ids(tokenizer, c, s, chat=uses_chat(tokenizer, p, chat))
    if not ids:
      raise ValueError(f"Completion {len(seqs)} is empty and did not stop: it has no tokens to "
                       "score. Leave it out, or score rollouts with `rollouts.target_logprobs`, "
                       "which gives such rows the group's lowest reward.")
    seqs.append((tokenizer.encode_prompt(p, chat=chat), ids))
  return ids_logprobs(model, seqs, rows_per_call=rows_per_call, prompt_slots=prompt_slots,
                      completion_slots=completion_slots)


def ids_logprobs(model: tuple[dict, ModelConfig],
                 seqs: Sequence[tuple[Sequence[int], Sequence[int]]], *, rows_per_call: int = 16,
                 prompt_slots: int = 0, completion_slots: int = 0) -> np.ndarray:
  """Summed log-probs of each (prompt ids, completion ids) pair's completion, under one model.

  Args:
    model: (params, config).
    seqs: per completion, its prompt's ids and its own (non-empty) ids.
    rows_per_call, prompt_slots, completion_slots: as in `text_logprobs`.

  Returns:
    Float64 [N].
  """
  params, cfg = model
  weight, spec = head_of(params, cfg)
  out = np.zeros(len(seqs))
  rows_per_call = call_rows(len(seqs), rows_per_call)
  for call in pack_calls(seqs, rows_per_call):
    members, args = call_arrays(call, seqs, rows_per_call, prompt_slots, completion_slots)
    comps, comp_pos = args[3], args[4]
    hidden = predictor_hidden(params, cfg, *args).reshape(-1, cfg.hidden_size)
    lp = realized_from_hidden(hidden, weight, comps.reshape(-1), spec=spec,
                              chunk=auto_chunk(comps.size, cfg.vocab_size))
    lp = np.where(comp_pos.reshape(-1) >= 0, np.asarray(lp, np.float64), 0.0)
    out[members] = lp.reshape(comps.shape).sum(axis=1)[:len(members)]
  return out


def worst_for_unscored(r_cal: np.ndarray, scored: np.ndarray, group_size: int,
                       lam: float) -> np.ndarray:
  """r_cal [N] with each unscored row set to its group's worst scored r_cal under weight λ
  (the lowest for λ >= 0, the highest for λ < 0), else the batch's, else 0: a row the target
  could not score never gets a larger calibration advantage than a scored row of its group.

  Args:
    r_cal: float [N], prompt-major (row r belongs to group r // group_size).
    scored: bool [N], whether the target scored the row; the others' r_cal is ignored.
    group_size: G.
    lam: the calibration weight λ (its sign says which end of r_cal is worst).
  """
  r_cal = np.array(r_cal, np.float64)
  scored = np.asarray(scored, bool)
  if scored.all():
    return r_cal
  worst = np.max if lam < 0 else np.min
  fallback = worst(r_cal[scored]) if scored.any() else 0.0
  for g in range(0, len(r_cal), group_size):
    ok = scored[g:g + group_size]
    r_cal[g:g + group_size][~ok] = worst(r_cal[g:g + group_size][ok]) if ok.any() else fallback
  return r_cal


def calibration_reward(logp_target: np.ndarray, logp_teacher: np.ndarray) -> np.ndarray:
  """r_cal = log π_target(y|x) − log π_teacher(y|x) per rollout (a reward: no gradient)."""
  return np.asarray(logp_target, np.float64) - np.asarray(logp_teacher, np.float64)
