"""Next-token sampling on float32 logits: greedy, temperature, top-k and top-p, combinable.

The filters apply in Hugging Face's order (temperature, then top-k, then top-p), with the same
tie and boundary conventions: top-k keeps every token whose logit equals the k-th largest, and
top-p keeps the smallest set of most likely tokens whose probability reaches `top_p` (the token
that crosses the threshold is kept).

The draw is the Gumbel-max trick: the argmax over the vocabulary of the filtered logits plus
independent standard Gumbel noise is a token drawn from their softmax, with every token
weighed by its own logit. An inverse CDF over a float32 cumulative sum is not: the targets
u * total of a uniform with 23 random bits lie 2^-23 of the total apart, so an entry with less
mass can fall between two of them, and the running sum absorbs increments below half its last
place. Entries under about 1e-7 of the row's mass could then never be drawn, their mass going
to neighbours (6-38% of the entries of a 151,936-token vocabulary in the rows measured for
issue 15). The pilot plots each entry's KL against how often it was sampled, down to the whole
vocabulary, so the draw must not reshape the tail.

The noise comes from 32 random bits per token (`gumbel_from_bits`), not from
`jax.random.gumbel`'s default, whose 23-bit uniforms cap the noise at about 15.9 and draw a
token of probability 1e-7 at about half its rate (tests/test_sampling_distribution.py works
out both). Each row's noise depends on its own key and the token's index alone, so rows never
see their batch mates, and a mesh draws one device's tokens up to float ties in the logits
(JAX's random values do not depend on sharding). With `jax_threefry_partitionable` on (the
default in JAX 0.10.2, the oldest this project accepts) the bits at index i are threefry of
(key, i), so each device makes its own vocabulary shard's noise; with it off, XLA builds
full-vocabulary bits on every device.

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
    # Against the row's max, the logits are small, so adding noise up to ~23 rounds them at a
    # place far below a tail token's log-probability (the max is exact on any sharding).
    perturbed_bv = x - jnp.max(x, axis=-1, keepdims=True) + gumbel_noise(keys, x.shape[-1])
    # A filtered token stays at -inf, and filtered_logits keeps at least one finite per row.
    tokens = jnp.argmax(perturbed_bv, axis=-1).astype(jnp.int32)
    logprob = _pick(jax.nn.log_softmax(x, axis=-1), tokens)
  model_logprob = _pick(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), tokens)
  return tokens, logprob, model_logprob


def gumbel_noise(keys: jax.Array, vocab: int) -> jax.Array:
  """Standard Gumbel noise [B, V], row b from keys[b] alone (32 random bits a token)."""
  bits_bv = jax.vmap(lambda k: jax.random.bits(k, (vocab,), jnp.uint32))(keys)
  return gumbel_from_bits(bits_bv)


def gumbel_from_bits(bits: jax.Array) -> jax.Array:
  """Gumbel noise -log(-log(1 - u)) for u = (bits + 1/2) / 2^32, elementwise.

  Non-increasing in the bits. The top of the noise, which decides whether a rare token wins,
  comes from the bits nearest 0, where u keeps float32's relative precision: the largest value
  is 33 ln 2 (about 22.9) and each of the 2^32 bit patterns carries 2^-32 of the mass.

  Args:
    bits: uint32, any shape.

  Returns:
    float32 of the same shape, finite.
  """
  low_half = bits < jnp.uint32(1 << 31)
  # v = min(u, 1 - u): the complemented bits of the high half are the integer behind 1 - u, so
  # neither tail of the exponential -log(1 - u) loses precision to cancellation.
  v = (jnp.where(low_half, bits, ~bits).astype(jnp.float32) + 0.5) * 2.0**-32
  exponential = jnp.where(low_half, -jnp.log1p(-v), -jnp.log(v))
  return -jnp.log(exponential)


def _pick(values_bv: jax.Array, tokens_b: jax.Array) -> jax.Array:
  return jnp.take_along_axis(values_bv, tokens_b[:, None], axis=-1)[:, 0]
