"""Sample-based accuracy metrics: pass@k, majority vote (maj@n), and their dataset means.

Plain Python and numpy on per-sample results, so they are cheap to test against brute force:

  pass_at_k(n=16, c=3, k=1)                   # 0.1875: chance one of k draws is correct
  majority_vote(["12", None, "7", "12"])      # "12"
  summarize(correct, answers, ks=(1, 16))     # {"accuracy", "maj@16", "pass@1", ...}

`correct[p][i]` and `answers[p][i]` are sample i of prompt p: whether it was graded correct,
and its extracted (normalized) answer or None.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from kdknob_jax.errors import ConfigError


def pass_at_k(n: int, c: int, k: int) -> float:
  """The unbiased pass@k estimate from n samples of which c are correct.

  pass@k = 1 - C(n - c, k) / C(n, k): the chance that k samples drawn without replacement from
  the n include a correct one (Chen et al., 2021). The ratio of binomials is computed as the
  product over i in (n - c, n] of (1 - k / i) in float64, which neither overflows nor loses
  precision for large n.

  Args:
    n: samples drawn for the prompt (>= 1).
    c: how many of them are correct (0..n).
    k: the budget of attempts (1..n).

  Returns:
    A probability in [0, 1].

  Raises:
    ConfigError: n < 1, c outside 0..n, or k outside 1..n.
  """
  n, c, k = int(n), int(c), int(k)
  if n < 1:
    raise ConfigError(f"pass@k needs at least one sample per prompt, got n={n}.")
  if not 0 <= c <= n:
    raise ConfigError(f"pass@k: the number correct c={c} must lie in 0..n={n}.")
  if not 1 <= k <= n:
    raise ConfigError(f"pass@{k} needs 1 <= k <= n (n={n} samples per prompt); sample more "
                      f"(raise n) or ask for a smaller k.")
  if n - c < k:
    return 1.0  # every k-subset must contain a correct sample
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def majority_vote(answers: Sequence[Hashable | None]) -> Hashable | None:
  """The most common answer among the samples, ignoring samples with no answer (None).

  Ties go to the answer that reached the top count first in sample order, i.e. the one whose
  decisive (count-th) occurrence comes earliest. That is deterministic and does not favour
  any particular spelling.

  Returns:
    The winning answer, or None when no sample has one.
  """
  counts: dict[Hashable, int] = {}
  best, best_count = None, 0
  for answer in answers:
    if answer is None:
      continue
    counts[answer] = counts.get(answer, 0) + 1
    if counts[answer] > best_count:  # strict: an equal count later does not take the lead
      best, best_count = answer, counts[answer]
  return best


def maj_at_n(answers: Sequence[Hashable | None], correct: Sequence[bool]) -> float:
  """1.0 when the majority answer of one prompt's samples is correct, else 0.0.

  Grading is a function of the extracted answer, so the majority answer is correct exactly
  when the samples that gave it were graded correct.

  Args:
    answers: each sample's extracted answer (None: no answer).
    correct: each sample's grade, aligned with `answers`.
  """
  if len(answers) != len(correct):
    raise ConfigError(f"maj@n: {len(answers)} answers but {len(correct)} grades; they must "
                      f"describe the same samples.")
  winner = majority_vote(answers)
  if winner is None:
    return 0.0
  return float(any(ok for a, ok in zip(answers, correct) if a == winner))


def mean_pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
  """pass@k averaged over prompts (each prompt's n is its number of samples)."""
  _need_prompts(correct)
  return float(np.mean([pass_at_k(len(c), sum(map(bool, c)), k) for c in correct]))


def mean_maj_at_n(answers: Sequence[Sequence[Hashable | None]],
                  correct: Sequence[Sequence[bool]]) -> float:
  """maj@n averaged over prompts."""
  _need_prompts(correct)
  if len(answers) != len(correct):
    raise ConfigError(f"maj@n: answers for {len(answers)} prompts but grades for "
                      f"{len(correct)}.")
  return float(np.mean([maj_at_n(a, c) for a, c in zip(answers, correct)]))


def summarize(correct: Sequence[Sequence[bool]], answers: Sequence[Sequence[Hashable | None]],
              ks: Sequence[int]) -> dict[str, float]:
  """Dataset means of the sample metrics.

  Args:
    correct: [prompts][n] grades; every prompt must have the same n.
    answers: [prompts][n] extracted answers (None: no answer).
    ks: the k of each pass@k to report.

  Returns:
    "accuracy" (mean over all samples), "maj@{n}", "pass@{k}" for each k, and "answered" (the
    share of samples with an extracted answer).

  Raises:
    ConfigError: no prompts, prompts with different numbers of samples, or a k outside 1..n.
  """
  _need_prompts(correct)
  sizes = {len(c) for c in correct}
  if len(sizes) != 1:
    raise ConfigError(f"Every prompt needs the same number of samples to report maj@n and "
                      f"pass@k, got sizes {sorted(sizes)}.")
  n = sizes.pop()
  flat = [bool(x) for c in correct for x in c]
  out = {"accuracy": float(np.mean(flat)), f"maj@{n}": mean_maj_at_n(answers, correct)}
  for k in ks:
    out[f"pass@{k}"] = mean_pass_at_k(correct, k)
  out["answered"] = float(np.mean([a is not None for row in answers for a in row]))
  return out


def _need_prompts(correct: Sequence[Sequence[bool]]) -> None:
  if len(correct) == 0:
    raise ConfigError("No prompts to average over: evaluate at least one record.")
