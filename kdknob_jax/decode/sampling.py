"""Next-token sampling on float32 logits: greedy, temperature, top-k and top-p, combinable.

The filters apply in Hugging Face's order (temperature, then top-k, then top-p), with the same
tie and boundary conventions: top-k keeps every token whose logit equals the k-th largest, and
top-p keeps the smallest set of most likely tokens whose probability reaches `top_p` (the token
that crosses the threshold is kept).

Einsum letters: B rows, V vocabulary, K the kept candidates of top-k.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

_NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How a next token is chosen. Hashable: it is a static argument of the jitted decoder.

  Attributes:
    temperature: 0 means greedy (argmax); otherwise logits are divided by it.
    top_k: keep the k most likely tokens; 0 keeps all.
    top_p: nucleus mass in (0, 1]; 1 keeps all.
  """
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not self.temperature >= 0:
      raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}.")
    if not isinstance(self.top_k, int) or self.top_k < 0:
      raise ValueError(f"top_k must be an integer >= 0 (0 keeps every token), got {self.top_k}.")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must lie in (0, 1] (1 keeps every token), got {self.top_p}.")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


GREEDY = SamplingConfig(temperature=0.0)


def filtered_logits(logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """The logits [B, V] of the sampling distribution: tempered, with filtered-out tokens at -inf.

  For greedy decoding the distribution is a point mass, and this returns the raw logits (their
  argmax is the choice).
  """
  x = logits.astype(jnp.float32)
  if cfg.greedy:
    return x
  if cfg.temperature != 1.0:
    x = x / cfg.temperature
  vocab = x.shape[-1]
  k = min(cfg.top_k, vocab) if cfg.top_k else vocab
  if k == vocab and cfg.top_p >= 1.0:
    return x
  # Only the k largest can survive either filter, so top-p sorts K values, not V.
  top_bk, _ = jax.lax.top_k(x, k)
  cutoff = top_bk[:, -1:]
  if cfg.top_p < 1.0:
    probs_bk = jax.nn.softmax(top_bk, axis=-1)
    mass_before = jnp.cumsum(probs_bk, axis=-1) - probs_bk
    kept = jnp.sum(mass_before < cfg.top_p, axis=-1, keepdims=True)  # >= 1: first has mass 0
    cutoff = jnp.take_along_axis(top_bk, kept - 1, axis=-1)
  return jnp.where(x >= cutoff, x, _NEG_INF)


def sample(logits: jax.Array, keys: jax.Array, cfg: SamplingConfig):
  """Chooses one token per row.

  Args:
    logits: float32 [B, V], the model's raw next-token logits.
    keys: [B] PRNG keys (one per row, so a row's draw never depends on its batch mates).
    cfg: the sampling settings.

  Returns:
    (tokens int32 [B], logprob [B] of each token under the sampling distribution actually
    used (0 for greedy, a point mass), model_logprob [B] under the untempered model, T=1).
  """
  x = filtered_logits(logits, cfg)
  if cfg.greedy:
    tokens = jnp.argmax(x, axis=-1).astype(jnp.int32)
    logprob = jnp.zeros(tokens.shape, jnp.float32)
  else:
    # Inverse-CDF sampling: one uniform per row instead of V Gumbel draws. u lies in (0, 1], so
    # the chosen index is the first whose cumulative mass reaches u * total, and a token with
    # zero probability can never be chosen.
    probs_bv = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    cdf_bv = jnp.cumsum(probs_bv, axis=-1)
    u = 1.0 - jax.vmap(lambda k: jax.random.uniform(k, ()))(keys)
    target = u[:, None] * cdf_bv[:, -1:]
    tokens = jnp.sum(cdf_bv < target, axis=-1).astype(jnp.int32)
    tokens = jnp.minimum(tokens, x.shape[-1] - 1)
    logprob = _pick(jax.nn.log_softmax(x, axis=-1), tokens)
  model_logprob = _pick(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), tokens)
  return tokens, logprob, model_logprob


def _pick(values_bv: jax.Array, tokens_b: jax.Array) -> jax.Array:
  return jnp.take_along_axis(values_bv, tokens_b[:, None], axis=-1)[:, 0]
