"""The calibration reward across tokenizers (paper Eq. 8): r_cal = log π_target(y|x) −
log π_teacher(y|x), where each model scores the *text* of x and y with its own tokenizer and
prompt format, so the target may have another vocabulary than the teacher.

Boundary rules, the same for every model: the prompt is rendered and encoded by the model's own
`Tokenizer.encode_prompt` (chat template, or plain text with the BOS its config asks for); the
completion text is encoded with no special tokens and appended; a completion that ended on a
stop token gets the model's own first EOS id appended, so that every model is also scored on
ending there. Only completion tokens are summed.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from kdknob_jax.hf.tokenizer import Tokenizer, completion_ids
from kdknob_jax.models import ModelConfig, head_of
from kdknob_jax.models.scoring import (call_arrays, pack_calls, predictor_hidden,
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
    rows_per_call: completions per forward pass.
    prompt_slots, completion_slots: pad every call to at least these lengths (one compiled
      shape for a training loop).

  Returns:
    Float64 [N].
  """
  if not len(prompts) == len(completions) == len(stopped):
    raise ValueError(f"prompts ({len(prompts)}), completions ({len(completions)}) and stopped "
                     f"({len(stopped)}) must have one entry per completion.")
  params, cfg = model
  seqs = []
  for p, c, s in zip(prompts, completions, stopped):
    ids = completion_ids(tokenizer, c, s)
    if not ids:
      raise ValueError(f"Completion {len(seqs)} is empty and did not stop: nothing to score.")
    seqs.append((tokenizer.encode_prompt(p, chat=chat), ids))
  weight, spec = head_of(params, cfg)
  out = np.zeros(len(seqs))
  for call in pack_calls(seqs, rows_per_call):
    members, args = call_arrays(call, seqs, rows_per_call, prompt_slots, completion_slots)
    comps, comp_pos = args[3], args[4]
    hidden = predictor_hidden(params, cfg, *args).reshape(-1, cfg.hidden_size)
    lp = realized_from_hidden(hidden, weight, comps.reshape(-1), spec=spec,
                              chunk=auto_chunk(comps.size, cfg.vocab_size))
    lp = np.where(comp_pos.reshape(-1) >= 0, np.asarray(lp, np.float64), 0.0)
    out[members] = lp.reshape(comps.shape).sum(axis=1)[:len(members)]
  return out


def calibration_reward(logp_target: np.ndarray, logp_teacher: np.ndarray) -> np.ndarray:
  """r_cal = log π_target(y|x) − log π_teacher(y|x) per rollout (a reward: no gradient)."""
  return np.asarray(logp_target, np.float64) - np.asarray(logp_teacher, np.float64)
