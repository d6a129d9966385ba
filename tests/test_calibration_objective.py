"""The calibration objective's math: advantages against a numpy reference, and the clipped
policy loss (value and gradient) against TRL's own `GRPOTrainer._compute_loss`."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from kdknob_jax.calibration.objective import combine_advantages, group_normalize, policy_loss

G = 4


def _np_norm(r, g):
  r = np.asarray(r, np.float64).reshape(-1, g)
  return ((r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)).reshape(-1)


def test_each_reward_is_normalized_in_its_group_then_summed():
  rng = np.random.default_rng(0)
  task = rng.integers(0, 2, 12).astype(np.float32)  # correct / wrong
  cal = rng.normal(-30, 8, 12).astype(np.float32)   # log-prob differences, another scale
  task[:G] = 1.0  # a group where every rollout is right: no task signal there
  got = np.asarray(combine_advantages({"task": task, "cal": cal}, {"cal": -0.5}, G))
  want = _np_norm(task, G) - 0.5 * _np_norm(cal, G)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(group_normalize(task, G))[:G], 0.0)
  # Scale invariance per reward: that is why each is normalized on its own.
  again = combine_advantages({"task": task, "cal": 100 * cal}, {"cal": -0.5}, G)
  np.testing.assert_allclose(np.asarray(again), got, rtol=1e-4, atol=1e-4)
  renorm = np.asarray(combine_advantages({"task": task, "cal": cal}, {"cal": -0.5}, G,
                                         renormalize=True))
  np.testing.assert_allclose(renorm, (want - want.mean()) / (want.std(ddof=1) + 1e-4),
                             rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="unknown rewards"):
    combine_advantages({"task": task}, {"cal": 1.0}, G)


def _trl_loss(torch, logp, old, ref, adv, mask, beta, eps, eps_high, loss_type):
  """TRL's loss with its model call stubbed out: our log-probs go in as the model's."""
  from trl.trainer.grpo_trainer import GRPOTrainer  # pylint: disable=g-import-not-at-top
  logp_t = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
  identity = lambda x, **_: x  # pylint: disable=unnecessary-lambda-assignment
  fake = SimpleNamespace(
      loss_type=loss_type, beta=beta, epsilon_low=eps, epsilon_high=eps_high,
      importance_sampling_level="token", top_entropy_quantile=1.0,
      off_policy_mask_threshold=None, use_vllm=False,
      args=SimpleNamespace(delta=None, use_bias_correction_kl=False),
      model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
      aux_loss_enabled=False, _entropy_bonus_enabled=False,
      _metrics={"train": defaultdict(list)},
      accelerator=SimpleNamespace(gather=identity, reduce=identity, gather_for_metrics=identity,
                                  num_processes=1),
      _get_per_token_logps_and_entropies=lambda *a, **k: (logp_t, torch.zeros_like(logp_t),
                                                            None))
  n, t = logp.shape
  inputs = {
      "prompt_ids": torch.zeros((n, 1), dtype=torch.long),
      "prompt_mask": torch.ones((n, 1), dtype=torch.long),
      "completion_ids": torch.zeros((n, t), dtype=torch.long),
      "completion_mask": torch.tensor(mask, dtype=torch.long),
      "advantages": torch.tensor(adv, dtype=torch.float64),
      "old_per_token_logps": torch.tensor(old, dtype=torch.float64),
      "ref_per_token_logps": torch.tensor(ref, dtype=torch.float64),
  }
  loss = GRPOTrainer._compute_loss(fake, None, inputs)  # pylint: disable=protected-access
  loss.backward()
  return float(loss.detach()), logp_t.grad.numpy(), fake._metrics["train"]  # pylint: disable=protected-access


@pytest.mark.parametrize("aggregation,loss_type", [("sequence_mean", "grpo"),
                                                   ("token_mean", "bnpo")])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_policy_loss_matches_trl(aggregation, loss_type, beta):
  torch = pytest.importorskip("torch")
  pytest.importorskip("trl.trainer.grpo_trainer")
  rng = np.random.default_rng(1)
  n, t = 8, 7
  old = rng.normal(-2.0, 0.5, (n, t))
  logp = old + rng.normal(0.0, 0.3, (n, t))  # ratios well outside [0.8, 1.28]: clipping acts
  ref = old + rng.normal(0.0, 0.2, (n, t))
  adv = rng.normal(0.0, 1.0, n)
  mask = np.ones((n, t))
  mask[0, 3:] = 0
  mask[5, 1:] = 0
  want, want_grad, metrics = _trl_loss(torch, logp, old, ref, adv, mask, beta, 0.2, 0.28,
                                       loss_type)

  def ours(lp):
    return policy_loss(lp, jnp.asarray(old, jnp.float32), jnp.asarray(adv, jnp.float32),
                       jnp.asarray(mask, jnp.float32), ref_logp=jnp.asarray(ref, jnp.float32),
                       beta=beta, epsilon=0.2, epsilon_high=0.28, aggregation=aggregation)

  (got, got_metrics), grad = jax.value_and_grad(ours, has_aux=True)(jnp.asarray(logp,
                                                                                jnp.float32))
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(float(got_metrics["clip_fraction"]),
                             metrics["clip_ratio/region_mean"][0], rtol=1e-6)
  assert 0.05 < float(got_metrics["clip_fraction"]) < 0.95
  if beta:
    np.testing.assert_allclose(float(got_metrics["kl"]), metrics["kl"][0], rtol=1e-5)


def test_policy_loss_errors():
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="aggregation"):
    policy_loss(x, x, jnp.zeros(2), x, aggregation="sum")
  with pytest.raises(ValueError, match="ref_logp"):
    policy_loss(x, x, jnp.zeros(2), x, beta=0.1)


def test_advantage_sensitivity_bounds_how_far_rounding_moves_the_advantages():
  """Relative perturbations ε of the rewards move each advantage by at most ε × sensitivity;
  a nearly tied group (rewards 0.05 apart) makes the factor large."""
  from kdknob_jax.calibration.objective import advantage_sensitivity  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  r_cal = np.array([-26.57, -51.82, -26.29, -26.23])
  r_task = np.array([0.0, 1.0, 1.0, 1.0])
  rewards, weights = {"task": r_task, "cal": r_cal}, {"task": 1.0, "cal": -1.0}
  factor = advantage_sensitivity(rewards, weights, 2)
  assert factor > 400  # the second group's calibration rewards nearly tie
  base = np.asarray(combine_advantages(rewards, weights, 2), np.float64)
  eps = 1e-6
  for _ in range(20):
    moved = {k: v * (1 + eps * rng.uniform(-1, 1, v.shape)) for k, v in rewards.items()}
    shift = np.abs(np.asarray(combine_advantages(moved, weights, 2), np.float64) - base).max()
    assert shift <= eps * factor * 1.01 + 1e-6  # + float32 rounding of the advantages
