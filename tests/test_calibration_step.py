"""The jitted calibration step against a plain REINFORCE reference on a tiny model: with the
ratio at 1 (μ = 1) and no KL anchor, the update is −∇ mean_n A_n · log π(y_n|x_n) / T_n."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdknob_jax.hf import load_model
from kdknob_jax.models import forward
from kdknob_jax.models.lora import LoraConfig, init_lora, merge
from kdknob_jax.calibration import step as step_lib
from conftest import normal

PROMPTS = [[5, 9, 17, 3], [7, 2, 11]]
# (prompt index, completion): two rollouts per prompt, of different lengths.
ROWS = [(0, [4, 8, 15]), (0, [16, 23]), (1, [42, 1, 7, 9]), (1, [3])]
ADV = np.array([1.0, -1.0, 0.5, -0.5], np.float32)


def _batch():
  s, t = 8, 4
  prompts = np.zeros((2, s), np.int32)
  prompt_pos = np.full((2, s), -1, np.int32)
  for i, p in enumerate(PROMPTS):
    prompts[i, :len(p)], prompt_pos[i, :len(p)] = p, np.arange(len(p))
  comps = np.zeros((len(ROWS), t), np.int32)
  comp_pos = np.full((len(ROWS), t), -1, np.int32)
  owner = np.array([p for p, _ in ROWS], np.int32)
  for r, (p, c) in enumerate(ROWS):
    comps[r, :len(c)] = c
    comp_pos[r, :len(c)] = len(PROMPTS[p]) + np.arange(len(c))
  mask = (comp_pos >= 0).astype(np.float32)
  zeros = np.zeros_like(mask)
  return dict(prompts=prompts, prompt_pos=prompt_pos, owner=owner, completions=comps,
              completion_pos=comp_pos, mask=mask, advantages=ADV, old_logp=zeros,
              ref_logp=zeros)


def _reinforce_objective(lora, base, cfg, lcfg):
  """−mean_n A_n/T_n · log π(y_n|x_n), each row run as one plain full-sequence forward."""
  params = merge(base, lora, lcfg)
  total = 0.0
  for (p, c), a in zip(ROWS, ADV):
    seq = jnp.asarray(PROMPTS[p] + c)[None]
    logits, _ = forward(params, cfg, seq)
    lp = jax.nn.log_softmax(logits[0, len(PROMPTS[p]) - 1:-1], axis=-1)
    logp = jnp.sum(jnp.take_along_axis(lp, jnp.asarray(c)[:, None], axis=1))
    total = total - a * logp / len(c)
  return total / len(ROWS)


@pytest.mark.parametrize("on_policy", [False, True])
def test_step_update_is_the_reinforce_gradient(tiny_dir, on_policy):
  model = load_model(tiny_dir("llama_untied"))
  base, cfg = model.params, model.config
  lcfg = LoraConfig(rank=2, alpha=4.0, targets=("q_proj", "v_proj", "down_proj"))
  lora = init_lora(base, lcfg, jax.random.PRNGKey(0))
  # Non-zero B, so that the gradient reaches A too.
  lora = jax.tree_util.tree_map_with_path(
      lambda path, x: (normal(len(str(path)), x.shape, 0.1)
                       if path[-1].key == "b" else x), lora)
  scfg = step_lib.StepConfig(beta=0.0, epsilon=0.2, epsilon_high=0.2,
                             aggregation="sequence_mean", on_policy=on_policy)
  opt = optax.sgd(1.0)  # the update is then exactly −gradient
  state = step_lib.CalibState(step=jnp.zeros((), jnp.int32), lora=lora,
                              opt_state=opt.init(lora), base=base)
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}
  old, _ = step_lib.score_rollouts(
      state, batch, cfg=cfg, lcfg=lcfg, scfg=dataclasses.replace(scfg, on_policy=False))
  batch["old_logp"] = jnp.zeros_like(old) if on_policy else old  # on policy it is not read
  want = jax.jit(jax.grad(_reinforce_objective), static_argnums=(2, 3))(lora, base, cfg, lcfg)
  before = jax.tree_util.tree_map(np.asarray, lora)
  new, metrics = step_lib.make_train_step(cfg, lcfg, scfg, opt)(state, batch,
                                                                jax.random.PRNGKey(1))
  got = jax.tree_util.tree_map(lambda a, b: a - np.asarray(b), before, new.lora)
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-7)
  # On policy the ratio is 1 by construction (stop-gradient of the same log-probs). Off policy
  # the old log-probs come from another compiled program (the scoring forward), whose float32
  # results may differ in the last bit from the train step's on some CPUs (an AVX-512 Xeon
  # gives 1 - 1.2e-7); the ratio is then 1 to float32 rounding.
  if on_policy:
    assert float(metrics["ratio"]) == 1.0
  else:
    assert abs(float(metrics["ratio"]) - 1.0) <= 1e-6
  assert float(metrics["clip_fraction"]) == 0.0
  # The stored old log-probs are the plain forward's log-probs of the same tokens.
  params = merge(new.base, before, lcfg)  # the state (base included) was donated
  for r, (p, c) in enumerate(ROWS):
    logits, _ = forward(params, cfg, jnp.asarray(PROMPTS[p] + c)[None])
    lp = jax.nn.log_softmax(logits[0, len(PROMPTS[p]) - 1:-1], axis=-1)
    ref = np.take_along_axis(np.asarray(lp), np.asarray(c)[:, None], axis=1)[:, 0]
    np.testing.assert_allclose(np.asarray(old)[r, :len(c)], ref, rtol=1e-5, atol=1e-5)


def test_a_nan_advantage_leaves_the_adapters_and_optimizer_as_they_were(tiny_dir):
  """The jitted step keeps the old state when its loss or gradient is not finite, so a
  checkpoint can never hold NaN adapters (the loop then stops or skips: test_train_loop)."""
  model = load_model(tiny_dir("llama_untied"))
  lcfg = LoraConfig(rank=2, alpha=4.0, targets=("q_proj", "v_proj"))
  lora = init_lora(model.params, lcfg, jax.random.PRNGKey(0))
  opt = optax.adam(1e-2)
  state = step_lib.CalibState(step=jnp.zeros((), jnp.int32), lora=lora,
                              opt_state=opt.init(lora), base=model.params)
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}
  batch["advantages"] = batch["advantages"].at[1].set(jnp.nan)
  before = jax.tree_util.tree_map(np.asarray, (lora, state.opt_state))
  scfg = step_lib.StepConfig(beta=0.0, on_policy=True)
  new, metrics = step_lib.make_train_step(model.config, lcfg, scfg, opt)(
      state, batch, jax.random.PRNGKey(1))
  assert not np.isfinite(float(metrics["loss"]))
  assert int(new.step) == 1
  for a, b in zip(jax.tree_util.tree_leaves(before),
                  jax.tree_util.tree_leaves((new.lora, new.opt_state))):
    np.testing.assert_array_equal(a, np.asarray(b))
