"""LoRA adapters on the stacked weights: zero-init equals the base, merge math per weight
layout, gradients reach only the adapters, config errors."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from kdknob_jax.models import ModelConfig, forward, init_params, param_axes
from kdknob_jax.models.lora import (LoraConfig, count, init_lora, lora_axes, merge,
                                    targets_from_names)
from conftest import TINY, random_ids


@pytest.fixture(scope="module")
def base():
  cfg = ModelConfig.from_hf(TINY["qwen3"])
  return cfg, init_params(cfg, jax.random.PRNGKey(0))


def test_zero_init_is_exactly_the_base_model(base):
  cfg, params = base
  lcfg = LoraConfig(rank=4, alpha=8.0)
  lora = init_lora(params, lcfg, jax.random.PRNGKey(1))
  merged = merge(params, lora, lcfg)
  for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ids = jnp.asarray(random_ids(cfg.vocab_size, (2, 9)))
  run = jax.jit(lambda p: forward(p, cfg, ids)[0])
  np.testing.assert_array_equal(np.asarray(run(merged)), np.asarray(run(params)))
  assert merge(params, None, lcfg) is params


@pytest.mark.parametrize("name", ["q_proj", "o_proj", "down_proj"])
def test_merge_adds_scaled_low_rank_product(base, name):
  _, params = base
  lcfg = LoraConfig(rank=3, alpha=6.0, targets=(name,))
  lora = init_lora(params, lcfg, jax.random.PRNGKey(2))
  b = lora["layers"][name]["b"]
  lora["layers"][name]["b"] = jax.random.normal(jax.random.PRNGKey(3), b.shape)
  merged = merge(params, lora, lcfg)["layers"][name]
  w = np.asarray(params["layers"][name], np.float64)
  a = np.asarray(lora["layers"][name]["a"], np.float64)
  bb = np.asarray(lora["layers"][name]["b"], np.float64)
  layers = w.shape[0]
  in_size = int(np.prod(a.shape[1:-1]))
  delta = np.einsum("lir,lro->lio", a.reshape(layers, in_size, 3),
                    bb.reshape(layers, 3, -1)).reshape(w.shape)
  np.testing.assert_allclose(np.asarray(merged), w + 2.0 * delta, rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_adapters_only_through_b_at_init(base):
  cfg, params = base
  lcfg = LoraConfig(rank=4, alpha=4.0, targets=("q_proj", "up_proj"))
  lora = init_lora(params, lcfg, jax.random.PRNGKey(4))
  ids = jnp.asarray(random_ids(cfg.vocab_size, (2, 7), seed=1))

  def loss(lo):
    logits = forward(merge(params, lo, lcfg), cfg, ids)[0]
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  grads = jax.jit(jax.grad(loss))(lora)
  for name in lcfg.targets:
    # dL/dA = dL/dW · Bᵀ is zero while B is; dL/dB is not.
    assert not np.any(np.asarray(grads["layers"][name]["a"]))
    assert np.abs(np.asarray(grads["layers"][name]["b"])).max() > 1e-6
  assert count(lora) == sum(x.size for x in jax.tree_util.tree_leaves(lora))


def test_axes_match_the_adapter_shapes(base):
  cfg, params = base
  lcfg = LoraConfig(rank=2)
  lora = init_lora(params, lcfg, jax.random.PRNGKey(5))
  axes = lora_axes(param_axes(cfg), lcfg)
  for name in lcfg.targets:
    for part in ("a", "b"):
      assert len(axes["layers"][name][part]) == lora["layers"][name][part].ndim
  assert axes["layers"]["q_proj"]["a"] == jax.sharding.PartitionSpec("layers", "embed", None)
  assert axes["layers"]["o_proj"]["b"] == jax.sharding.PartitionSpec("layers", None, "embed")


def test_config_errors_and_target_names():
  with pytest.raises(ValueError, match="rank"):
    LoraConfig(rank=0)
  with pytest.raises(ValueError, match="not projections"):
    LoraConfig(targets=("embed",))
  assert targets_from_names("attention") == ("q_proj", "k_proj", "v_proj", "o_proj")
  assert targets_from_names("q_proj, down_proj") == ("q_proj", "down_proj")
  assert LoraConfig(rank=128, alpha=128.0).scale == 1.0
