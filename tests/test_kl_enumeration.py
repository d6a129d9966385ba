"""Exact expectations of the sequence estimators, by enumerating every completion of a tiny model.

With a vocabulary of 4 and 3 completion tokens there are 64 sequences, so expectations are sums
over all of them weighted by their exact probabilities: no sampling noise, and an estimator's
bias would show up at float32 round-off level.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from kdknob_jax.models import ModelConfig, forward, init_params
from kdknob_jax.ops import kl
from conftest import TINY

VOCAB, PROMPT, LENGTH = 4, (1, 3), 3


def _model(seed: int, scale: float):
  cfg = ModelConfig.from_hf(dict(TINY["qwen3"], vocab_size=VOCAB))
  params = init_params(cfg, jax.random.PRNGKey(seed))
  # Sharper heads than the random init, so the two models differ by a visible KL.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x * scale if "lm_head" in jax.tree_util.keystr(path) else x, params)
  return cfg, params


@pytest.fixture(scope="module")
def enumerated():
  seqs = np.array(list(itertools.product(range(VOCAB), repeat=LENGTH)), np.int32)
  tokens = np.concatenate([np.tile(PROMPT, (len(seqs), 1)), seqs], axis=1)
  out = {}
  for name, seed, scale in (("p", 0, 40.0), ("q", 1, 25.0)):
    cfg, params = _model(seed, scale)
    logits, _ = forward(params, cfg, jnp.asarray(tokens))
    # Position t predicts token t+1: the completion's predictors are the last LENGTH slots
    # before the end.
    out[name] = np.asarray(logits[:, len(PROMPT) - 1:-1], np.float32)
  mask = np.ones((len(seqs), LENGTH), np.float32)
  lp = np.asarray(kl.realized_logprobs(out["p"], seqs))
  lq = np.asarray(kl.realized_logprobs(out["q"], seqs))
  return dict(seqs=seqs, p_logits=out["p"], q_logits=out["q"], lp=lp, lq=lq, mask=mask)


def _probs(logp_tokens):
  return np.exp(np.sum(logp_tokens.astype(np.float64), axis=1))


def test_enumeration_is_a_distribution(enumerated):
  for key in ("lp", "lq"):
    assert abs(_probs(enumerated[key]).sum() - 1.0) < 1e-5


def test_rao_blackwell_token_kl_sum_equals_sequence_kl(enumerated):
  e = enumerated
  p = _probs(e["lp"])
  exact = float(np.sum(p * (np.sum(e["lp"], 1) - np.sum(e["lq"], 1))))
  assert exact > 0.05  # the models differ, so the identity below is not 0 = 0
  seq_k1 = np.asarray(kl.sequence_kl(e["lp"], e["lq"], e["mask"]), np.float64)
  seq_k3 = np.asarray(kl.sequence_kl(e["lp"], e["lq"], e["mask"], kind="k3"), np.float64)
  token_sum = np.asarray(kl.token_kl(e["p_logits"], e["q_logits"], e["mask"]), np.float64).sum(1)
  np.testing.assert_allclose(np.sum(p * seq_k1), exact, rtol=1e-5)
  np.testing.assert_allclose(np.sum(p * seq_k3), exact, rtol=1e-4)
  # E_p[Σ_t KL(p_t‖q_t)] equals the sequence KL: the token form is its Rao-Blackwellization.
  np.testing.assert_allclose(np.sum(p * token_sum), exact, rtol=1e-5)
  # Rao-Blackwellization lowers the variance (the reason token-level KL is the usual loss).
  var = lambda x: np.sum(p * x * x) - np.sum(p * x) ** 2  # pylint: disable=unnecessary-lambda-assignment
  assert var(token_sum) < var(seq_k1)


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_importance_weighted_estimator_is_unbiased(enumerated, kind):
  e = enumerated
  p, q = _probs(e["lp"]), _probs(e["lq"])
  # Reverse KL of the student q against the teacher p ...
  exact_rkl = float(np.sum(q * (np.sum(e["lq"], 1) - np.sum(e["lp"], 1))))
  # ... estimated from trajectories that the teacher p sampled (off-policy, Eq. 3).
  off = np.asarray(kl.sequence_kl(e["lq"], e["lp"], e["mask"], logp_behavior=e["lp"],
                                  kind=kind), np.float64)
  np.testing.assert_allclose(np.sum(p * off), exact_rkl, rtol=1e-4)
  # Without the weights the same samples estimate something else.
  unweighted = np.sum(p * (np.sum(e["lq"], 1) - np.sum(e["lp"], 1)))
  assert abs(unweighted - exact_rkl) > 0.05
  # The weights themselves have expectation 1 under the behavior policy.
  w = np.asarray(kl.is_weights(e["lq"], e["lp"], e["mask"]), np.float64)
  np.testing.assert_allclose(np.sum(p * w), 1.0, rtol=1e-5)
