"""The fused chunked divergence equals the materialized one in value and gradient."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from kdknob_jax.ops import kl
from kdknob_jax.ops.head import HeadSpec, auto_chunk
from kdknob_jax.ops.fused_kl import fused_divergence, fused_token_values, materialized_divergence

N, DS, DT, V = 45, 16, 24, 67  # N is no multiple of the chunk, V no power of two


def _case(tied: bool, seed: int = 0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  hs = jnp.asarray(rng.normal(size=(3, N // 3, DS)), dtype)
  ht = jnp.asarray(rng.normal(size=(3, N // 3, DT)), dtype)
  ws = jnp.asarray(rng.normal(size=(V, DS) if tied else (DS, V)) * 0.7, dtype)
  wt = jnp.asarray(rng.normal(size=(DT, V)) * 0.7, dtype)
  mask = (rng.random((3, N // 3)) > 0.25).astype(np.float32)
  weights = jnp.asarray(mask / mask.sum())
  return hs, ws, ht, wt, weights


@pytest.mark.parametrize("kind,coef", [("fkl", 0.0), ("rkl", 0.0), ("jsd", 0.5),
                                       ("skew_fkl", 0.1), ("skew_rkl", 0.1)])
@pytest.mark.parametrize("tied,softcap", [(False, None), (True, 5.0)])
def test_values_and_gradients_equal_plain(kind, coef, tied, softcap):
  hs, ws, ht, wt, weights = _case(tied)
  kw = dict(kind=kind, coef=coef, temperature=1.5, student_spec=HeadSpec(tied, softcap),
            teacher_spec=HeadSpec(False, 7.0))
  fused = jax.jit(jax.value_and_grad(
      lambda a, b, c: fused_divergence(a, b, ht, wt, c, chunk_size=8, **kw), argnums=(0, 1, 2)))
  plain = jax.jit(jax.value_and_grad(
      lambda a, b, c: materialized_divergence(a, b, ht, wt, c, **kw), argnums=(0, 1, 2)))
  (v1, g1), (v2, g2) = fused(hs, ws, weights), plain(hs, ws, weights)
  np.testing.assert_allclose(float(v1), float(v2), rtol=1e-5)
  assert float(v2) > 0
  for a, b in zip(g1, g2):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5 * float(jnp.max(jnp.abs(b))))
  # The value path (no differentiation) agrees too.
  value = jax.jit(lambda: fused_divergence(hs, ws, ht, wt, weights, chunk_size=16, **kw))()
  np.testing.assert_allclose(float(value), float(v2), rtol=1e-5)


def test_teacher_is_frozen_and_matches_stop_gradient_plain():
  hs, ws, ht, wt, weights = _case(False, seed=1)
  g_fused = jax.grad(lambda t, w: fused_divergence(hs, ws, t, w, weights, chunk_size=8),
                     argnums=(0, 1))(ht, wt)
  g_plain = jax.grad(lambda t, w: materialized_divergence(hs, ws, t, w, weights),
                     argnums=(0, 1))(ht, wt)
  for a, b in zip(g_fused, g_plain):
    assert not np.any(np.asarray(a)) and not np.any(np.asarray(b))


def test_token_values_equal_token_divergence():
  hs, ws, ht, wt, _ = _case(True, seed=2)
  spec_s, spec_t = HeadSpec(True, None), HeadSpec(False, None)
  got = fused_token_values(hs, ws, ht, wt, kind="rkl", student_spec=spec_s, teacher_spec=spec_t,
                           chunk_size=8)
  zs = jnp.einsum("btd,vd->btv", hs, ws)
  zt = jnp.einsum("btd,dv->btv", ht, wt)
  np.testing.assert_allclose(np.asarray(got), np.asarray(kl.token_kl(zs, zt)), rtol=1e-5,
                             atol=1e-6)


def test_bfloat16_inputs_keep_dtypes_and_track_float32():
  hs, ws, ht, wt, weights = _case(False, seed=3, dtype=jnp.bfloat16)
  v, (gh, gw) = jax.value_and_grad(
      lambda a, b: fused_divergence(a, b, ht, wt, weights, chunk_size=8), argnums=(0, 1))(hs, ws)
  assert gh.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16 and v.dtype == jnp.float32
  f32 = [x.astype(jnp.float32) for x in (hs, ws, ht, wt)]
  v32, (gh32, gw32) = jax.value_and_grad(
      lambda a, b: materialized_divergence(a, b, f32[2], f32[3], weights),
      argnums=(0, 1))(f32[0], f32[1])
  np.testing.assert_allclose(float(v), float(v32), rtol=1e-3)  # bf16 inputs are exact in f32
  scale = float(jnp.max(jnp.abs(gw32)))
  np.testing.assert_allclose(np.asarray(gw, np.float32), np.asarray(gw32), atol=2e-2 * scale)


def test_vocabulary_mismatch_and_token_mismatch_are_clear_errors():
  hs, ws, ht, wt, weights = _case(False)
  with pytest.raises(ValueError, match="one vocabulary"):
    fused_divergence(hs, ws, ht, wt[:, :-1], weights)
  with pytest.raises(ValueError, match="same tokens"):
    fused_divergence(hs, ws, ht[:, :-1], wt, weights)


def test_auto_chunk_bounds():
  assert auto_chunk(2048, 262_144, "cpu") == 256
  assert auto_chunk(2048, 151_936, "cpu") == 256
  assert auto_chunk(2048, 262_144, "gpu") == 256
  assert auto_chunk(2048, 151_936, "gpu") == 416  # 5 chunks of at most 440 rows, evened out
  assert auto_chunk(5, 100, "tpu") == 8
  assert auto_chunk(100, 10, "cpu") == 104  # never more than the rows, rounded up to 8


@pytest.mark.parametrize("backend,vocab", [("cpu", 49_152), ("gpu", 151_936), ("gpu", 262_144)])
def test_auto_chunk_splits_rows_evenly(backend, vocab):
  most = auto_chunk(1 << 20, vocab, backend)
  for n in [1, 7, 8, 255, 256, 257, 384, 1000, 2049, 8192, 8193]:
    c = auto_chunk(n, vocab, backend)
    chunks = -(-n // c)
    assert c % 8 == 0 and 8 <= c <= most
    assert chunks == max(1, -(-n // most))  # no more chunks than the bound needs
    assert chunks * c - n < 8 * chunks  # padding under 8 rows a chunk
