"""Sampling draws from the right distribution: chi-square tests against the exact softmax."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy import stats

from conftest import random_ids
from kdknob_jax.decode import Sampler, SamplingConfig, filtered_logits
from kdknob_jax.hf import load_model
from kdknob_jax.models import forward

DRAWS = 12_000


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

