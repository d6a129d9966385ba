"""Scoring sampled sequences under a student and a teacher, chunk by chunk over tokens.

For every completion token of every sequence this computes, from the two models' final hidden
states and heads (never the full [N, V] logits of all tokens at once):
- the realized token's log-prob under each model (the inputs of the sequence estimators);
- the exact token-level KL in both directions, KL(student‖teacher) and KL(teacher‖student);
- the per-vocabulary-entry contributions to one of those KLs (the paper's Eq. 4): entry v at
  position n adds P_n(v)·(log P_n(v) − log Q_n(v)), counted for top-k level k only when v is
  among the k most probable entries of P_n. The last level is the whole vocabulary, so its row
  sums to the summed token KL; the gap between levels is the KL carried by the tail.

Shapes: N tokens, D hidden, V vocabulary, K top-k levels (`n d v k` in einsum letters).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdknob_jax.models import ModelConfig, head_of
from kdknob_jax.models.scoring import call_arrays, call_rows, pack_calls, predictor_hidden
from kdknob_jax.ops.head import HeadSpec, auto_chunk, chunk_rows, head_logits, unchunk_rows
from kdknob_jax.ops.kl import log_probs

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("ks", "direction", "student_spec", "teacher_spec",
                                             "chunk"))
def score_tokens(hs: Array, ws: Array, ht: Array, wt: Array, tokens: Array, mask: Array, *,
                 ks: tuple[int, ...], direction: str, student_spec: HeadSpec,
                 teacher_spec: HeadSpec, chunk: int) -> dict[str, Array]:
  """Per-token scores and per-vocabulary KL contributions of N token positions.

  Args:
    hs: the student's final hidden states [N, Ds] at the positions predicting each token.
    ws: the student's head ([Ds, V], or [V, Ds] when tied).
    ht: the teacher's hidden states [N, Dt].
    wt: the teacher's head.
    tokens: the realized tokens [N].
    mask: [N], 1 for real completion tokens.
    ks: top-k levels below the vocabulary size, increasing; the full vocabulary is added last.
    direction: "rkl" analyses KL(student‖teacher) under the student's top-k, "fkl"
      KL(teacher‖student) under the teacher's.
    student_spec: the student head's tying and softcap.
    teacher_spec: the same for the teacher.
    chunk: tokens per chunk.

  Returns:
    Float32 arrays: "logp_student", "logp_teacher", "rkl", "fkl" of shape [N] (0 where the
    mask is 0), and "contrib" [K+1, V].
  """
  v = teacher_spec.vocab(wt)
  kmax = max(ks) if ks else 0

  def body(acc, xs):
    hs_c, ht_c, tok_c, m_c = xs
    ls = log_probs(head_logits(hs_c, ws, student_spec))
    lt = log_probs(head_logits(ht_c, wt, teacher_spec))
    ps, pt = jnp.exp(ls), jnp.exp(lt)
    rkl_terms, fkl_terms = ps * (ls - lt), pt * (lt - ls)
    lp, terms = (ls, rkl_terms) if direction == "rkl" else (lt, fkl_terms)
    terms = terms * m_c[:, None]
    if kmax:
      # The k-th largest log-prob of each row is the threshold of top-k membership. The
      # barrier keeps XLA:CPU from rewriting a partly used top_k into a full sort (20x slower).
      top = jax.lax.optimization_barrier(jax.lax.top_k(lp, kmax)[0])
      thresholds = jnp.stack([top[:, k - 1] for k in ks], axis=1)  # [C, K]
      # levels[c, v]: how many top-k sets entry v is outside of (0: inside every one).
      outside = jnp.sum(lp[:, None, :] < thresholds[:, :, None], axis=1)
      member = outside[:, None, :] <= jnp.arange(len(ks))[None, :, None]
      rows = jnp.einsum("ckv,cv->kv", member.astype(terms.dtype), terms)
      rows = jnp.concatenate([rows, jnp.sum(terms, axis=0)[None]], axis=0)
    else:
      rows = jnp.sum(terms, axis=0)[None]
    def pick(x):
      return jnp.take_along_axis(x, tok_c[:, None], axis=1)[:, 0] * m_c

    out = {"logp_student": pick(ls), "logp_teacher": pick(lt),
           "rkl": jnp.sum(rkl_terms, -1) * m_c, "fkl": jnp.sum(fkl_terms, -1) * m_c}
    return acc + rows, out

  n = hs.shape[0]
  xs = (chunk_rows(hs, chunk), chunk_rows(ht, chunk), chunk_rows(tokens.astype(jnp.int32), chunk),
        chunk_rows(mask.astype(jnp.float32), chunk))
  contrib, per = jax.lax.scan(body, jnp.zeros((len(ks) + 1, v), jnp.float32), xs)
  out = {k: unchunk_rows(x, n) for k, x in per.items()}
  out["contrib"] = contrib
  return out


@dataclasses.dataclass
class SequenceScores:
  """Scores of a set of sequences under a (student, teacher) pair.

  Attributes:
    logp_student: [S] summed log-prob of each completion under the student.
    logp_teacher: [S] the same under the teacher.
    rkl: [S] summed token-level KL(student‖teacher) over each completion's positions.
    fkl: [S] summed token-level KL(teacher‖student).
    lengths: [S] completion tokens.
    contrib: [K+1, V] per-vocabulary KL contributions (see the module docstring).
    frequency: [V] how often each token was realized in these completions.
    ks: the top-k levels of `contrib`'s rows, the vocabulary size last.
    direction: "rkl" or "fkl", the KL that `contrib` decomposes.
  """
  logp_student: np.ndarray
  logp_teacher: np.ndarray
  rkl: np.ndarray
  fkl: np.ndarray
  lengths: np.ndarray
  contrib: np.ndarray
  frequency: np.ndarray
  ks: tuple[int, ...]
  direction: str


def score_sequences(student: tuple[dict, ModelConfig], teacher: tuple[dict, ModelConfig],
                    sequences: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                    ks: Sequence[int] = (1, 10, 100, 1000), direction: str = "rkl",
                    rows_per_call: int = 32, progress=None) -> SequenceScores:
  """Scores (prompt ids, completion ids) pairs under both models (teacher-forced).

  Args:
    student: (params, config) of the student.
    teacher: (params, config) of the teacher; same vocabulary as the student.
    sequences: prompts and completions as token ids of the shared tokenizer. Completions of
      one prompt share its forward pass.
    ks: top-k levels for the per-vocabulary contributions; those ≥ V are dropped.
    direction: which KL the contributions decompose ("rkl" or "fkl").
    rows_per_call: completions per forward pass at most (`scoring.call_rows`).
    progress: optional callable(n) told how many sequences were scored.

  Returns:
    A `SequenceScores` (per-sequence arrays in the order of `sequences`).
  """
  (sp, scfg), (tp, tcfg) = student, teacher
  if scfg.vocab_size != tcfg.vocab_size:
    raise ValueError(f"Token-level scores need one vocabulary: the student has "
                     f"{scfg.vocab_size} entries and the teacher {tcfg.vocab_size}. Use a pair "
                     "that shares a tokenizer (e.g. a student derived with student_layers).")
  if direction not in ("rkl", "fkl"):
    raise ValueError(f"direction must be 'rkl' or 'fkl', got {direction!r}.")
  if any(len(p) == 0 or len(c) == 0 for p, c in sequences):
    raise ValueError("Every sequence needs a non-empty prompt and completion.")
  vocab = scfg.vocab_size
  levels = tuple(sorted({int(k) for k in ks if 0 < int(k) < vocab}))
  ws, s_spec = head_of(sp, scfg)
  wt, t_spec = head_of(tp, tcfg)
  sums = {k: np.zeros(len(sequences)) for k in ("logp_student", "logp_teacher", "rkl", "fkl")}
  contrib = np.zeros((len(levels) + 1, vocab), np.float64)
  frequency = np.zeros(vocab, np.int64)
  lengths = np.array([len(c) for _, c in sequences], np.int64)
  rows_per_call = call_rows(len(sequences), rows_per_call)
  for call in pack_calls(sequences, rows_per_call):
    members, args = call_arrays(call, sequences, rows_per_call)
    comps, comp_pos = args[3], args[4]
    c_len = comps.shape[1]
    for i in members:
      frequency += np.bincount(np.asarray(sequences[i][1], np.int64), minlength=vocab)
    mask = (comp_pos >= 0).reshape(-1).astype(np.float32)
    hs = predictor_hidden(sp, scfg, *args).reshape(-1, scfg.hidden_size)
    ht = predictor_hidden(tp, tcfg, *args).reshape(-1, tcfg.hidden_size)
    out = score_tokens(hs, ws, ht, wt, comps.reshape(-1), mask, ks=levels, direction=direction,
                       student_spec=s_spec, teacher_spec=t_spec,
                       chunk=auto_chunk(mask.size, vocab))
    out = jax.device_get(out)
    contrib += out.pop("contrib")
    for key, values in out.items():
      per_row = values.reshape(rows_per_call, c_len).astype(np.float64).sum(axis=1)
      sums[key][members] = per_row[:len(members)]
    if progress is not None:
      progress(len(members))
  return SequenceScores(lengths=lengths, contrib=contrib, frequency=frequency,
                        ks=levels + (vocab,), direction=direction, **sums)
