"""Divergences between two language models, token level and sequence level.

Shapes: logits [B, T, V], masks and per-token log-probs [B, T]; `b t v` in einsum letters.
Every reduction accumulates in float32 whatever the input dtype. Token-level functions return
per-position values that are exactly zero where the mask is zero, so padding and prompt
positions never count.

Conventions (the same as the paper and TRL):
- `token_kl(p, q)` is KL(p‖q) = Σ_v p_v (log p_v − log q_v) at each position. With p the
  student and q the teacher it is the reverse KL of distillation; swapped, the forward KL.
- `generalized_jsd(student, teacher, β)` follows TRL's `GKDTrainer.generalized_jsd_loss`:
  β = 0 is KL(teacher‖student), β = 1 is KL(student‖teacher), otherwise
  β·KL(teacher‖m) + (1−β)·KL(student‖m) with m = (1−β)·student + β·teacher.
- Sequence estimators take the summed log-probs of realized tokens. `sequence_kl` with
  `kind="k1"` is the Monte-Carlo estimate of KL(p‖q) over whole sequences (log p(y) − log q(y)
  for y ~ p); given `logp_behavior` the trajectories come from another policy μ and the
  estimate is importance weighted by w = p(y)/μ(y).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array

DIVERGENCES = ("fkl", "rkl", "jsd", "skew_fkl", "skew_rkl")
ESTIMATORS = ("k1", "k2", "k3")


def log_probs(logits: Array, temperature: float = 1.0) -> Array:
  """Float32 log-softmax over the last axis of logits / temperature."""
  return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def _masked(values: Array, mask: Array | None) -> Array:
  if mask is None:
    return values
  return jnp.where(mask.astype(bool), values, 0.0)


def _masked_mean(values: Array, mask: Array | None) -> Array:
  if mask is None:
    return jnp.mean(values)
  m = mask.astype(jnp.float32)
  return jnp.sum(values * m) / jnp.maximum(jnp.sum(m), 1.0)


def _kl_from_logp(lp: Array, lq: Array) -> Array:
  """Σ_v p (log p − log q) over the last axis, for log-probs lp, lq."""
  return jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)


@functools.partial(jax.jit, static_argnames=("temperature",))
def token_kl(p_logits: Array, q_logits: Array, mask: Array | None = None,
             temperature: float = 1.0) -> Array:
  """Exact per-position KL(p‖q) over the vocabulary (the paper's token-level KL).

  Args:
    p_logits: logits [B, T, V] of the distribution the expectation is under.
    q_logits: logits [B, T, V] of the other distribution.
    mask: optional [B, T]; positions where it is 0 give 0.
    temperature: both logits are divided by it first.

  Returns:
    Float32 [B, T].
  """
  kl = _kl_from_logp(log_probs(p_logits, temperature), log_probs(q_logits, temperature))
  return _masked(kl, mask)


def _mixture_logp(ls: Array, lt: Array, beta: float) -> Array:
  """log((1−β)·s + β·t) computed in log space, as TRL does (log1p keeps small β exact)."""
  beta = jnp.float32(beta)
  return jnp.logaddexp(ls + jnp.log1p(-beta), lt + jnp.log(beta))


def divergence_from_logp(ls: Array, lt: Array, kind: str, coef: float = 0.0) -> Array:
  """Per-position divergence between student log-probs `ls` and teacher log-probs `lt`.

  Args:
    ls: student log-probs [..., V].
    lt: teacher log-probs [..., V].
    kind: "fkl" KL(teacher‖student); "rkl" KL(student‖teacher); "jsd" TRL's generalized JSD
      with β = coef; "skew_fkl" KL(teacher ‖ α·teacher + (1−α)·student) and "skew_rkl"
      KL(student ‖ α·student + (1−α)·teacher), DistiLLM's skew divergences with α = coef.
    coef: β for "jsd", α for the skew kinds; unused otherwise.

  Returns:
    Float32 [...].
  """
  if kind == "fkl":
    return _kl_from_logp(lt, ls)
  if kind == "rkl":
    return _kl_from_logp(ls, lt)
  if kind == "jsd":
    if not 0.0 <= coef <= 1.0:
      raise ValueError(f"jsd needs 0 <= beta <= 1, got {coef}.")
    # TRL special-cases the endpoints: there the mixture formula would be identically zero.
    if coef == 0.0:
      return _kl_from_logp(lt, ls)
    if coef == 1.0:
      return _kl_from_logp(ls, lt)
    m = _mixture_logp(ls, lt, coef)
    return coef * _kl_from_logp(lt, m) + (1.0 - coef) * _kl_from_logp(ls, m)
  if kind in ("skew_fkl", "skew_rkl"):
    if not 0.0 <= coef < 1.0:
      raise ValueError(f"{kind} needs 0 <= alpha < 1, got {coef}.")
    first, second = (lt, ls) if kind == "skew_fkl" else (ls, lt)
    # α·first + (1−α)·second is _mixture_logp(second, first, α).
    mix = second if coef == 0.0 else _mixture_logp(second, first, coef)
    return _kl_from_logp(first, mix)
  raise ValueError(f"Unknown divergence {kind!r}; use one of {DIVERGENCES}.")


@functools.partial(jax.jit, static_argnames=("kind", "coef", "temperature"))
def token_divergence(student_logits: Array, teacher_logits: Array, kind: str, coef: float = 0.0,
                     mask: Array | None = None, temperature: float = 1.0) -> Array:
  """Per-position divergence [B, T] of a kind in `DIVERGENCES` (see `divergence_from_logp`)."""
  d = divergence_from_logp(log_probs(student_logits, temperature),
                           log_probs(teacher_logits, temperature), kind, coef)
  return _masked(d, mask)


@functools.partial(jax.jit, static_argnames=("beta", "temperature"))
def generalized_jsd(student_logits: Array, teacher_logits: Array, beta: float = 0.5,
                    mask: Array | None = None, temperature: float = 1.0) -> Array:
  """TRL's generalized JSD loss: the mean over unmasked positions of the per-token divergence.

  Args:
    student_logits: [B, T, V].
    teacher_logits: [B, T, V].
    beta: 0 gives KL(teacher‖student), 1 gives KL(student‖teacher), between them the
      β-mixture JSD.
    mask: optional [B, T] (TRL's labels != -100); None averages over all B·T positions.
    temperature: both logits are divided by it first.

  Returns:
    A float32 scalar.
  """
  d = token_divergence(student_logits, teacher_logits, "jsd", beta, None, temperature)
  return _masked_mean(d, mask)


@functools.partial(jax.jit, static_argnames=("alpha", "temperature"))
def skew_kl(p_logits: Array, q_logits: Array, alpha: float = 0.1, mask: Array | None = None,
            temperature: float = 1.0) -> Array:
  """DistiLLM's skew KL per position: KL(p ‖ α·p + (1−α)·q), float32 [B, T].

  Skew forward KL is `skew_kl(teacher, student, α)`; skew reverse KL is
  `skew_kl(student, teacher, α)`. α = 0 is the plain KL(p‖q).
  """
  d = divergence_from_logp(log_probs(q_logits, temperature), log_probs(p_logits, temperature),
                           "skew_fkl", alpha)
  return _masked(d, mask)


@functools.partial(jax.jit, static_argnames=("temperature",))
def realized_logprobs(logits: Array, tokens: Array, temperature: float = 1.0) -> Array:
  """Float32 log-probs [B, T] of the given tokens [B, T] under logits [B, T, V]."""
  lp = log_probs(logits, temperature)
  return jnp.take_along_axis(lp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


@functools.partial(jax.jit, static_argnames=("kind",))
def kl_estimator(logp_p: Array, logp_q: Array, kind: str = "k1",
                 mask: Array | None = None) -> Array:
  """Per-sample estimators of KL(p‖q) from log-probs of tokens (or sequences) drawn from p.

  With log r = log q − log p: k1 = −log r (unbiased, can be negative), k2 = ½(log r)²
  (biased, low variance), k3 = (r − 1) − log r (unbiased, never negative).

  Args:
    logp_p: log p of the sampled items, any shape.
    logp_q: log q of the same items.
    kind: "k1", "k2" or "k3".
    mask: optional, same shape; masked entries give 0.

  Returns:
    Float32 array of the input shape.
  """
  log_r = logp_q.astype(jnp.float32) - logp_p.astype(jnp.float32)
  if kind == "k1":
    est = -log_r
  elif kind == "k2":
    est = 0.5 * log_r * log_r
  elif kind == "k3":
    est = jnp.expm1(log_r) - log_r
  else:
    raise ValueError(f"Unknown KL estimator {kind!r}; use one of {ESTIMATORS}.")
  return _masked(est, mask)


def _seq_sum(logp: Array, mask: Array) -> Array:
  return jnp.sum(_masked(logp.astype(jnp.float32), mask), axis=-1)


@functools.partial(jax.jit, static_argnames=("log",))
def is_weights(logp_target: Array, logp_behavior: Array, mask: Array, log: bool = False) -> Array:
  """Sequence importance weights w = π_target(y) / π_behavior(y) of trajectories drawn from the
  behavior policy, from per-token log-probs [B, T] of their realized tokens.

  Args:
    logp_target: per-token log-probs under the policy the expectation is wanted for.
    logp_behavior: per-token log-probs under the policy that sampled the trajectories.
    mask: [B, T] completion mask.
    log: return log w instead (float32 overflows past log w ≈ 88; long sequences get there).

  Returns:
    Float32 [B].
  """
  log_w = _seq_sum(logp_target, mask) - _seq_sum(logp_behavior, mask)
  return log_w if log else jnp.exp(log_w)


@functools.partial(jax.jit, static_argnames=("kind",))
def sequence_kl(logp_p: Array, logp_q: Array, mask: Array, logp_behavior: Array | None = None,
                kind: str = "k1") -> Array:
  """Per-sequence Monte-Carlo estimate of the sequence-level KL(p‖q) (the paper's Eq. 1).

  On-policy (trajectories sampled from p, `logp_behavior=None`): k1 is log p(y) − log q(y) and
  k3 is (q(y)/p(y) − 1) − log(q(y)/p(y)). Off-policy (sampled from μ, Eq. 3): each is
  importance weighted by w = p(y)/μ(y); the k3 form adds the zero-mean control variate
  q(y)/μ(y) − w, so it reads w·log(p/q) − w + q/μ, which is w·log w − w + 1 when μ = q.
  Both stay unbiased; their variance is what the pilot study measures.

  Args:
    logp_p: per-token log-probs [B, T] of the realized tokens under p.
    logp_q: the same under q.
    mask: [B, T] completion mask.
    logp_behavior: per-token log-probs under the sampling policy μ, when it is not p.
    kind: "k1" or "k3".

  Returns:
    Float32 [B]. Off-policy values overflow to inf in float32 when |log w| > 88.
  """
  if kind not in ("k1", "k3"):
    raise ValueError(f"sequence_kl supports kind 'k1' or 'k3', got {kind!r}.")
  lp, lq = _seq_sum(logp_p, mask), _seq_sum(logp_q, mask)
  lb = lp if logp_behavior is None else _seq_sum(logp_behavior, mask)
  w = jnp.exp(lp - lb)
  est = w * (lp - lq)
  if kind == "k3":
    est = est - w + jnp.exp(lq - lb)
  return est
