"""Task-level trap metrics from scored samples: the rows of the paper's Table 1 and the
tail-noise statistics behind its Figure 2. Plain numpy in float64: sequence log-ratios of long
completions overflow float32 once exponentiated.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kdknob_jax.diagnostics.traps import SequenceScores


def mean_and_se(x: np.ndarray) -> tuple[float, float]:
  """Mean and standard error of the mean (nan for an empty array)."""
  x = np.asarray(x, np.float64)
  if x.size == 0:
    return float("nan"), float("nan")
  se = float(np.std(x, ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")
  return float(np.mean(x)), se


def wrong_trace_preference(loss: np.ndarray, correct: np.ndarray, prompt_index: np.ndarray
                           ) -> dict[str, float]:
  """How often the teacher prefers a wrong trace to a correct one of the same prompt.

  Args:
    loss: [S] per-trace sequence-RKL loss, log π_student(y) − log π_teacher(y).
    correct: [S] whether each trace's answer is right.
    prompt_index: [S] which prompt each trace answers.

  Returns:
    "share": of (correct, wrong) pairs of one prompt where the wrong trace has the strictly
    lower loss; "pairs" and "prompts" (prompts with both kinds) it was computed over.
  """
  loss, correct = np.asarray(loss, np.float64), np.asarray(correct, bool)
  prompt_index = np.asarray(prompt_index)
  preferred = pairs = prompts = 0
  for p in np.unique(prompt_index):
    sel = prompt_index == p
    good, bad = loss[sel & correct], loss[sel & ~correct]
    if good.size and bad.size:
      prompts += 1
      pairs += good.size * bad.size
      preferred += int(np.sum(bad[None, :] < good[:, None]))
  share = preferred / pairs if pairs else float("nan")
  return {"share": share, "pairs": pairs, "prompts": prompts}


def off_policy_sequence_kl(logp_target: np.ndarray, logp_other: np.ndarray) -> dict[str, float]:
  """Off-policy estimates of the sequence KL(target‖other) from trajectories of `other`.

  The same estimators as `kdknob_jax.ops.kl.sequence_kl` with the behavior policy equal to
  `other`: w = target(y)/other(y); k1 is w·log w and its k3 form w·log w − w + 1.

  Args:
    logp_target: [S] summed log-probs of each trajectory under the target policy.
    logp_other: [S] the same under the policy that sampled them.

  Returns:
    Means and standard errors of both forms, and the effective sample size (Σw)²/Σw² as a
    share of S: near 1 for well-matched policies, near 1/S when one weight dominates.
  """
  log_w = np.asarray(logp_target, np.float64) - np.asarray(logp_other, np.float64)
  if log_w.size == 0:
    nan = float("nan")
    return {"k1": nan, "k1_se": nan, "k3": nan, "k3_se": nan, "ess": nan, "max_log_w": nan}
  w = np.exp(log_w)
  k1 = w * log_w
  k3 = k1 - w + 1.0
  # ESS in log space, so that huge weights do not overflow the squares.
  shift = log_w.max()
  ws = np.exp(log_w - shift)
  ess = float(ws.sum() ** 2 / np.sum(ws * ws)) / log_w.size
  (m1, s1), (m3, s3) = mean_and_se(k1), mean_and_se(k3)
  return {"k1": m1, "k1_se": s1, "k3": m3, "k3_se": s3, "ess": ess, "max_log_w": float(shift)}


def _ranks(x: np.ndarray) -> np.ndarray:
  """Ranks with ties averaged (0-based)."""
  _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
  average = np.cumsum(counts) - (counts + 1) / 2.0
  return average[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  """Spearman rank correlation (nan when either side is constant or there are < 3 points)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size < 3:
    return float("nan")
  rx, ry = _ranks(x), _ranks(y)
  rx, ry = rx - rx.mean(), ry - ry.mean()
  denom = np.sqrt(np.sum(rx * rx) * np.sum(ry * ry))
  return float(np.sum(rx * ry) / denom) if denom > 0 else float("nan")


def tail_statistics(scores: SequenceScores) -> list[dict[str, float]]:
  """Per top-k level: the share of the total token KL inside the top-k, how many vocabulary
  entries contribute, and the Spearman correlation between an entry's sampled frequency and
  its KL contribution over the contributing entries. A correlation that falls as k grows, with
  a large share beyond the top few entries, is the tail-noise signature."""
  total = float(scores.contrib[-1].sum())
  out = []
  for k, row in zip(scores.ks, scores.contrib):
    nz = row != 0
    out.append({"k": int(k), "kl_share": float(row.sum()) / total if total else float("nan"),
                "entries": int(nz.sum()), "spearman": spearman(scores.frequency[nz], row[nz])})
  return out


def table_row(name: str, on_policy: SequenceScores, off_policy: SequenceScores,
              student_correct: Sequence[bool], teacher_correct: Sequence[bool],
              student_prompt: Sequence[int], teacher_prompt: Sequence[int], prompts: int,
              rollouts: int) -> dict[str, float]:
  """One Table-1 row for a dataset.

  Args:
    name: the dataset's name.
    on_policy: scores of the student's own samples (direction "rkl").
    off_policy: scores of the teacher's samples.
    student_correct: [S] verifier result of each student sample.
    teacher_correct: [S'] the same for the teacher's samples.
    student_prompt: [S] prompt index of each student sample.
    teacher_prompt: [S'] the same for the teacher's samples.
    prompts: prompts in the dataset run.
    rollouts: samples per prompt and model.

  Returns:
    Accuracies; on-policy token RKL per token; on-policy sequence RKL with its standard error;
    the wrong-trace preference among the student's samples and among both models' samples of
    a prompt (the loss is log π_student − log π_teacher either way); off-policy token FKL per
    token; off-policy sequence RKL (importance weighted) in its k1 and k3 forms with standard
    errors, and the ESS share.
  """
  seq_rkl = on_policy.logp_student - on_policy.logp_teacher
  m, se = mean_and_se(seq_rkl)
  pref = wrong_trace_preference(seq_rkl, np.asarray(student_correct), np.asarray(student_prompt))
  pooled = wrong_trace_preference(
      np.concatenate([seq_rkl, off_policy.logp_student - off_policy.logp_teacher]),
      np.concatenate([np.asarray(student_correct, bool), np.asarray(teacher_correct, bool)]),
      np.concatenate([np.asarray(student_prompt), np.asarray(teacher_prompt)]))
  off = off_policy_sequence_kl(off_policy.logp_student, off_policy.logp_teacher)
  tokens_on = max(int(on_policy.lengths.sum()), 1)
  tokens_off = max(int(off_policy.lengths.sum()), 1)
  return {
      "dataset": name, "prompts": prompts, "rollouts": rollouts,
      "student_accuracy": float(np.mean(student_correct)) if len(student_correct) else np.nan,
      "teacher_accuracy": float(np.mean(teacher_correct)) if len(teacher_correct) else np.nan,
      "token_rkl_on": float(on_policy.rkl.sum()) / tokens_on,
      "seq_rkl_on": m, "seq_rkl_on_se": se,
      "wrong_preference": pref["share"], "wrong_pairs": pref["pairs"],
      "wrong_prompts": pref["prompts"], "wrong_preference_all": pooled["share"],
      "wrong_pairs_all": pooled["pairs"], "wrong_prompts_all": pooled["prompts"],
      "token_fkl_off": float(off_policy.fkl.sum()) / tokens_off,
      "seq_rkl_off": off["k1"], "seq_rkl_off_se": off["k1_se"],
      "seq_rkl_off_k3": off["k3"], "seq_rkl_off_k3_se": off["k3_se"],
      "off_policy_ess": off["ess"],
      "student_tokens": int(on_policy.lengths.sum()),
      "teacher_tokens": int(off_policy.lengths.sum()),
  }
