"""The calibration objective's math (paper Eqs. 6–11): group-normalized advantages of several
rewards, and the clipped policy-gradient loss with a k3 KL anchor.

Shapes: N = P·G rollouts (P prompts, G rollouts each, prompt-major), T completion tokens;
`n t` in einsum letters. Everything is plain jnp on arrays, jit-able, float32.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

AGGREGATIONS = ("sequence_mean", "token_mean")

# TRL adds this to every standard deviation it divides by; keeping it makes advantages equal.
STD_EPS = 1e-4


def _unbiased_std(x: Array, axis=None, keepdims: bool = False) -> Array:
  n = x.size if axis is None else x.shape[axis]
  return jnp.std(x, axis=axis, keepdims=keepdims, ddof=1 if n > 1 else 0)


def group_normalize(rewards: Array, group_size: int) -> Array:
  """(r − group mean) / (group std + 1e-4), the std unbiased, per group of G rollouts.

  Args:
    rewards: [N] rewards, prompt-major (rollouts of one prompt are adjacent).
    group_size: G.

  Returns:
    Float32 [N]. A group whose rewards are all equal gets zeros.
  """
  r = rewards.astype(jnp.float32).reshape(-1, group_size)
  mean = jnp.mean(r, axis=1, keepdims=True)
  std = _unbiased_std(r, axis=1, keepdims=True) if group_size > 1 else jnp.zeros_like(mean)
  return ((r - mean) / (std + STD_EPS)).reshape(-1)


def combine_advantages(rewards: Mapping[str, Array], weights: Mapping[str, float],
                       group_size: int, renormalize: bool = False) -> Array:
  """A = Σ_k w_k · group_normalize(r_k): each reward normalized within its group on its own,
  then weighted and summed (the paper's A = norm(r_task) + λ·norm(r_cal)).

  Args:
    rewards: name → [N] rewards.
    weights: name → weight; a reward without one gets weight 1.
    group_size: G.
    renormalize: then standardize A over the whole batch (TRL's "normalize_then_sum" does;
      the paper is silent, so it is off by default).

  Returns:
    Float32 [N] advantages.
  """
  if not rewards:
    raise ValueError("combine_advantages needs at least one reward.")
  unknown = set(weights) - set(rewards)
  if unknown:
    raise ValueError(f"Weights for unknown rewards {sorted(unknown)}; rewards are "
                     f"{sorted(rewards)}.")
  total = sum(weights.get(k, 1.0) * group_normalize(r, group_size) for k, r in rewards.items())
  if renormalize:
    total = (total - jnp.mean(total)) / (_unbiased_std(total) + STD_EPS)
  return total


def advantage_sensitivity(rewards: Mapping[str, np.ndarray], weights: Mapping[str, float],
                          group_size: int) -> float:
  """How much the advantages amplify the rewards' rounding: max over rollouts of
  Σ_k |w_k|·|r_k| / (group std of r_k + 1e-4).

  A relative error ε in every reward (float32 rounding, another reduction order on another
  mesh) moves an advantage by at most about ε times this. A group whose rewards nearly tie
  has a small std, so its normalized rewards, and every quantity made from them (the loss),
  carry that group's rounding magnified: two calibration rewards 0.05 nats apart at −26 give
  about 500.

  Args:
    rewards: name → [N] rewards, prompt-major.
    weights: name → weight (1 when absent).
    group_size: G.

  Returns:
    The bound's factor, in float64 (0 for no rewards).
  """
  total = np.zeros(len(next(iter(rewards.values()))) if rewards else 0)
  for k, r in rewards.items():
    r = np.asarray(r, np.float64).reshape(-1, group_size)
    std = r.std(axis=1, ddof=1 if group_size > 1 else 0, keepdims=True)
    total = total + abs(weights.get(k, 1.0)) * (np.abs(r) / (std + STD_EPS)).reshape(-1)
  return float(total.max()) if total.size else 0.0


def policy_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array, *,
                ref_logp: Array | None = None, beta: float = 0.0, epsilon: float = 0.2,
                epsilon_high: float | None = None, aggregation: str = "sequence_mean"
                ) -> tuple[Array, dict[str, Array]]:
  """The clipped surrogate plus β × the per-token k3 KL to the reference, aggregated.

  Per token: −min(ρ·A, clip(ρ, 1−ε, 1+ε_high)·A) + β·(exp(ref − logp) − (ref − logp) − 1),
  with ρ = exp(logp − old_logp).

  Args:
    logp: [N, T] log-probs of the completion tokens under the policy being trained.
    old_logp: [N, T] the same under the policy that sampled them (stored; no gradient).
    advantages: [N] one per rollout.
    mask: [N, T] completion mask.
    ref_logp: [N, T] under the reference (the base model, adapter off); needed when beta > 0.
    beta: weight of the KL anchor.
    epsilon: lower clip range.
    epsilon_high: upper clip range (default: epsilon).
    aggregation: "sequence_mean" (mean over each sequence's tokens, then over sequences) or
      "token_mean" (mean over all tokens of the batch).

  Returns:
    (scalar loss, metrics: "kl" per-token mean, "clip_fraction" of tokens clipped in the
    direction that stops their gradient, "ratio" mean).
  """
  if aggregation not in AGGREGATIONS:
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
  if beta and ref_logp is None:
    raise ValueError("beta > 0 needs ref_logp, the reference model's log-probs.")
  eps_high = epsilon if epsilon_high is None else epsilon_high
  m = mask.astype(jnp.float32)
  a = advantages.astype(jnp.float32)[:, None]
  ratio = jnp.exp(logp.astype(jnp.float32) - jax.lax.stop_gradient(old_logp.astype(jnp.float32)))
  clipped = jnp.clip(ratio, 1.0 - epsilon, 1.0 + eps_high)
  per_token = -jnp.minimum(ratio * a, clipped * a)
  kl = jnp.zeros_like(per_token)
  if beta:
    d = jax.lax.stop_gradient(ref_logp.astype(jnp.float32)) - logp.astype(jnp.float32)
    kl = jnp.exp(d) - d - 1.0
    per_token = per_token + beta * kl
  if aggregation == "sequence_mean":
    loss = jnp.mean(jnp.sum(per_token * m, -1) / jnp.maximum(jnp.sum(m, -1), 1.0))
  else:
    loss = jnp.sum(per_token * m) / jnp.maximum(jnp.sum(m), 1.0)
  count = jnp.maximum(jnp.sum(m), 1.0)
  was_clipped = ((ratio < 1.0 - epsilon) & (a < 0)) | ((ratio > 1.0 + eps_high) & (a > 0))
  metrics = {"kl": jnp.sum(kl * m) / count,
             "clip_fraction": jnp.sum(was_clipped * m) / count,
             "ratio": jnp.sum(ratio * m) / count}
  return loss, metrics
