"""The attention forms agree with the dense one in float32 (padding, GQA, Gemma's sliding
windows, the prompt cache gathered for several completions), forward and backward, and
rematerialization changes no gradient."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from kdknob_jax.models import ExecConfig, ModelConfig, init_params
from kdknob_jax.models.lora import LoraConfig, adapted, init_lora
from kdknob_jax.models.scoring import predictor_hidden
from kdknob_jax.ops.attention import attention, attention_mask, dense_attention, resolve
from conftest import TINY, normal

def _blocks(seed: int, window):
  """Queries [2, 7, 6, 8] against a cache block (one row padded, one slot empty) and their own
  keys, GQA 3:1."""
  q = normal(seed, (2, 7, 6, 8))
  k_c, v_c = (normal(seed + i, (2, 2, 5, 8)) for i in (1, 2))
  k_n, v_n = (normal(seed + i, (2, 2, 7, 8)) for i in (3, 4))
  cache_pos = jnp.asarray([[0, 1, 2, 3, -1], [0, 1, -1, -1, -1]])
  q_pos = jnp.asarray([[4, 5, 6, 7, 8, 9, 10], [2, 3, 4, 5, -1, -1, -1]])
  return q, [(k_c, v_c, attention_mask(q_pos, cache_pos, window)),
             (k_n, v_n, attention_mask(q_pos, q_pos, window))], q_pos


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("impl,chunk", [("chunked", 3), ("chunked", 6), ("xla_fused", 3)])
def test_each_form_equals_dense_attention_with_its_gradients(window, impl, chunk):
  """7 queries in chunks of at most 3 (3 x 3, two padded) or 6 (evened out: 2 x 4)."""
  q, blocks, q_pos = _blocks(0, window)
  real = np.asarray(q_pos >= 0)[:, :, None, None]

  masks = [m for _, _, m in blocks]
  kvs = [(k, v) for k, v, _ in blocks]

  def run(form, q, kvs):
    blocks = [(k, v, m) for (k, v), m in zip(kvs, masks)]
    out = (dense_attention(q, blocks, 0.3) if form == "dense"
           else attention(q, blocks, 0.3, impl=form, chunk=chunk))
    return jnp.sum(jnp.where(real, out, 0.0) * jnp.cos(out))  # padded queries carry no loss

  want = jax.value_and_grad(run, argnums=(1, 2))("dense", q, kvs)
  got = jax.value_and_grad(run, argnums=(1, 2))(impl, q, kvs)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
  got_out = attention(q, blocks, 0.3, impl=impl, chunk=chunk)
  np.testing.assert_allclose(np.asarray(got_out) * real,
                             np.asarray(dense_attention(q, blocks, 0.3)) * real, rtol=0,
                             atol=1e-6)


def test_auto_picks_dense_for_short_queries_and_chunks_long_ones_off_gpu():
  q_short, q_long = jnp.zeros((1, 4, 2, 8)), jnp.zeros((1, 300, 2, 8))
  assert resolve("auto", q_short, None, 128) == "dense"
  assert resolve("auto", q_long, None, 128) == "chunked"  # float32 is never sent to cuDNN
  with pytest.raises(ValueError, match="not one of"):
    resolve("flash", q_short, None, 128)


def _score_batch():
  """Two prompts (one padded) continued by three completions each, padded tails."""
  prompts = np.array([[5, 9, 17, 3, 8, 0], [7, 2, 11, 0, 0, 0]], np.int32)
  prompt_pos = np.where(prompts > 0, np.arange(6), -1).astype(np.int32)
  prompt_pos[0, 4] = 4
  owner = np.array([0, 0, 0, 1, 1, 1], np.int32)
  rng = np.random.default_rng(0)
  comps = rng.integers(1, 200, (6, 9)).astype(np.int32)
  lengths = np.array([9, 4, 7, 9, 1, 6])
  start = np.where(owner == 0, 5, 3)
  comp_pos = np.where(np.arange(9) < lengths[:, None], start[:, None] + np.arange(9), -1)
  return [jnp.asarray(x) for x in (prompts, prompt_pos, owner, comps,
                                   comp_pos.astype(np.int32))], lengths


@pytest.mark.parametrize("family", ["gemma3"])
def test_prompt_once_scoring_is_the_same_in_every_form_and_remat(family):
  """`predictor_hidden` (each prompt's cache gathered for its completions), with adapters:
  outputs and adapter gradients of every form and rematerialization policy match the dense,
  unrematerialized program. Gemma's tiny window (4) is shorter than the sequences."""
  cfg = ModelConfig.from_hf(TINY[family])
  params = init_params(cfg, jax.random.PRNGKey(0))
  lcfg = LoraConfig(rank=2, alpha=4.0)
  lora = jax.tree_util.tree_map_with_path(  # non-zero B: the gradient reaches A too
      lambda path, x: (normal(3, x.shape, 0.05)
                       if path[-1].key == "b" else x),
      init_lora(params, lcfg, jax.random.PRNGKey(1)))
  args, lengths = _score_batch()
  real = jnp.asarray(np.arange(9) < lengths[:, None])[..., None]

  def loss(lo, execution):
    h = predictor_hidden(adapted(params, lo, lcfg), cfg, *args, execution)
    return jnp.sum(jnp.where(real, jnp.sin(h), 0.0)), h

  base = ExecConfig(attention="dense")
  (_, want_h), want_g = jax.value_and_grad(loss, has_aux=True)(lora, base)
  # Float32 rounding of sums of ~1e2-sized terms: remat alone (same math, other fusions)
  # moves these gradients by up to about 6e-7 of the largest one.
  g_tol = 2e-6 * max(float(jnp.abs(x).max()) for x in jax.tree_util.tree_leaves(want_g))
  for execution in [ExecConfig(remat="nothing", attention="chunked", query_chunk=4),
                    ExecConfig(remat="dots", attention="xla_fused")]:
    (_, h), g = jax.value_and_grad(loss, has_aux=True)(lora, execution)
    np.testing.assert_allclose(np.asarray(h) * real, np.asarray(want_h) * real, rtol=0,
                               atol=1e-5, err_msg=str(execution))
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(want_g)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=g_tol,
                                 err_msg=str(execution))
