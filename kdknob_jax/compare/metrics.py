"""Parity figures between two models' logits on the same token ids (float64 numpy)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Exit-code tolerances of `python -m kdknob_jax.compare`, per dtype. float32 is gated on the
# mean per-token KL and exact greedy agreement; bfloat16 on the worst per-token KL, since bf16
# rounding makes greedy paths legitimately diverge once two candidates are near-tied.
TOLERANCES = {
    "float32": {"mean_kl": 1e-4, "greedy_agreement_min": 1.0},
    "bfloat16": {"max_kl": 0.015},
}


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = x.astype(np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def logit_figures(ref: np.ndarray, ours: np.ndarray) -> dict[str, float]:
  """Figures over all positions of logits [T, V] (or [N, V]) of a reference and our port.

  Returns:
    max/mean absolute logit difference, mean/max per-token KL(ref || ours), top-1 agreement.
  """
  diff = np.abs(ref.astype(np.float64) - ours.astype(np.float64))
  lp, lq = _log_softmax(ref), _log_softmax(ours)
  kl = (np.exp(lp) * (lp - lq)).sum(-1)
  return {
      "max_abs_logit_diff": float(diff.max()),
      "mean_abs_logit_diff": float(diff.mean()),
      "mean_kl": float(kl.mean()),
      "max_kl": float(kl.max()),
      "top1_agreement": float((ref.argmax(-1) == ours.argmax(-1)).mean()),
  }


def greedy_agreement(ref: Sequence[int], ours: Sequence[int]) -> float:
  """Share of new tokens generated before the two greedy continuations first differ."""
  n = len(ref)
  if n == 0:
    return 1.0
  same = 0
  for a, b in zip(ref, ours):
    if a != b:
      break
    same += 1
  return same / n


def check(figures: dict[str, float], dtype: str) -> list[str]:
  """Names the figures outside their tolerance for this dtype (empty when all pass)."""
  bad = []
  for key, bound in TOLERANCES[dtype].items():
    if key.endswith("_min"):
      name = key[: -len("_min")]
      if figures[name] < bound:
        bad.append(f"{name}={figures[name]:.4g} < {bound}")
    elif figures[key] > bound:
      bad.append(f"{key}={figures[key]:.4g} > {bound}")
  return bad
