"""The calibration trainer: reinforcement fine-tuning of the teacher's LoRA adapters.

Each step: sample G rollouts per prompt from the adapted teacher (our decoder), grade them,
score them under the adapted teacher and the base (jitted, on the mesh) and their text under
the target (its own tokenizer), combine the group-normalized rewards into advantages, and take
μ optimizer steps on the clipped surrogate. The shared run loop (`kdknob_jax.train.loop`)
resumes, checkpoints and logs; since the data order and every key derive from (seed, step), a
resumed run ends with the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from kdknob_jax import settings as settings_lib
from kdknob_jax import sharding as sharding_lib
from kdknob_jax.calibration import measures
from kdknob_jax.calibration import step as step_lib
from kdknob_jax.calibration.config import CalibConfig
from kdknob_jax.calibration.rollouts import rollout
from kdknob_jax.decode import Sampler, SamplingConfig
from kdknob_jax.decode.engine import batch_divisor
from kdknob_jax.diagnostics.traps import score_sequences
from kdknob_jax.hf import load_config, load_model, load_tokenizer
from kdknob_jax.hf.tokenizer import same_vocabulary
from kdknob_jax.models import param_axes
from kdknob_jax.models.lora import adapted, init_lora, lora_axes
from kdknob_jax.runs.metrics import device_peak_flops
from kdknob_jax.train import loop
from kdknob_jax.train.settings import check_positions
from kdknob_jax.train.state import commit, replicate, settle, shardings_of


class Calibration:
  """One calibration run's models, tokenizers, data and compiled programs (a `loop.Trainer`).

  Construction checks the data and tokenizers, then loads both models onto the mesh.
  """
  name = "calibrate"

  def __init__(self, config: CalibConfig):
    c = self.config = config
    self.train, self.eval = c.train.load(), c.eval.load()
    self.mesh = sharding_lib.make_mesh(dict(c.mesh))
    self.rules = tuple(tuple(r) for r in c.rules) or sharding_lib.DEFAULT_RULES
    self.teacher_tok, self.target_tok = load_tokenizer(c.teacher), load_tokenizer(c.target)
    t_cfg, g_cfg = load_config(c.teacher), load_config(c.target)
    # Shared ids: the target scores the teacher's sampled ids (rows past its embedding fall
    # back to text). Shared vocabulary rows too: token-level trap metrics compare the heads.
    self.same_ids = same_vocabulary(self.teacher_tok, self.target_tok)
    self.same_vocab = t_cfg.vocab_size == g_cfg.vocab_size and self.same_ids
    self.lcfg = c.lora.config()
    self.scfg = step_lib.StepConfig.of(c)
    self.optimizer = c.optimizer.make(c.steps * c.inner_updates)  # updates, not steps
    self.teacher = load_model(c.teacher, dtype=c.dtype, mesh=self.mesh, rules=self.rules)
    self.target = load_model(c.target, dtype=c.dtype, mesh=self.mesh, rules=self.rules)
    self.row_multiple = batch_divisor(self.mesh, self.rules)  # the decoder pads rows the same way
    # Every step pads to the longest train prompt, so each program compiles once per run.
    task, records = self.train
    self.prompt_slots = max([len(self.teacher_tok.encode_prompt(task.prompt(r), chat=c.chat))
                             for r in records] + [c.prompt_slots])
    self.target_prompt_slots = max(
        len(self.target_tok.encode_prompt(task.prompt(r), chat=c.target_chat)) for r in records)
    check_positions(self.teacher.config, self.prompt_slots, c.max_new_tokens, "teacher")
    check_positions(self.target.config, self.target_prompt_slots, c.max_new_tokens, "target")
    self.sampling = SamplingConfig(c.temperature, c.top_k, c.top_p)
    self.rollout_sampler = Sampler.for_tokenizer(
        self.teacher.config, self.teacher_tok, mesh=self.mesh, rules=self.rules,
        prompt_slots=self.prompt_slots, stop=c.stop_at_eos)
    self.eval_sampler = Sampler.for_tokenizer(self.teacher.config, self.teacher_tok,
                                              mesh=self.mesh, rules=self.rules)
    self.peak = c.peak_flops or device_peak_flops()
    self.train_step = None  # compiled against the initial state's shardings

  def initial_state(self) -> step_lib.CalibState:
    """Step 0: zero-init adapters (the teacher is exactly the base) sharded like their
    weights; also compiles `train_step` for this state's shardings."""
    base = self.teacher.params
    shapes = jax.eval_shape(lambda: base)  # init reads shapes only; never capture the weights
    shardings = sharding_lib.shardings_for(
        jax.eval_shape(lambda: init_lora(shapes, self.lcfg, jax.random.PRNGKey(0))),
        lora_axes(param_axes(self.teacher.config), self.lcfg), self.mesh, self.rules)
    key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), 1)
    lora = settle(jax.jit(lambda k: init_lora(shapes, self.lcfg, k),
                          out_shardings=shardings)(key))
    opt_state = settle(jax.jit(self.optimizer.init)(lora))
    state = commit(step_lib.CalibState(step=replicate(jnp.zeros((), jnp.int32), self.mesh),
                                       lora=lora, opt_state=opt_state, base=base), self.mesh)
    # Pinning the step's output shardings to its inputs' keeps one compiled program per run.
    self.train_step = step_lib.make_train_step(
        self.teacher.config, self.lcfg, self.scfg, self.optimizer, self.mesh, self.rules,
        state_shardings=shardings_of(state))
    return state

  def step(self, state: step_lib.CalibState, step: int, key: jax.Array):
    """Rollouts, then μ updates on them; returns (state, metrics, rollout info)."""
    c = self.config
    t0 = time.perf_counter()
    batch, info = rollout(self, state, step, jax.random.fold_in(key, 0))
    t_roll = time.perf_counter() - t0
    for inner in range(c.inner_updates):
      state, m = settle(self.train_step(state, batch, jax.random.fold_in(key, 1 + inner)))
    m = {f"train/{k}": float(v) for k, v in jax.device_get(m).items()}
    dt = time.perf_counter() - t0
    m.update(measures.rollout_metrics(info))
    m.update({"time/step_s": dt, "time/rollout_s": t_roll,
              "throughput/tokens_per_s": float(np.sum(info["lengths"])) / dt})
    if self.peak:
      flops = measures.step_flops(c, self.teacher.config, self.target.config, info)
      m["throughput/mfu"] = flops / (dt * len(self.mesh.devices.flat) * self.peak)
    return state, m, info

  def evaluate(self, state: step_lib.CalibState, info: dict | None) -> dict[str, float]:
    """Greedy held-out accuracy of the adapted teacher and, when the target shares its
    tokenizer, the token-level KL(target‖teacher) per token on the step's rollouts."""
    c = self.config
    task, records = self.eval
    params = adapted(state.base, state.lora, self.lcfg)
    ids = [self.teacher_tok.encode_prompt(task.prompt(r), chat=c.chat) for r in records]
    gen = self.eval_sampler(params, ids, n=1,
                            max_new_tokens=c.eval.max_new_tokens or c.max_new_tokens,
                            sampling=SamplingConfig(0.0))
    texts = [self.teacher_tok.decode(gen.row_tokens(r)) for r in range(len(records))]
    out = {"eval/accuracy": float(np.mean([task.is_correct(t, r)
                                           for t, r in zip(texts, records)]))}
    if self.same_vocab and info is not None:
      gen_r = info["gen"]
      seqs = [(info["ids"][int(gen_r.prompt_index[r])], gen_r.row_tokens(r))
              for r in range(gen_r.tokens.shape[0])]
      scores = score_sequences((self.target.params, self.target.config),
                               (params, self.teacher.config), seqs, ks=(1,), direction="rkl",
                               rows_per_call=c.rows_per_call)
      out["trap/token_kl_target_teacher"] = float(scores.rkl.sum()
                                                  / max(scores.lengths.sum(), 1))
    return out

  def saved(self, state: step_lib.CalibState) -> dict:
    return {"step": state.step, "lora": state.lora, "opt_state": state.opt_state}

  def postfix(self, m) -> dict[str, str]:
    return {"acc": f"{m['reward/task']:.2f}", "r_cal": f"{m['reward/cal']:.2f}",
            "kl": f"{m['train/kl']:.3g}"}


def run(config: CalibConfig, workdir: str | Path, progress: bool = True,
        stop_after: int | None = None) -> dict:
  """Runs (or resumes) a calibration in `workdir`.

  Args:
    config: a checked config (`kdknob_jax.calibration.config.build`).
    workdir: checkpoints, metrics (`metrics.jsonl`, TensorBoard) and `run.json` go here.
    progress: show a progress bar.
    stop_after: end after this many steps of this process, as if killed right after that
      step's checkpoint was written (for tests of resuming).

  Returns:
    {"step": last step, "metrics": its metrics, "workdir": path}.
  """
  workdir = Path(workdir)
  # The lock and identity come before any model loads: a busy or foreign workdir costs nothing.
  with loop.open_workdir(workdir, config.identity(), config.keep_checkpoints) as ckpt:
    trainer = Calibration(config)
    state = trainer.initial_state()
    return loop.run(trainer, state, ckpt, config.loop(), workdir, trainer.mesh,
                    settings_lib.flat(config), progress=progress, stop_after=stop_after)
