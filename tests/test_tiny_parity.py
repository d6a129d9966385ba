"""Tiny random checkpoints of every family: our loader + port against HF transformers (float32)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import TINY, random_ids
from kdknob_jax.compare.metrics import logit_figures
from kdknob_jax.hf import load_model
from kdknob_jax.models import forward, init_cache

SEQ = 24  # longer than the Gemma window (5) and past the Llama-3 original context bands


def _torch_logits(path, ids: np.ndarray) -> np.ndarray:
  model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                               attn_implementation="eager").eval()
  with torch.no_grad():
    return model(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()


@pytest.mark.parametrize("name", sorted(TINY))
def test_logits_match_transformers(tiny_dir, name):
  path = tiny_dir(name)
  ids = random_ids(TINY[name]["vocab_size"], (2, SEQ))
  ref = _torch_logits(path, ids)
  m = load_model(path)
  ours = np.asarray(forward(m.params, m.config, jnp.asarray(ids))[0])
  figs = logit_figures(ref.reshape(-1, ref.shape[-1]), ours.reshape(-1, ours.shape[-1]))
  assert figs["max_kl"] <= 1e-6, figs
  assert figs["max_abs_logit_diff"] <= 1e-4, figs


def test_positions_far_from_zero_match(tiny_dir):
  """RoPE scaling bands and YaRN only matter at large positions: start at 300."""
  path = tiny_dir("qwen3_yarn")
  ids = random_ids(256, (1, 16), seed=3)
  model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                               attn_implementation="eager").eval()
  pos = np.arange(300, 316)[None]
  with torch.no_grad():
    ref = model(torch.tensor(ids, dtype=torch.long),
                position_ids=torch.tensor(pos)).logits.numpy()
  m = load_model(path)
  ours = np.asarray(forward(m.params, m.config, jnp.asarray(ids), jnp.asarray(pos))[0])
  assert logit_figures(ref[0], ours[0])["max_kl"] <= 1e-6


@pytest.mark.parametrize("name", ["gemma3", "llama", "qwen3"])
def test_prefill_then_steps_equals_full_forward(tiny_dir, name):
  """Prefill of 9 tokens then 15 single steps equals one forward over 24, beyond the window."""
  m = load_model(tiny_dir(name))
  ids = jnp.asarray(random_ids(256, (2, SEQ), seed=1))
  full = np.asarray(forward(m.params, m.config, ids)[0])
  step = jax.jit(lambda p, t, pos, c: forward(p, m.config, t, pos, c))
  cache = init_cache(m.config, 2, SEQ)
  pos = jnp.broadcast_to(jnp.arange(9), (2, 9))
  logits, cache = step(m.params, ids[:, :9], pos, cache)
  outs = [np.asarray(logits)]
  for i in range(9, SEQ):
    logits, cache = step(m.params, ids[:, i:i + 1], jnp.full((2, 1), i), cache)
    outs.append(np.asarray(logits))
  assert int(cache["index"]) == SEQ
  np.testing.assert_allclose(np.concatenate(outs, axis=1), full, atol=2e-5, rtol=0)


def test_padding_is_invisible(tiny_dir):
  """A row padded with masked slots (negative positions) gives the same logits as unpadded."""
  m = load_model(tiny_dir("gemma3"))
  ids = random_ids(256, (1, 12), seed=2)
  plain = np.asarray(forward(m.params, m.config, jnp.asarray(ids))[0])
  padded = np.concatenate([np.full((1, 4), 7, np.int32), ids], axis=1)
  pos = np.concatenate([np.full((1, 4), -1), np.arange(12)[None]], axis=1).astype(np.int32)
  out = np.asarray(forward(m.params, m.config, jnp.asarray(padded), jnp.asarray(pos))[0])
  np.testing.assert_allclose(out[:, 4:], plain, atol=2e-5, rtol=0)


def test_forward_same_with_and_without_jit(tiny_dir):
  m = load_model(tiny_dir("llama"))
  ids = jnp.asarray(random_ids(256, (1, 10)))
  eager = np.asarray(forward(m.params, m.config, ids)[0])
  jitted = np.asarray(jax.jit(lambda p, t: forward(p, m.config, t)[0])(m.params, ids))
  np.testing.assert_allclose(eager, jitted, atol=1e-5, rtol=0)


def test_bfloat16_load_runs_in_bfloat16(tiny_dir):
  m = load_model(tiny_dir("qwen3"), dtype="bfloat16")
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(m.params))
  logits = forward(m.params, m.config, jnp.asarray(random_ids(256, (1, 8))))[0]
  assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())
