"""Our side of the training-step comparison: one calibration update and one distillation update
through the trainers' own jitted step functions (`calibration.step.make_train_step`,
`distillation.step.make_train_step`), on rollouts given as token ids.

The gradients come out of the same compiled step that applies them: the optimizer is ours
behind a first stage that keeps the incoming gradients in its state, so nothing re-derives the
loss or compiles a second program.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdknob_jax.calibration import step as calib_step
from kdknob_jax.calibration.objective import combine_advantages
from kdknob_jax.distillation import step as distill_step
from kdknob_jax.hf.load import LoadedModel
from kdknob_jax.models import ExecConfig
from kdknob_jax.models.lora import LoraConfig
from kdknob_jax.models.scoring import round_up


def capture_then(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """`optimizer` after a stage that passes the gradients on unchanged and keeps them as its
  state: after one step, `opt_state[0]` holds exactly the gradients the step applied."""

  def init(params):
    return jax.tree_util.tree_map(jnp.zeros_like, params)

  def update(updates, state, params=None):
    del state, params
    return updates, updates

  return optax.chain(optax.GradientTransformation(init, update), optimizer)


def rollout_arrays(prompts: Sequence[Sequence[int]], owner: Sequence[int],
                   completions: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
  """The step's input arrays (`kdknob_jax.train.batch.layout`'s): prompts [P, S] run once,
  rows [N, T] continue prompt `owner[n]`; padding has position −1 and mask 0."""
  s = round_up(max(len(p) for p in prompts), 32)
  t = round_up(max(len(c) for c in completions), 16)
  n = len(completions)
  arrays = {"prompts": np.zeros((len(prompts), s), np.int32),
            "prompt_pos": np.full((len(prompts), s), -1, np.int32),
            "owner": np.asarray(owner, np.int32),
            "completions": np.zeros((n, t), np.int32),
            "completion_pos": np.full((n, t), -1, np.int32)}
  for i, p in enumerate(prompts):
    arrays["prompts"][i, :len(p)] = p
    arrays["prompt_pos"][i, :len(p)] = np.arange(len(p))
  for r, c in enumerate(completions):
    arrays["completions"][r, :len(c)] = c
    arrays["completion_pos"][r, :len(c)] = len(prompts[owner[r]]) + np.arange(len(c))
  arrays["mask"] = (arrays["completion_pos"] >= 0).astype(np.float32)
  return arrays


def advantages(rewards: Mapping[str, np.ndarray], weights: Mapping[str, float], group_size: int,
               renormalize: bool) -> np.ndarray:
  """Our advantages (`calibration.objective.combine_advantages`) from float32 rewards."""
  r = {k: jnp.asarray(v, jnp.float32) for k, v in rewards.items()}
  return np.asarray(combine_advantages(r, weights, group_size, renormalize))


def _copy(tree):
  # The steps donate their state; the caller's arrays (weights reused by the next comparison)
  # must survive them.
  return jax.tree_util.tree_map(jnp.array, tree)


def calibration_update(model: LoadedModel, lcfg: LoraConfig, lora: dict,
                       arrays: Mapping[str, np.ndarray], adv: np.ndarray,
                       scfg: calib_step.StepConfig, optimizer: optax.GradientTransformation
                       ) -> dict:
  """One calibration step from `lora`: scoring (`score_rollouts`) then the train step.

  Returns:
    {"loss", "kl", "grads", "new" (adapter trees, numpy), "ref_logp" [N, T], "grad_norm"}.
  """
  opt = capture_then(optimizer)
  lora = _copy(lora)
  state = calib_step.CalibState(step=jnp.zeros((), jnp.int32), lora=lora,
                                opt_state=opt.init(lora), base=_copy(model.params))
  batch = {k: jnp.asarray(v) for k, v in arrays.items()}
  zeros = jnp.zeros(batch["mask"].shape, jnp.float32)
  batch.update(advantages=jnp.asarray(adv, jnp.float32), old_logp=zeros, ref_logp=zeros)
  old, ref = calib_step.score_rollouts(state, batch, cfg=model.config, lcfg=lcfg, scfg=scfg)
  batch.update(old_logp=old, ref_logp=ref)
  train = calib_step.make_train_step(model.config, lcfg, scfg, opt)
  new, metrics = jax.block_until_ready(train(state, batch, jax.random.PRNGKey(0)))
  m = jax.device_get(metrics)
  return {"loss": float(m["loss"]), "kl": float(m["kl"]), "grad_norm": float(m["grad_norm"]),
          "grads": jax.device_get(new.opt_state[0]), "new": jax.device_get(new.lora),
          "ref_logp": np.asarray(ref)}


def distillation_update(student: LoadedModel, teacher: LoadedModel,
                        arrays: Mapping[str, np.ndarray], beta: float, temperature: float,
                        optimizer: optax.GradientTransformation) -> dict:
  """One full fine-tuning step of the student on the generalized JSD_β to the teacher.

  Returns:
    {"loss", "grad_norm", "grads", "new" (param trees, numpy)}.
  """
  opt = capture_then(optimizer)
  params = _copy(student.params)
  state = distill_step.DistillState(step=jnp.zeros((), jnp.int32), params=params,
                                    opt_state=opt.init(params), base={},
                                    teacher=_copy(teacher.params))
  lossc = distill_step.LossConfig("jsd", float(beta), float(temperature), 0, ExecConfig())
  train = distill_step.make_train_step(student.config, teacher.config, None, lossc, opt)
  batch = {k: jnp.asarray(v) for k, v in arrays.items()}
  new, metrics = jax.block_until_ready(train(state, batch))
  m = jax.device_get(metrics)
  return {"loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
          "grads": jax.device_get(new.opt_state[0]), "new": jax.device_get(new.params)}


def optimizer_step(optimizer: optax.GradientTransformation, params: dict, grads: dict) -> dict:
  """The values one step of `optimizer` (from its initial state) makes of `params` with these
  gradients: our optimizer on the other side's gradients, to compare optimizers alone."""
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)
  grads = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), grads)

  @jax.jit
  def step(p, g):
    updates, _ = optimizer.update(g, optimizer.init(p), p)
    return optax.apply_updates(p, updates)

  return jax.device_get(step(params, grads))
