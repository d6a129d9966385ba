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

It runs on two levels (`two_level_gumbel_max`), so that a row needs N + S random numbers, not
V: the vocabulary is cut into N blocks of S tokens (`block_size`: 128 of 1,187 for Qwen's
151,936), a block is drawn by Gumbel-max over the blocks' log-masses, then a token by
Gumbel-max over that block's logits, with independent noise. The block comes with its share
P_k of the mass and the token with p_j / P_k, so the product is p_j. Float32 rounds the
log-masses (by at most 1e-6, median 1.5e-7, in the rows measured), which moves a block's
rate by that much relative, as rounding x - max + noise does in a one-level draw; it never
takes a token out of reach, since inside its block each token is weighed by its own logit.

The noise comes from 32 random bits per value (`gumbel_from_bits`), not from
`jax.random.gumbel`'s default, whose 23-bit uniforms cap the noise at about 15.9 and draw a
token of probability 1e-7 at about half its rate (tests/test_sampling_distribution.py works
out both, and both factors of the two-level rate). Each row's noise depends on its own key
alone, so rows never see their batch mates, and a mesh draws one device's tokens up to float
ties: JAX's random values do not depend on sharding, maxima are exact, and each block's mass
is summed on the device that holds the block (tests/_sampling_mesh_child.py).

Einsum letters: B rows, V vocabulary, K the kept candidates of top-k, N blocks of S tokens.
"""

from __future__ import annotations

import dataclasses
import math

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
    used (0 for greedy, a point mass), model_logprob [B] under the untempered model, T=1;
    the same numbers when the sampling distribution is the model's).
  """
  x = filtered_logits(logits, cfg)
  if cfg.greedy:
    tokens = jnp.argmax(x, axis=-1).astype(jnp.int32)
    logprob = jnp.zeros(tokens.shape, jnp.float32)
  else:
    tokens, logprob = two_level_gumbel_max(x, keys)
    if _unfiltered(cfg):
      return tokens, logprob, logprob  # the sampling distribution is the model's
  return tokens, logprob, _log_softmax_at(logits.astype(jnp.float32), tokens)


def block_size(vocab: int) -> int:
  """S, tokens per block of `two_level_gumbel_max`: near sqrt(V), which about minimizes the
  noise per row, N + S (on CPU, S from 256 to 1,187 cost the same for 151,936 tokens: the
  pass over V to sum the blocks dominates).

  Where it costs little, the blocks tile the vocabulary exactly and their count is a power of
  two (N = the largest power of two dividing V, up to sqrt(V)): a vocabulary split over 2^k
  devices then splits between blocks, and every block is summed on one device with no
  exchange. Qwen's 151,936 tokens make 128 blocks of 1,187, SmolLM2's 49,152 make 128 of
  384, Llama 3's 128,256 make 256 of 501, Gemma 3's 262,144 make 512 of 512. Otherwise the
  power of two nearest sqrt(V), padded: the same draw, but on a mesh XLA then gathers each
  row's whole vocabulary onto every device to cut it.
  """
  root = math.isqrt(vocab)
  nb = 1
  while vocab % (2 * nb) == 0 and 2 * nb <= root:
    nb *= 2
  if vocab // nb <= 4 * root:
    return vocab // nb
  return 1 << max(0, round(math.log2(vocab) / 2))


def block_log_masses(x_bv: jax.Array, block: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Cuts logits into blocks and takes each block's log probability mass against the row max.

  Args:
    x_bv: float32 [B, V] logits, -inf for excluded tokens; each row needs a finite one.
    block: S, tokens per block; V is padded with -inf to a multiple of it.

  Returns:
    (x_bns [B, N, S], the padded logits in blocks; log_mass_bn [B, N], each block's
    log(sum(exp(x - max))), -inf for a block without a finite logit; max_b [B], the row max).
  """
  b, v = x_bv.shape
  nb = -(-v // block)
  if nb * block != v:
    x_bv = jnp.pad(x_bv, ((0, 0), (0, nb * block - v)), constant_values=_NEG_INF)
  x_bns = x_bv.reshape(b, nb, block)
  block_max_bn = jnp.max(x_bns, axis=-1)
  max_b = jnp.max(block_max_bn, axis=-1)  # exact on any sharding
  # Each block's sum against its own max (terms in (0, 1], the sum in [1, S]) keeps the row
  # max out of the fused sum, where XLA:CPU would otherwise write exp(x - max) out in full
  # (4x slower for [64, 151936]). A block is summed on its own, on a mesh too (`block_size`),
  # so its mass does not depend on how the vocabulary is split.
  shift_bn = jnp.where(block_max_bn == _NEG_INF, 0.0, block_max_bn)
  sum_bn = jnp.sum(jnp.exp(x_bns - shift_bn[..., None]), axis=-1)
  return x_bns, (block_max_bn - max_b[:, None]) + jnp.log(sum_bn), max_b


def two_level_gumbel_max(x_bv: jax.Array, keys: jax.Array,
                         block: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Draws one token per row from softmax(x) by Gumbel-max over blocks, then inside one.

  Block k is chosen with probability P_k = (its mass) / (the row's) by the argmax of the
  blocks' log-masses plus Gumbel noise, then token j of it with probability p_j / P_k by the
  argmax of the block's logits plus independent Gumbel noise: p_j in all. The noise of a row
  comes from its key alone, one stream per level (fold_in 0 and 1): N + S values, not V.

  Exact up to float32. A block's log-mass is rounded by about 1e-6 at most (the sum of up to
  S terms, and the block's max against the row's), which moves its rate by as much relative;
  inside the block each token is weighed by its own logit, so no rounding of the masses takes
  a token out of reach. The noise's bounded range (26 at each level, from 32 bits) does: only
  a token under about S * 5e-12 of the top token's probability (one level: 5e-12) can be out
  of reach, far below where the noise already falls short of exact rates (1% at p = 1e-9).

  Args:
    x_bv: float32 [B, V] logits; -inf tokens are never drawn; each row needs a finite one.
    keys: [B] PRNG keys, one per row.
    block: S, tokens per block (default `block_size(V)`).

  Returns:
    (tokens int32 [B], logprob [B] of each token under softmax(x)).
  """
  s = block or block_size(x_bv.shape[-1])
  x_bns, log_mass_bn, max_b = block_log_masses(x_bv, s)
  # A block without a finite logit has log-mass -inf and loses to the row max's block (>= 0),
  # so the chosen block holds a finite logit, and its -inf tokens (padding too) lose to it.
  block_b = jnp.argmax(log_mass_bn + _stream_noise(keys, 0, log_mass_bn.shape[-1]), axis=-1)
  # Against the row's max the logits are small, so adding noise up to ~23 rounds them at a
  # place far below a tail token's log-probability.
  z_bs = jnp.take_along_axis(x_bns, block_b[:, None, None], axis=1)[:, 0] - max_b[:, None]
  inside_b = jnp.argmax(z_bs + _stream_noise(keys, 1, s), axis=-1)
  tokens = (block_b * s + inside_b).astype(jnp.int32)
  # log p_j = z_j - log(sum of the blocks' masses): the masses are at hand, no pass over V.
  return tokens, _pick(z_bs, inside_b) - jax.nn.logsumexp(log_mass_bn, axis=-1)


def gumbel_noise(keys: jax.Array, vocab: int) -> jax.Array:
  """Standard Gumbel noise [B, V], row b from keys[b] alone (32 random bits a token)."""
  bits_bv = jax.vmap(lambda k: jax.random.bits(k, (vocab,), jnp.uint32))(keys)
  return gumbel_from_bits(bits_bv)


def _stream_noise(keys: jax.Array, stream: int, n: int) -> jax.Array:
  """Gumbel noise [B, n] from stream `stream` of each row's key: streams are independent."""
  return gumbel_noise(jax.vmap(lambda k: jax.random.fold_in(k, stream))(keys), n)


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


def _log_softmax_at(x_bv: jax.Array, tokens_b: jax.Array) -> jax.Array:
  """[B] log_softmax(x)[token] from block masses: one fused pass over V, where picking from
  jax.nn.log_softmax writes exp(x - max) out in full (3-4x slower for [64, 151936] on CPU)."""
  _, log_mass_bn, max_b = block_log_masses(x_bv, block_size(x_bv.shape[-1]))
  return (_pick(x_bv, tokens_b) - max_b) - jax.nn.logsumexp(log_mass_bn, axis=-1)


def _unfiltered(cfg: SamplingConfig) -> bool:
  return cfg.temperature == 1.0 and not cfg.top_k and cfg.top_p >= 1.0


def _pick(values_bv: jax.Array, tokens_b: jax.Array) -> jax.Array:
  return jnp.take_along_axis(values_bv, tokens_b[:, None], axis=-1)[:, 0]
