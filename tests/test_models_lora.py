"""LoRA adapters on the stacked weights: zero-init equals the base, the applied adapter equals
the merged weight in float32, merge math per weight layout, gradients reach only the adapters,
a bfloat16 update moves log-probs as the float32 update does, config errors."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import optax

from kdknob_jax.calibration import step as step_lib
from kdknob_jax.models import ModelConfig, forward, init_params, param_axes
from kdknob_jax.models.lora import (LoraConfig, adapted, count, init_lora, lora_axes, merge,
                                    targets_from_names)
from kdknob_jax.models.scoring import completion_logp
from kdknob_jax.ops.low_rank import low_rank
from conftest import TINY, normal, random_ids


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
  want = np.asarray(run(params))
  np.testing.assert_array_equal(np.asarray(run(merged)), want)
  np.testing.assert_array_equal(np.asarray(run(adapted(params, lora, lcfg))), want)
  assert merge(params, None, lcfg) is params and adapted(params, None, lcfg) is params


def test_a_uniform_kaiming_a_as_peft_initializes_it(base):
  _, params = base
  lora = init_lora(params, LoraConfig(rank=4), jax.random.PRNGKey(1))
  a = np.asarray(lora["layers"]["gate_proj"]["a"])  # fan-in D = 32
  assert np.abs(a).max() <= 32**-0.5 and np.abs(a).max() > 0.9 * 32**-0.5
  assert abs(a.std() - 32**-0.5 / np.sqrt(3)) < 0.01


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_the_applied_adapter_equals_the_merged_weight_in_float32(family):
  cfg = ModelConfig.from_hf(TINY[family])
  params = init_params(cfg, jax.random.PRNGKey(0))
  lcfg = LoraConfig(rank=3, alpha=6.0)
  lora = jax.tree_util.tree_map(
      lambda x: x + normal(2, x.shape, 0.05),
      init_lora(params, lcfg, jax.random.PRNGKey(1)))
  ids = jnp.asarray(random_ids(cfg.vocab_size, (2, 9)))
  run = jax.jit(lambda p: forward(p, cfg, ids)[0])
  got, want = np.asarray(run(adapted(params, lora, lcfg))), np.asarray(run(merge(params, lora,
                                                                                   lcfg)))
  assert np.abs(want - np.asarray(run(params))).max() > 0.1  # the adapters matter
  np.testing.assert_allclose(got, want, rtol=0, atol=5e-6)


@pytest.mark.parametrize("name", ["q_proj", "o_proj", "down_proj"])
def test_merge_adds_scaled_low_rank_product(base, name):
  _, params = base
  lcfg = LoraConfig(rank=3, alpha=6.0, targets=(name,))
  lora = init_lora(params, lcfg, jax.random.PRNGKey(2))
  b = lora["layers"][name]["b"]
  lora["layers"][name]["b"] = normal(3, b.shape)
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
    logits = forward(adapted(params, lo, lcfg), cfg, ids)[0]
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


def _regression_batch(seed: int, p: int = 4, g: int = 4, s: int = 12, t: int = 32):
  rng = np.random.default_rng(seed)
  batch = dict(prompts=rng.integers(0, 256, (p, s)), prompt_pos=np.tile(np.arange(s), (p, 1)),
               owner=np.repeat(np.arange(p), g), completions=rng.integers(0, 256, (p * g, t)),
               completion_pos=np.tile(np.arange(s, s + t), (p * g, 1)))
  batch = {k: v.astype(np.int32) for k, v in batch.items()}
  batch.update(mask=np.ones((p * g, t), np.float32), old_logp=np.zeros((p * g, t), np.float32),
               ref_logp=np.zeros((p * g, t), np.float32),
               advantages=rng.standard_normal(p * g).astype(np.float32))
  return {k: jnp.asarray(v) for k, v in batch.items()}


def test_a_bfloat16_update_moves_log_probs_as_the_float32_update_does():
  """One calibration step at the paper's lr 2e-5 (Adam, r = α = 128) on a width-256 model:
  regressing the bfloat16 run's per-token Δlog p on the float32 run's gives a coefficient of
  about 1 with the adapter applied. Merging it into the bfloat16 weights instead (the control)
  rounds most of the update away."""
  cfg32 = ModelConfig.from_hf(dict(TINY["qwen3"], hidden_size=256, intermediate_size=512,
                                   head_dim=32, num_hidden_layers=2))
  p32 = init_params(cfg32, jax.random.PRNGKey(0))
  cfg16 = cfg32.replace(dtype="bfloat16")
  p16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), p32)
  lcfg = LoraConfig(rank=128, alpha=128.0)
  lora = init_lora(p32, lcfg, jax.random.PRNGKey(1))
  batch = _regression_batch(0)
  opt = optax.adam(2e-5)
  scfg = step_lib.StepConfig(beta=0.0, on_policy=True)

  def delta(cfg, params, combine):
    lo, params = jax.tree_util.tree_map(jnp.copy, (lora, params))  # the step donates them
    state = step_lib.CalibState(step=jnp.zeros((), jnp.int32), lora=lo, opt_state=opt.init(lo),
                                base=params)
    before = completion_logp(combine(params, lo, lcfg), cfg, batch, 0)
    new, _ = step_lib.make_train_step(cfg, lcfg, scfg, opt)(state, batch, jax.random.PRNGKey(1))
    after = completion_logp(combine(new.base, new.lora, lcfg), cfg, batch, 0)
    return np.asarray(after - before, np.float64).ravel()

  x = delta(cfg32, p32, adapted)
  coef = lambda y: float(np.dot(x, y) / np.dot(x, x))  # pylint: disable=unnecessary-lambda-assignment
  applied, merged = coef(delta(cfg16, p16, adapted)), coef(delta(cfg16, p16, merge))
  assert np.abs(x).mean() > 1e-3  # the update moves the log-probs measurably
  assert 0.95 <= applied <= 1.05, applied
  assert merged < 0.5, merged


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)])
def test_the_adapters_hand_written_backward_is_autodiffs(dtype, tol):
  """`low_rank`'s custom VJP (only the rank-sized operands transposed) gives the gradients that
  autodiff of the same forward does, for x, A and B."""
  x, a, b, g = (normal(i, s).astype(dtype) for i, s in
                enumerate([(24, 40), (40, 8), (8, 56), (24, 56)]))

  def plain(x, a, b):
    xa = jnp.einsum("mi,ir->mr", x, a, preferred_element_type=jnp.float32).astype(x.dtype)
    return jnp.einsum("mr,rf->mf", xa, b, preferred_element_type=jnp.float32)

  np.testing.assert_array_equal(np.asarray(low_rank(x, a, b)), np.asarray(plain(x, a, b)))
  loss = lambda f: lambda *p: jnp.sum(f(*p) * g.astype(jnp.float32))
  want = jax.grad(loss(plain), argnums=(0, 1, 2))(x, a, b)
  got = jax.grad(loss(low_rank), argnums=(0, 1, 2))(x, a, b)
  for w, h in zip(want, got):
    assert h.dtype == w.dtype
    w, h = np.asarray(w, np.float32), np.asarray(h, np.float32)
    assert np.max(np.abs(h - w)) <= tol * np.max(np.abs(w))
