"""Divergence kernels against a float64 numpy brute force, and generalized_jsd against TRL."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from kdknob_jax.ops import kl

B, T, V = 3, 5, 11


def _logits(seed, scale=3.0):
  return np.random.default_rng(seed).normal(0.0, scale, (B, T, V)).astype(np.float32)


def _mask():
  m = np.ones((B, T), np.float32)
  m[0, :2] = 0  # prompt positions
  m[2, 3:] = 0  # padding
  return m


def _np_logp(z, temperature=1.0):
  z = z.astype(np.float64) / temperature
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_kl(p, q):
  """Σ p log(p/q) from probabilities, float64."""
  return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_kl_both_orders(temperature):
  a, b, m = _logits(0), _logits(1), _mask()
  pa, pb = np.exp(_np_logp(a, temperature)), np.exp(_np_logp(b, temperature))
  for x, y, px, py in ((a, b, pa, pb), (b, a, pb, pa)):
    got = np.asarray(kl.token_kl(x, y, m, temperature=temperature))
    np.testing.assert_allclose(got, _np_kl(px, py) * m, rtol=2e-5, atol=1e-6)
  assert np.all(np.asarray(kl.token_kl(a, b, m))[m == 0] == 0.0)
  # Forward and reverse differ on these logits: the argument order is the direction.
  assert not np.allclose(kl.token_kl(a, b), kl.token_kl(b, a), rtol=1e-2)


def _np_divergence(s, t, kind, coef):
  ps, pt = np.exp(_np_logp(s)), np.exp(_np_logp(t))
  if kind == "fkl" or (kind == "jsd" and coef == 0):
    return _np_kl(pt, ps)
  if kind == "rkl" or (kind == "jsd" and coef == 1):
    return _np_kl(ps, pt)
  if kind == "jsd":
    mix = (1 - coef) * ps + coef * pt
    return coef * _np_kl(pt, mix) + (1 - coef) * _np_kl(ps, mix)
  if kind == "skew_fkl":
    return _np_kl(pt, coef * pt + (1 - coef) * ps)
  return _np_kl(ps, coef * ps + (1 - coef) * pt)


@pytest.mark.parametrize("kind,coef", [("fkl", 0.0), ("rkl", 0.0), ("jsd", 0.0), ("jsd", 0.3),
                                       ("jsd", 0.9), ("jsd", 1.0), ("skew_fkl", 0.1),
                                       ("skew_rkl", 0.1), ("skew_fkl", 0.0)])
def test_token_divergence_kinds(kind, coef):
  s, t, m = _logits(2), _logits(3), _mask()
  got = np.asarray(kl.token_divergence(s, t, kind, coef, m))
  np.testing.assert_allclose(got, _np_divergence(s, t, kind, coef) * m, rtol=2e-5, atol=1e-6)


def test_generalized_jsd_and_skew_kl_helpers():
  s, t, m = _logits(4), _logits(5), _mask()
  for beta in (0.0, 0.3, 1.0):
    want = np.sum(_np_divergence(s, t, "jsd", beta) * m) / m.sum()
    np.testing.assert_allclose(float(kl.generalized_jsd(s, t, beta, m)), want, rtol=2e-5)
  want_all = np.mean(_np_divergence(s, t, "jsd", 0.5))
  np.testing.assert_allclose(float(kl.generalized_jsd(s, t, 0.5)), want_all, rtol=2e-5)
  # skew_kl(p, q, α) = KL(p ‖ αp + (1−α)q): forward skew with p = teacher.
  np.testing.assert_allclose(np.asarray(kl.skew_kl(t, s, 0.1, m)),
                             _np_divergence(s, t, "skew_fkl", 0.1) * m, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(kl.skew_kl(s, t, 0.1, m)),
                             _np_divergence(s, t, "skew_rkl", 0.1) * m, rtol=2e-5, atol=1e-6)


def test_bad_divergence_arguments():
  s, t = _logits(0), _logits(1)
  with pytest.raises(ValueError, match="Unknown divergence"):
    kl.token_divergence(s, t, "tvd")
  with pytest.raises(ValueError, match="beta"):
    kl.generalized_jsd(s, t, 1.5)
  with pytest.raises(ValueError, match="alpha"):
    kl.skew_kl(s, t, 1.0)
  with pytest.raises(ValueError, match="Unknown KL estimator"):
    kl.kl_estimator(jnp.zeros(3), jnp.zeros(3), "k4")


def test_realized_logprobs_and_estimators():
  z = _logits(6)
  tokens = np.random.default_rng(7).integers(0, V, (B, T))
  lp = np.take_along_axis(_np_logp(z), tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(kl.realized_logprobs(z, tokens)), lp, rtol=1e-5)
  rng = np.random.default_rng(8)
  a, b = rng.normal(-2, 1, (B, T)), rng.normal(-2, 1, (B, T))
  m = _mask()
  log_r = b - a
  want = {"k1": -log_r, "k2": 0.5 * log_r ** 2, "k3": np.exp(log_r) - 1 - log_r}
  for kind, w in want.items():
    got = np.asarray(kl.kl_estimator(a.astype(np.float32), b.astype(np.float32), kind, m))
    np.testing.assert_allclose(got, w * m, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(kl.kl_estimator(a, b, "k3")) >= 0)


def test_sequence_estimators_and_is_weights():
  rng = np.random.default_rng(9)
  lp, lq, lb = (rng.normal(-1.0, 0.3, (B, T)) for _ in range(3))
  m = _mask()
  sp, sq, sb = (np.sum(x * m, -1) for x in (lp, lq, lb))
  f32 = lambda x: x.astype(np.float32)  # pylint: disable=unnecessary-lambda-assignment
  np.testing.assert_allclose(np.asarray(kl.sequence_kl(f32(lp), f32(lq), m)), sp - sq,
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(kl.sequence_kl(f32(lp), f32(lq), m, kind="k3")),
                             np.exp(sq - sp) - 1 - (sq - sp), rtol=1e-5, atol=1e-6)
  w = np.exp(sp - sb)
  np.testing.assert_allclose(np.asarray(kl.is_weights(f32(lp), f32(lb), m)), w, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(kl.is_weights(f32(lp), f32(lb), m, log=True)), sp - sb,
                             rtol=1e-5)
  off = np.asarray(kl.sequence_kl(f32(lp), f32(lq), m, logp_behavior=f32(lb)))
  np.testing.assert_allclose(off, w * (sp - sq), rtol=1e-5)
  off3 = np.asarray(kl.sequence_kl(f32(lp), f32(lq), m, logp_behavior=f32(lb), kind="k3"))
  np.testing.assert_allclose(off3, w * (sp - sq) - w + np.exp(sq - sb), rtol=1e-5, atol=1e-6)
  # When the behavior policy is q, the off-policy k3 form is w·log w − w + 1 ≥ 0.
  same = np.asarray(kl.sequence_kl(f32(lp), f32(lq), m, logp_behavior=f32(lq), kind="k3"))
  wq = np.exp(sp - sq)
  np.testing.assert_allclose(same, wq * np.log(wq) - wq + 1, rtol=1e-4, atol=1e-6)


def test_kernels_accumulate_in_float32_for_bfloat16_logits():
  s, t = _logits(10), _logits(11)
  got = kl.token_kl(jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16))
  assert got.dtype == jnp.float32
  s16 = np.asarray(jnp.asarray(s, jnp.bfloat16).astype(jnp.float32))
  t16 = np.asarray(jnp.asarray(t, jnp.bfloat16).astype(jnp.float32))
  want = _np_kl(np.exp(_np_logp(s16)), np.exp(_np_logp(t16)))
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_generalized_jsd_matches_trl(beta, temperature):
  torch = pytest.importorskip("torch")
  gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
  s, t, m = _logits(12), _logits(13), _mask()
  labels = torch.where(torch.from_numpy(m) > 0, torch.tensor(1), torch.tensor(-100))
  want = gkd.GKDTrainer.generalized_jsd_loss(torch.from_numpy(s), torch.from_numpy(t),
                                             labels=labels, beta=beta, temperature=temperature)
  got = kl.generalized_jsd(s, t, beta, m, temperature=temperature)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  # And its gradient, the quantity GKD trains on.
  st = torch.from_numpy(s).requires_grad_(True)
  gkd.GKDTrainer.generalized_jsd_loss(st, torch.from_numpy(t), labels=labels, beta=beta,
                                      temperature=temperature).backward()
  g = jax.grad(lambda x: kl.generalized_jsd(x, t, beta, m, temperature=temperature))(s)
  np.testing.assert_allclose(np.asarray(g), st.grad.numpy(), rtol=1e-4, atol=1e-7)
