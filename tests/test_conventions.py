"""The conventions a user may pick to match the PyTorch path: the learning-rate schedule (HF's and
TRL's linear decay, checked against transformers' own schedule) and the temperature of the
loss's log-probs (TRL's tempered form); workdirs written before either setting existed resume."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdknob_jax.errors import ConfigError, RunStateError


def test_linear_schedule_is_transformers_linear_schedule_with_warmup():
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import get_linear_schedule_with_warmup  # pylint: disable=g-import-not-at-top
  from kdknob_jax.train.optimizer import learning_rate  # pylint: disable=g-import-not-at-top
  lr, warm, total = 2e-5, 3, 11
  opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
  sched = get_linear_schedule_with_warmup(opt, warm, total)
  theirs = []
  for _ in range(total):
    theirs.append(opt.param_groups[0]["lr"])  # the rate of this update
    opt.step()
    sched.step()
  ours = [float(learning_rate(lr, warm, "linear", total)(i)) for i in range(total)]
  np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-12)
  assert ours[0] == 0.0 and ours[warm] == pytest.approx(lr) and ours[-1] > 0.0


def test_constant_and_cosine_schedules_and_their_errors():
  from kdknob_jax.train.optimizer import learning_rate  # pylint: disable=g-import-not-at-top
  const = learning_rate(1.0, 2, "constant")
  assert [float(const(i)) for i in range(5)] == [0.0, 0.5, 1.0, 1.0, 1.0]
  cos = learning_rate(1.0, 0, "cosine", 4)
  np.testing.assert_allclose([float(cos(i)) for i in range(5)],
                             [0.5 * (1 + np.cos(np.pi * i / 4)) for i in range(5)], atol=1e-6)
  with pytest.raises(ValueError, match="more steps"):
    learning_rate(1.0, 5, "linear", 5)
  with pytest.raises(ValueError, match="Unknown learning-rate schedule 'step'"):
    learning_rate(1.0, 0, "step")


def test_schedule_settings_are_checked_before_a_run():
  from kdknob_jax.calibration import config as calib_config  # pylint: disable=g-import-not-at-top
  c = calib_config.paper_config("smollm2-135m-instruct", "gemma3-270m", 1.0, "smoke")
  c.optimizer.schedule = "step"
  with pytest.raises(ConfigError, match="schedule must be one of"):
    calib_config.build(c)
  c.optimizer.update(schedule="linear", warmup_steps=4)
  c.steps = 4
  with pytest.raises(ConfigError, match=r"config.steps \(4\) must exceed"):
    calib_config.build(c)
  c.steps = 5
  assert calib_config.build(c).optimizer.schedule == "linear"
  c.loss_temperature = "tempered"
  with pytest.raises(ConfigError, match="loss_temperature must be one of"):
    calib_config.build(c)


def test_loss_log_probs_at_the_sampling_temperature_are_trls():
  """With loss_temperature "sampling", the step's log-probs are log_softmax(logits / T), what
  TRL's GRPOTrainer computes; "model" keeps T = 1."""
  from kdknob_jax.calibration import config as calib_config  # pylint: disable=g-import-not-at-top
  from kdknob_jax.calibration import step as step_lib  # pylint: disable=g-import-not-at-top
  from kdknob_jax.models import ModelConfig, forward, init_params  # pylint: disable=g-import-not-at-top
  from kdknob_jax.models.scoring import completion_logp  # pylint: disable=g-import-not-at-top
  from conftest import TINY  # pylint: disable=g-import-not-at-top
  cfg = ModelConfig.from_hf(dict(TINY["gemma3"], vocab_size=64))  # softcapped logits
  params = init_params(cfg, jax.random.PRNGKey(0))
  prompt, comp = [3, 9, 4], [7, 1, 12, 5]
  batch = dict(prompts=jnp.array([prompt]), prompt_pos=jnp.arange(3)[None],
               owner=jnp.array([0]), completions=jnp.array([comp]),
               completion_pos=jnp.arange(3, 7)[None])
  logits = forward(params, cfg, jnp.array([prompt + comp]))[0][0]
  for temp in (1.0, 0.7):
    want = jax.nn.log_softmax(logits[2:-1] / temp, axis=-1)[jnp.arange(4), jnp.array(comp)]
    got = completion_logp(params, cfg, batch, 0, temperature=temp)[0]
    np.testing.assert_allclose(got, want, atol=2e-6)
  c = calib_config.paper_config("smollm2-135m-instruct", "gemma3-270m", 1.0, "smoke")
  c.temperature = 0.7
  assert step_lib.StepConfig.of(calib_config.build(c)).logp_temperature == 1.0
  c.loss_temperature = "sampling"
  assert step_lib.StepConfig.of(calib_config.build(c)).logp_temperature == 0.7


def test_a_workdir_from_before_the_new_settings_resumes(tmp_path):
  """run.json written without optimizer.schedule and loss_temperature reads as the behaviour
  those runs had (constant, model); another value is still refused."""
  from kdknob_jax.calibration import config as calib_config  # pylint: disable=g-import-not-at-top
  from kdknob_jax.runs.checkpoints import RunCheckpoints  # pylint: disable=g-import-not-at-top
  c = calib_config.build(calib_config.paper_config("smollm2-135m-instruct", "gemma3-270m", 1.0,
                                                   "smoke"))
  old = json.loads(json.dumps(c.identity()))
  del old["optimizer"]["schedule"], old["loss_temperature"]
  (tmp_path / "run.json").write_text(json.dumps(old))
  RunCheckpoints(tmp_path, c.identity())  # resumes
  changed = dict(c.identity(), loss_temperature="sampling")
  with pytest.raises(RunStateError, match="other settings.*loss_temperature"):
    RunCheckpoints(tmp_path, changed)
