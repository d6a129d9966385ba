"""Sampling draws from the right distribution: chi-square tests against the exact softmax, the
tail of a Qwen-sized vocabulary, where a float32 inverse CDF could not draw some entries, both
levels of the two-level Gumbel-max draw, and a vocabulary split over simulated devices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from conftest import random_ids
from kdknob_jax.decode import Sampler, SamplingConfig, filtered_logits, sample
from kdknob_jax.decode.sampling import (block_log_masses, block_size, gumbel_from_bits,
                                        gumbel_noise)
from kdknob_jax.hf import load_model
from kdknob_jax.models import forward

HERE = Path(__file__).parent
DRAWS = 12_000
VOCAB = 151_936  # Qwen's
TAIL_DRAWS = 16_384  # rows of the full vocabulary: about 5 s on 2 shared CPU cores


@pytest.fixture(scope="module")
def model_and_logits(tiny_dir):
  m = load_model(tiny_dir("llama_untied"))
  prompt = random_ids(256, (7,), seed=4).tolist()
  # Random tiny weights give nearly flat logits; a 10x LM head spreads them (top token about
  # 0.1, 124 tokens for 90% of the mass), so the filters cut real mass.
  params = dict(m.params, lm_head=m.params["lm_head"] * 10.0)
  logits = forward(params, m.config, np.asarray([prompt]))[0][:, -1]  # [1, V]
  return m.config, params, prompt, logits


@pytest.mark.parametrize("cfg", [
    SamplingConfig(1.0),
    SamplingConfig(0.6),
    SamplingConfig(1.0, top_k=12),
    SamplingConfig(1.0, top_p=0.7),
    SamplingConfig(1.5, top_k=30, top_p=0.8),
], ids=["t1", "t0.6", "topk12", "topp0.7", "t1.5_k30_p0.8"])
def test_first_token_frequencies_match_exact_distribution(model_and_logits, cfg):
  mcfg, params, prompt, logits = model_and_logits
  exact = np.asarray(jax.nn.softmax(filtered_logits(logits, cfg), -1)[0], np.float64)
  gen = Sampler(mcfg)(params, [prompt], n=DRAWS, max_new_tokens=1, sampling=cfg,
                      key=jax.random.PRNGKey(21))
  counts = np.bincount(gen.tokens[:, 0], minlength=exact.size)
  kept = exact > 0
  assert counts[~kept].sum() == 0, "a filtered-out token was sampled"
  if cfg.top_k:
    assert kept.sum() <= cfg.top_k  # float logits: no ties at the k-th value here
  # Pool the rarest outcomes so every expected count is at least 5 (chi-square validity).
  order = np.argsort(exact[kept])
  exp_k, obs_k = exact[kept][order] * DRAWS, counts[kept][order]
  cut = int(np.searchsorted(np.cumsum(exp_k), 5.0)) + 1
  exp_bins = np.concatenate([[exp_k[:cut].sum()], exp_k[cut:]])
  obs_bins = np.concatenate([[obs_k[:cut].sum()], obs_k[cut:]])
  assert len(exp_bins) >= 5, "the test needs a spread distribution"
  p = stats.chisquare(obs_bins, exp_bins * obs_bins.sum() / exp_bins.sum()).pvalue
  assert p > 1e-3, (p, len(exp_bins))


def test_wrong_distribution_is_detected(model_and_logits):
  """The test has power: samples at T=1 fail against the T=0.6 distribution."""
  mcfg, params, prompt, logits = model_and_logits
  other = np.asarray(jax.nn.softmax(filtered_logits(logits, SamplingConfig(0.6)), -1)[0],
                     np.float64)
  other /= other.sum()
  gen = Sampler(mcfg)(params, [prompt], n=DRAWS, max_new_tokens=1,
                      sampling=SamplingConfig(1.0), key=jax.random.PRNGKey(21))
  counts = np.bincount(gen.tokens[:, 0], minlength=other.size)
  big = other * DRAWS >= 5
  exp_bins = np.append(other[big] * DRAWS, other[~big].sum() * DRAWS)
  obs_bins = np.append(counts[big], counts[~big].sum())
  assert stats.chisquare(obs_bins, exp_bins).pvalue < 1e-6


@pytest.fixture(scope="module")
def heavy_tail():
  """Probabilities [V], float64, summing to 1, shuffled: 16 head tokens with about a quarter of
  the mass, 32,560 tokens log-uniform in [1e-6, 1e-4] (about 0.7 together) and the other
  119,360 log-uniform in [1e-7, 1e-6] (about 0.05)."""
  rng = np.random.default_rng(0)
  upper = np.exp(rng.uniform(np.log(1e-6), np.log(1e-4), 32_560))
  deep = np.exp(rng.uniform(np.log(1e-7), np.log(1e-6), VOCAB - 16 - upper.size))
  head = 0.5 ** np.arange(1.0, 17.0)
  head *= (1.0 - upper.sum() - deep.sum()) / head.sum()
  return np.concatenate([head, upper, deep])[rng.permutation(VOCAB)]


def _gumbel_max_rate(p: float, noise_top: np.ndarray, atom: float) -> float:
  """How often Gumbel-max picks an outcome of probability p, given its noise's top values.

  The outcome wins iff log p + g > M, where M, the max of the other outcomes' perturbed
  log-probs, is Gumbel with location log(1 - p). So the rate is E[exp(-c e^-g)], c = (1 - p) / p,
  over the noise g: exactly p for exact Gumbel noise, however the rest of the mass is split.
  The others' noise is taken as exact, since their max lies in the bulk, where the bits are
  finely spaced; so is this outcome's noise past its top values: with g = -log(-log(1 - u)),
  the bit patterns past u0 = len(noise_top) * atom add the integral of (1 - u)^c over [u0, 1].

  Args:
    p: the outcome's probability.
    noise_top: float64, the noise's largest values in decreasing order, one per bit pattern.
    atom: the probability of each bit pattern.
  """
  c = (1.0 - p) / p
  bulk = (1.0 - noise_top.size * atom) ** (c + 1.0) / (c + 1.0)
  return float(np.sum(np.exp(-c * np.exp(-noise_top))) * atom + bulk)


def test_every_token_down_to_1e_7_is_drawn_at_its_probability():
  """The sampler's own float32 noise at every bit pattern that matters gives one-level rates
  within 1e-5 of p for p in 1e-5..1e-7 (and within 1% at 1e-9): a token's rate depends on its
  probability alone. The two-level draw picks a block of share P of the row's mass at rate
  r(P), then the token, share p / P of its block, at rate r(p / P), with independent noise:
  for every split the product is within 2e-5 of p, so this holds for each entry of a
  151,936-token vocabulary wherever it lies. The 23-bit uniforms of jax.random.gumbel's
  default, replayed in numpy, draw a 1e-7 token at about half its rate."""
  probs = (1e-5, 1e-6, 1e-7, 1e-9)
  # Past bit pattern n, the exponential -log(1 - u) exceeds 40 p / (1 - p): terms below e^-40
  # for p <= 1e-5, and the bulk term covers the rest for the larger shares.
  n = int(np.ceil(40.0 * max(probs) * 2.0**32))
  noise = jax.jit(gumbel_from_bits)
  top = np.asarray(noise(jnp.arange(n, dtype=jnp.uint32)), np.float64)
  coarse = np.asarray(noise(jnp.asarray(np.arange(0, 2**32, 4099, dtype=np.uint64), jnp.uint32)))
  assert np.all(np.diff(top) <= 0) and np.all(np.diff(coarse) <= 0), "noise must not increase"
  assert np.isfinite(coarse).all() and abs(top[0] - 33 * np.log(2)) < 1e-5
  def rate(q):
    return _gumbel_max_rate(q, top, 2.0**-32)
  rates = {p: rate(p) / p for p in probs}
  for p in probs[:3]:
    assert abs(rates[p] - 1.0) < 1e-5, rates
  assert abs(rates[1e-9] - 1.0) < 0.01, rates
  assert abs(rate(1.0) - 1.0) < 1e-12  # a block holding all the mass is always chosen
  for p in probs:
    # The block's share: the token alone, the geometric means, a large and the whole mass.
    for share in (p, p**0.75, p**0.5, 1e-2, 0.5, 1.0):
      two = rate(share) * rate(p / share) / p
      assert abs(two - 1.0) < (2e-5 if p >= 1e-7 else 0.02), (p, share, two)

  # jax.random.gumbel(mode="low"): -log(-log(u)), u = k 2^-23; its top is u = 1 - m 2^-23.
  m = np.arange(1, 2**23 + 1)
  u = (1.0 - m * 2.0**-23).astype(np.float32)
  low = -np.log(-np.log(np.maximum(u, np.finfo(np.float32).tiny))).astype(np.float64)
  low_rates = {p: _gumbel_max_rate(p, low, 2.0**-23) / p for p in (1e-6, 1e-7)}
  assert low_rates[1e-7] < 0.6 and low_rates[1e-6] < 0.95, low_rates


def test_float32_inverse_cdf_could_not_draw_some_of_them(heavy_tail):
  """The replaced draw, replayed in numpy (a sequential float32 sum standing in for XLA's): the
  first index whose cumulative mass reaches u * total, for u = k 2^-23, k = 1..2^23, the only
  uniforms it could use. Entries of probability >= 1e-7 that no u selects were never drawn."""
  logits = np.log(heavy_tail).astype(np.float32)
  cdf = np.cumsum(np.exp(logits - logits.max()), dtype=np.float32)
  u = (np.arange(1, 2**23 + 1) * 2.0**-23).astype(np.float32)
  chosen = np.minimum(np.searchsorted(cdf, u * cdf[-1], side="left"), VOCAB - 1)
  unreachable = np.ones(VOCAB, bool)
  unreachable[chosen] = False
  lost = unreachable & (heavy_tail >= 1e-7)
  # 395 of the 9,493 entries under 1.2e-7: their mass is under the 2^-23 spacing of the u grid.
  assert lost.sum() > 200, lost.sum()
  # The two-level draw reaches each of them, in the blocks `sample` cuts: its block's log-mass
  # lies within the noise's range (largest minus smallest value) of every other block's, and
  # its logit within that range of its block's max, so some noise at each level makes it win.
  # (Its rate, p to 2e-5, is the test above; the next test draws the tail in bulk.)
  spread = float(gumbel_from_bits(jnp.uint32(0)) - gumbel_from_bits(jnp.uint32(2**32 - 1)))
  s = block_size(VOCAB)
  x_bns, log_mass_bn, _ = block_log_masses(jnp.asarray(logits)[None], s)
  log_mass, block_max = np.asarray(log_mass_bn[0]), np.asarray(jnp.max(x_bns[0], axis=-1))
  block = np.flatnonzero(lost) // s
  assert np.all(log_mass[block] > log_mass.max() - spread)
  assert np.all(logits[lost] > block_max[block] - spread)


def test_tail_of_a_151936_token_vocabulary_matches(heavy_tail):
  """`sample` itself: chi-square over 20 buckets of equal tail mass (the tail sorted by
  probability, the 1e-7..1e-6 entries filling the first one and a quarter) and the head, then
  a Poisson check of the 1e-7..1e-6 entries alone (about 800 expected hits)."""
  draw = jax.jit(lambda x, keys: sample(jnp.broadcast_to(x, (keys.shape[0], VOCAB)), keys,
                                        SamplingConfig())[0])
  logits = jnp.asarray(np.log(heavy_tail), jnp.float32)
  keys = jax.random.split(jax.random.PRNGKey(7), TAIL_DRAWS)
  tokens = np.concatenate([np.asarray(draw(logits, keys[i:i + 256]))
                           for i in range(0, TAIL_DRAWS, 256)])
  tail = np.flatnonzero(heavy_tail < 1e-3)
  tail = tail[np.argsort(heavy_tail[tail], kind="stable")]
  mass = heavy_tail[tail]
  bucket = np.full(VOCAB, 20)  # the head
  bucket[tail] = ((np.cumsum(mass) - mass / 2) / mass.sum() * 20).astype(int)
  obs = np.bincount(bucket[tokens], minlength=21)
  exp = np.bincount(bucket, weights=heavy_tail, minlength=21) * TAIL_DRAWS
  assert exp.min() > 50
  assert stats.chisquare(obs, exp).pvalue > 1e-3, (obs, exp.round(1))
  deep = heavy_tail < 1e-6
  hits, expected = int(deep[tokens].sum()), float(heavy_tail[deep].sum()) * TAIL_DRAWS
  tails = stats.poisson.cdf(hits, expected), stats.poisson.sf(hits - 1, expected)
  assert min(tails) > 5e-4, (hits, expected)


def test_filters_on_a_151936_token_vocabulary(heavy_tail):
  """Top-k and top-p cut real mass; no filtered token is drawn; the log-probs are the sampling
  distribution's and the untempered model's."""
  # Top-k keeps 5,000, then top-p about 1,600 of them, down to p ~ 8e-5.
  cfg = SamplingConfig(1.2, top_k=5000, top_p=0.5)
  logits = jnp.broadcast_to(jnp.asarray(np.log(heavy_tail), jnp.float32), (128, VOCAB))
  keys = jax.random.split(jax.random.PRNGKey(8), 128)
  tokens, logprob, model_logprob = jax.jit(lambda x, k: sample(x, k, cfg))(logits, keys)
  filtered = np.asarray(filtered_logits(logits[:1], cfg)[0])
  kept = np.isfinite(filtered)
  assert 16 < kept.sum() < 5000
  tokens = np.asarray(tokens)
  assert kept[tokens].all(), "a filtered-out token was sampled"
  assert len(np.unique(tokens)) > 50  # the draws spread over the kept tail, not the head alone
  np.testing.assert_allclose(logprob, jax.nn.log_softmax(filtered)[tokens], rtol=1e-5)
  np.testing.assert_allclose(model_logprob, np.log(heavy_tail)[tokens], rtol=1e-5)


def test_both_levels_with_padding_and_empty_blocks():
  """`sample` on 1,000 tokens (32 blocks of 32, the last 8 tokens and 24 of padding), with whole
  blocks and single tokens filtered out: the blocks' frequencies and each token's, by chi-square against the
  exact softmax; no filtered token or padding drawn; the log-probs of the draw."""
  v, draws = 1000, 60_000
  assert block_size(v) == 32  # 1,000 = 8 x 125, too coarse a split: padded to 1,024
  rng = np.random.default_rng(3)
  x = rng.standard_normal(v)
  x[:64] += 2.5  # the head: two blocks with most of the mass
  x[96:256] = -np.inf  # five empty blocks
  x[rng.choice(v, 60, replace=False)] = -np.inf
  logits = jnp.asarray(x, jnp.float32)
  step = jax.jit(lambda k: sample(jnp.broadcast_to(logits, (k.shape[0], v)), k,
                                  SamplingConfig(0.8)))
  keys = jax.random.split(jax.random.PRNGKey(11), draws)
  out = [step(keys[i:i + 10_000]) for i in range(0, draws, 10_000)]
  tokens, logprob, model_logprob = (np.concatenate([np.asarray(o[i]) for o in out])
                                    for i in range(3))
  exact = np.asarray(jax.nn.softmax(logits / 0.8), np.float64)
  kept = exact > 0
  assert tokens.max() < v and kept[tokens].all(), "a filtered-out token or the padding was drawn"
  counts = np.bincount(tokens, minlength=v)
  block_exp = np.bincount(np.arange(v) // 32, weights=exact) * draws
  block_obs = np.bincount(tokens // 32, minlength=block_exp.size)
  live = block_exp > 0
  block_exp = block_exp[live] * draws / block_exp[live].sum()
  assert stats.chisquare(block_obs[live], block_exp).pvalue > 1e-3
  # Tokens in increasing probability, pooled into runs of about 10 expected draws or more.
  order = np.argsort(exact[kept])
  exp_k, obs_k = exact[kept][order] * draws, counts[kept][order]
  run = np.unique((np.cumsum(exp_k) - exp_k) // 10.0, return_inverse=True)[1]
  exp_bins, obs_bins = np.bincount(run, weights=exp_k), np.bincount(run, weights=obs_k)
  assert exp_bins.min() >= 5 and len(exp_bins) > 200, (exp_bins.min(), len(exp_bins))
  assert stats.chisquare(obs_bins, exp_bins * draws / exp_bins.sum()).pvalue > 1e-3
  np.testing.assert_allclose(logprob, np.log(exact[tokens]), atol=2e-6, rtol=0)
  np.testing.assert_allclose(model_logprob, jax.nn.log_softmax(logits)[tokens], atol=2e-6)


def test_a_rows_draw_never_depends_on_its_batch_mates():
  """Both levels' noise comes from the row's key alone, so a row drawn alone or among others
  (of other logits) gets the same token."""
  rng = np.random.default_rng(5)
  logits = jnp.asarray(rng.standard_normal((6, VOCAB)) * 3.0, jnp.float32)
  keys = jax.random.split(jax.random.PRNGKey(2), 6)
  draw = jax.jit(lambda x, k: sample(x, k, SamplingConfig())[0])
  together = np.asarray(draw(logits, keys))
  for r in (0, 4):
    np.testing.assert_array_equal(np.asarray(draw(logits[r:r + 1], keys[r:r + 1])),
                                  together[r:r + 1])
  swapped = np.asarray(draw(logits[::-1], keys[::-1]))
  np.testing.assert_array_equal(swapped, together[::-1])


def test_block_sizes_tile_the_paper_vocabularies():
  """Qwen's, SmolLM2's, Llama 3's and Gemma 3's vocabularies split into a power-of-two count of
  whole blocks, so a vocabulary sharded over 2, 4 or 8 devices splits between blocks."""
  for vocab, blocks in ((151_936, 128), (49_152, 128), (128_256, 256), (262_144, 512),
                        (256, 16)):
    assert vocab % block_size(vocab) == 0 and vocab // block_size(vocab) == blocks, vocab


def test_vocabulary_sharded_over_4_devices_draws_one_devices_tokens():
  """[16, 151,936] logits on 8 simulated devices (rows over 2, the vocabulary over 4): the same
  tokens as one device for 256 draws, at T = 1 and filtered, on spread and on nearly flat
  logits; also 64 draws of a padded 50,260-token vocabulary. A child process: the simulated
  devices need their own."""
  proc = subprocess.run([sys.executable, str(HERE / "_sampling_mesh_child.py")],
                        capture_output=True, text=True, timeout=300, check=False)
  assert "SAMPLING_MESH_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_a_tokens_noise_depends_on_its_row_key_and_index_alone():
  """With partitionable threefry, the bits at index i are threefry of (key, i) for any array
  length: the noise of either level depends neither on how long the array is nor on the row's
  batch mates (and JAX's random values never depend on sharding)."""
  assert jax.config.jax_threefry_partitionable
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  full = np.asarray(gumbel_noise(keys, VOCAB))
  np.testing.assert_array_equal(np.asarray(gumbel_noise(keys, 1000)), full[:, :1000])
  np.testing.assert_array_equal(np.asarray(gumbel_noise(keys[1:2], VOCAB)), full[1:2])
