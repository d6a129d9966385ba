"""Trap diagnostics: per-token scores and per-vocabulary contributions against brute force,
prompt-sharing scoring against a plain full forward, and the Table-1 statistics."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from kdknob_jax.diagnostics import (off_policy_sequence_kl, score_sequences, score_tokens,
                                    spearman, tail_statistics, wrong_trace_preference)
from kdknob_jax.models import ModelConfig, abstract_params, forward, init_params
from kdknob_jax.models.derive import first_layers
from kdknob_jax.ops import kl
from kdknob_jax.ops.head import HeadSpec
from conftest import TINY


def _np_logp(z):
  z = z.astype(np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("direction", ["rkl", "fkl"])
def test_score_tokens_against_brute_force(direction):
  rng = np.random.default_rng(0)
  n, d, v, ks = 29, 8, 40, (1, 3, 10)
  hs, ht = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)
  ws, wt = (rng.normal(size=(d, v)).astype(np.float32) for _ in range(2))
  tokens = rng.integers(0, v, n)
  mask = (rng.random(n) > 0.2).astype(np.float32)
  out = score_tokens(hs, ws, ht, wt, tokens, mask, ks=ks, direction=direction,
                     student_spec=HeadSpec(), teacher_spec=HeadSpec(), chunk=8)
  ls, lt = _np_logp(hs @ ws), _np_logp(ht @ wt)
  rkl = np.sum(np.exp(ls) * (ls - lt), -1)
  fkl = np.sum(np.exp(lt) * (lt - ls), -1)
  np.testing.assert_allclose(out["rkl"], rkl * mask, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["fkl"], fkl * mask, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["logp_student"], ls[np.arange(n), tokens] * mask, rtol=1e-5)
  np.testing.assert_allclose(out["logp_teacher"], lt[np.arange(n), tokens] * mask, rtol=1e-5)
  lp, lq = (ls, lt) if direction == "rkl" else (lt, ls)
  terms = np.exp(lp) * (lp - lq) * mask[:, None]
  want = []
  for k in ks + (v,):
    member = np.zeros_like(terms, bool)
    order = np.argsort(-lp, axis=1)[:, :k]
    np.put_along_axis(member, order, True, axis=1)
    want.append(np.sum(np.where(member, terms, 0.0), axis=0))
  np.testing.assert_allclose(out["contrib"], np.stack(want), rtol=1e-4, atol=1e-5)
  # The full-vocabulary row sums to the summed token KL of that direction.
  total = (rkl if direction == "rkl" else fkl) @ mask
  np.testing.assert_allclose(out["contrib"][-1].sum(), total, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_pair():
  cfg = ModelConfig.from_hf(TINY["gemma3"])  # softcap, tied head, sliding window of 5
  params = init_params(cfg, jax.random.PRNGKey(0))
  return first_layers(params, cfg, 2), (params, cfg)


def test_score_sequences_equals_a_plain_full_forward(tiny_pair):
  (sp, scfg), (tp, tcfg) = tiny_pair
  rng = np.random.default_rng(1)
  prompts = [rng.integers(1, 256, n).tolist() for n in (3, 9, 6)]
  # Uneven groups: 5 completions of prompt 0 split over calls of 4 rows, 1 of prompt 2.
  seqs = [(prompts[i], rng.integers(1, 256, m).tolist())
          for i, m in [(0, 7), (1, 12), (0, 1), (0, 5), (2, 9), (0, 20), (1, 3), (0, 2)]]
  got = score_sequences((sp, scfg), (tp, tcfg), seqs, ks=(1, 8), direction="rkl",
                        rows_per_call=4)
  # Reference: every sequence whole in one right-padded batch (padding has position -1).
  width = max(len(p) + len(c) for p, c in seqs)
  tokens = np.zeros((len(seqs), width), np.int32)
  positions = np.full((len(seqs), width), -1, np.int32)
  for i, (p, c) in enumerate(seqs):
    tokens[i, :len(p) + len(c)] = p + c
    positions[i, :len(p) + len(c)] = np.arange(len(p) + len(c))
  run = jax.jit(lambda prm, cfg=None: forward(prm, cfg, tokens, positions)[0], static_argnums=1)
  zs_all, zt_all = run(sp, scfg), run(tp, tcfg)
  for i, (p, c) in enumerate(seqs):
    sl = slice(len(p) - 1, len(p) + len(c) - 1)
    zs, zt, toks = zs_all[i:i + 1, sl], zt_all[i:i + 1, sl], jnp.asarray([c])
    np.testing.assert_allclose(got.logp_student[i], float(kl.realized_logprobs(zs, toks).sum()),
                               rtol=1e-4)
    np.testing.assert_allclose(got.logp_teacher[i], float(kl.realized_logprobs(zt, toks).sum()),
                               rtol=1e-4)
    np.testing.assert_allclose(got.rkl[i], float(kl.token_kl(zs, zt).sum()), rtol=1e-4)
    np.testing.assert_allclose(got.fkl[i], float(kl.token_kl(zt, zs).sum()), rtol=1e-4)
  assert got.ks == (1, 8, 256)
  assert got.frequency.sum() == sum(len(c) for _, c in seqs)
  np.testing.assert_allclose(got.contrib[-1].sum(), got.rkl.sum(), rtol=1e-5)
  assert np.all(np.diff(np.abs(got.contrib).sum(1)) >= -1e-6)  # more entries as k grows


def test_score_sequences_rejects_mismatched_vocabularies(tiny_pair):
  (sp, scfg), _ = tiny_pair
  other = ModelConfig.from_hf(dict(TINY["llama"], vocab_size=300))
  with pytest.raises(ValueError, match="one vocabulary"):
    score_sequences((sp, scfg), (abstract_params(other), other),
                    [([1, 2], [3])])


def test_wrong_trace_preference_counts_pairs():
  loss = np.array([1.0, 3.0, 2.0, 0.5, 5.0, 4.0, 9.0])
  correct = np.array([True, True, False, False, True, False, True])
  prompt = np.array([0, 0, 0, 0, 1, 1, 2])
  out = wrong_trace_preference(loss, correct, prompt)
  # Prompt 0: correct {1, 3} x wrong {2, 0.5}: wrong lower in (1,0.5), (3,2), (3,0.5) = 3 of 4.
  # Prompt 1: correct {5} x wrong {4}: 1 of 1. Prompt 2 has no wrong trace.
  assert out == {"share": 4 / 5, "pairs": 5, "prompts": 2}
  assert np.isnan(wrong_trace_preference(loss, np.ones(7, bool), prompt)["share"])


def test_off_policy_estimates_match_the_kernel():
  rng = np.random.default_rng(2)
  lp = rng.normal(-20, 2, 12)
  lq = lp + rng.normal(0, 0.5, 12)
  out = off_policy_sequence_kl(lp, lq)
  ones = np.ones((12, 1), np.float32)
  col = lambda x: x.astype(np.float32)[:, None]  # pylint: disable=unnecessary-lambda-assignment
  k1 = np.asarray(kl.sequence_kl(col(lp), col(lq), ones, logp_behavior=col(lq)))
  k3 = np.asarray(kl.sequence_kl(col(lp), col(lq), ones, logp_behavior=col(lq), kind="k3"))
  np.testing.assert_allclose(out["k1"], k1.mean(), rtol=1e-4)
  np.testing.assert_allclose(out["k3"], k3.mean(), rtol=1e-4)
  assert 0 < out["ess"] <= 1
  # Equal policies: every weight is 1, the estimate 0, the ESS full.
  same = off_policy_sequence_kl(lp, lp)
  assert same["k1"] == 0 and same["ess"] == pytest.approx(1.0)
  # Weights past float32's range stay finite in float64.
  assert np.isfinite(off_policy_sequence_kl(lp + 200, lp)["ess"])


def test_spearman_against_scipy():
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(3)
  x = rng.integers(0, 5, 50).astype(float)  # ties
  y = x + rng.normal(0, 2, 50)
  assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, rel=1e-12)
  assert np.isnan(spearman(np.ones(5), y[:5]))


def test_tail_statistics_shares(tiny_pair):
  (sp, scfg), (tp, tcfg) = tiny_pair
  rng = np.random.default_rng(4)
  seqs = [([5, 6, 7], rng.integers(1, 256, 10).tolist()) for _ in range(6)]
  scores = score_sequences((sp, scfg), (tp, tcfg), seqs, ks=(1, 16), rows_per_call=8)
  stats = tail_statistics(scores)
  assert [s["k"] for s in stats] == [1, 16, 256]
  assert stats[-1]["kl_share"] == pytest.approx(1.0)
  assert stats[0]["entries"] < stats[1]["entries"] < stats[2]["entries"]
