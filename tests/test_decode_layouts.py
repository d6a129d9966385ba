"""The decode loop's two layouts (per-layer "split", the default, and the scanned "stacked")
sample the same tokens with the same log-probs, and the split layout's shared-prompt attention
equals dense attention over the prompt repeated for each sample."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY, normal, random_ids
from kdknob_jax.decode import Sampler, SamplingConfig
from kdknob_jax.hf import load_model
from kdknob_jax.models.lora import LoraConfig, adapted, init_lora
from kdknob_jax.ops.attention import attention_mask, dense_attention, shared_prefix_attention


@pytest.mark.parametrize("window,softcap", [(None, None), (3, 5.0)])
def test_shared_prefix_attention_equals_dense_over_the_repeated_prefix(window, softcap):
  b, n, t, kv, g, h, p, s = 2, 3, 2, 2, 3, 8, 5, 4
  r = b * n
  q = normal(1, (r, t, kv * g, h))
  pre_k, pre_v = (normal(seed, (b, kv, p, h)) for seed in (2, 3))
  own_k, own_v = (normal(seed, (r, kv, s, h)) for seed in (4, 5))
  pre_pos = jnp.asarray([[0, 1, 2, 3, -1], [0, 1, -1, -1, -1]])  # the second prompt padded
  lengths = jnp.repeat(jnp.asarray([4, 2]), n)
  # Each row has written 2 of its own slots (one row finished early: its second is empty).
  own_pos = lengths[:, None] + jnp.asarray([0, 1, -99, -99])[None, :]
  own_pos = jnp.where(own_pos < 0, -1, own_pos).at[1, 1].set(-1)
  q_pos = lengths[:, None] + jnp.asarray([[0, 1]])
  pre_pos_r = jnp.repeat(pre_pos, n, axis=0)
  got = shared_prefix_attention(
      q, (jnp.swapaxes(pre_k, 2, 3), pre_v, attention_mask(q_pos, pre_pos_r, window)),
      (jnp.swapaxes(own_k, 2, 3), own_v, attention_mask(q_pos, own_pos, window)), 0.3, softcap)
  want = dense_attention(
      q, [(jnp.repeat(pre_k, n, axis=0), jnp.repeat(pre_v, n, axis=0),
           attention_mask(q_pos, pre_pos_r, window)),
          (own_k, own_v, attention_mask(q_pos, own_pos, window))], 0.3, softcap)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-6)


def _lora(m, seed: int):
  """Adapters with a non-zero B, so that their term changes every projection."""
  lora = init_lora(m.params, LoraConfig(rank=4, alpha=8.0), jax.random.PRNGKey(seed))
  leaves, tree = jax.tree_util.tree_flatten(lora)
  leaves = [x + normal(seed + 1 + i, x.shape, 0.05) for i, x in enumerate(leaves)]
  return adapted(m.params, jax.tree_util.tree_unflatten(tree, leaves), LoraConfig(4, 8.0))


@pytest.mark.parametrize("name,with_lora", [("gemma3", False), ("qwen3", True)])
def test_split_and_stacked_layouts_sample_the_same_rows(tiny_dir, name, with_lora):
  m = load_model(tiny_dir(name))
  params = _lora(m, 3) if with_lora else m.params
  vocab = TINY[name]["vocab_size"]
  prompts = [random_ids(vocab, (k,), 10 + k).tolist() for k in (3, 9, 17)]
  stop = (int(random_ids(vocab, (1,), 99)[0]),)
  out = {}
  for layout in ("split", "stacked"):
    sampler = Sampler(m.config, stop_ids=stop, pad_id=0, layout=layout)
    out[layout] = sampler(params, prompts, n=3, max_new_tokens=12,
                          sampling=SamplingConfig(1.0), key=jax.random.PRNGKey(7))
  a, b = out["split"], out["stacked"]
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.lengths, b.lengths)
  np.testing.assert_array_equal(a.stopped, b.stopped)
  np.testing.assert_allclose(a.model_logprobs, b.model_logprobs, rtol=0, atol=2e-5)
  np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=0, atol=2e-5)


def test_an_unknown_layout_is_rejected_with_the_choices(tiny_dir):
  m = load_model(tiny_dir("llama"))
  with pytest.raises(ValueError, match="split.*stacked"):
    Sampler(m.config, layout="unrolled")


@pytest.mark.parametrize("layout", ["split", "stacked"])
def test_the_benchmark_floor_runs_the_steps_matmuls_in_each_layout(tiny_dir, layout):
  from kdknob_jax.bench.decode import step_floor  # pylint: disable=g-import-not-at-top
  m = load_model(tiny_dir("qwen3"))
  logits = step_floor(m.params, m.config, prompts=3, samples=2, prompt_len=7, new_len=4,
                      layout=layout)()
  assert logits.shape == (6, TINY["qwen3"]["vocab_size"])
  assert np.isfinite(np.asarray(logits)).all()
