"""Parity figures between two models' logits on the same token ids (float64 numpy)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Exit-code tolerances of `python -m kdknob_jax.compare`, per dtype. float32 is gated on the
# mean per-token KL against torch and exact greedy agreement. bfloat16 is gated on the distance
# of our bf16 model from the float32 model (`check_bf16`): torch's bf16 kernels differ from CPU
# to CPU (max KL to ours 0.012 on an AVX2 EPYC, 0.064 on an AVX-512 Xeon), so torch-vs-ours in
# bf16 measures torch's kernels and is reported, not gated.
TOLERANCES = {
    "float32": {"mean_kl": 1e-4, "greedy_agreement_min": 1.0},
    "bfloat16": {},
}
# bfloat16: our mean KL from the float32 model may exceed torch's bf16 by this factor at most
# (both measured in the same run), and ours stays under absolute bounds. Measured with the
# default prompts on an AVX-512 Xeon: SmolLM2 mean 1.7e-3, max 4.7e-2 (torch 2.5e-3, 6.0e-2);
# Gemma-3-270M mean 2.9e-4, max 3.0e-3 (torch 7.6e-4, 6.1e-3). The bounds are about 2-3x the
# worst of those: a port that rounds once per op instead of once per MLP lands well above.
BF16_VS_TORCH = 1.25
BF16_MEAN_KL = 5e-3
BF16_MAX_KL = 0.1


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


def check_bf16(ours_vs_f32: dict[str, float], torch_vs_f32: dict[str, float]) -> list[str]:
  """Names what is out of tolerance for a bfloat16 port: ours must be about as close to the
  float32 model as torch's bfloat16 is (mean KL within `BF16_VS_TORCH` of torch's), within
  `BF16_MEAN_KL` of it on average, and no position's KL from it may exceed `BF16_MAX_KL`."""
  bad = []
  limit = BF16_VS_TORCH * torch_vs_f32["mean_kl"]
  if ours_vs_f32["mean_kl"] > limit:
    bad.append(f"mean KL(f32||ours bf16)={ours_vs_f32['mean_kl']:.4g} > {BF16_VS_TORCH} x "
               f"torch bf16's {torch_vs_f32['mean_kl']:.4g}")
  if ours_vs_f32["mean_kl"] > BF16_MEAN_KL:
    bad.append(f"mean KL(f32||ours bf16)={ours_vs_f32['mean_kl']:.4g} > {BF16_MEAN_KL}")
  if ours_vs_f32["max_kl"] > BF16_MAX_KL:
    bad.append(f"max KL(f32||ours bf16)={ours_vs_f32['max_kl']:.4g} > {BF16_MAX_KL}")
  return bad
