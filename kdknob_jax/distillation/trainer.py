"""The distillation trainer: a student learns from a (possibly calibrated) teacher.

Each step takes P train prompts (a seeded per-epoch order, as in calibration) with G
completions each: the teacher's, read from a samples cache written once per run (SFT and
off-policy GKD), or the student's own, sampled now (on-policy GKD; a seeded draw per step picks
which with probability `on_policy_share`). The step then minimizes the method's loss over the
completion tokens (`distillation.step`). The shared run loop resumes, checkpoints and logs;
every key and data position derives from (seed, step), so a resumed run ends where an
uninterrupted one does.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from kdknob_jax import settings as settings_lib
from kdknob_jax import sharding as sharding_lib
from kdknob_jax.data import get_task
from kdknob_jax.decode import Sampler, SamplingConfig
from kdknob_jax.decode.engine import batch_divisor
from kdknob_jax.distillation import samples as samples_lib
from kdknob_jax.distillation.config import DistillConfig
from kdknob_jax.distillation.reference import REFERENCE, reference_field, reference_samples
from kdknob_jax.distillation.step import DistillState, LossConfig, make_train_step
from kdknob_jax.errors import ConfigError
from kdknob_jax.hf import load_tokenizer
from kdknob_jax.hf.tokenizer import same_vocabulary
from kdknob_jax.models import param_axes
from kdknob_jax.models.lora import adapted, init_lora, lora_axes
from kdknob_jax.runs import resolve
from kdknob_jax.train import batch as batch_lib
from kdknob_jax.train import loop
from kdknob_jax.train.settings import check_positions
from kdknob_jax.train.state import commit, replicate, settle, shardings_of


def check_tokenizers(config: DistillConfig):
  """(student tokenizer, whether the teacher's is the same); raises for a token-level method
  across two tokenizers. Reads tokenizers only, so it runs before anything is written."""
  student_tok = load_tokenizer(config.student)
  if config.teacher == REFERENCE:  # the data's solutions, encoded by the student's tokenizer
    return student_tok, True
  teacher_tok = resolve.load_trained_tokenizer(config.teacher)
  same = same_vocabulary(teacher_tok, student_tok)
  if config.method != "sft" and not same:
    raise ConfigError(f"The teacher ({config.teacher}) and the student ({config.student}) have "
                      f"different tokenizers, so token-level losses ({config.method}) have no "
                      "common vocabulary. Use method 'sft', which learns from the teacher's "
                      "text, or a student that shares the teacher's tokenizer.")
  return student_tok, same


def on_policy_at(config: DistillConfig, step: int) -> bool:
  """Whether `step` trains on the student's own samples (a seeded draw per step)."""
  share = config.knobs[0]
  if share <= 0.0 or share >= 1.0:
    return share >= 1.0
  return bool(np.random.default_rng([config.seed, step, 7]).random() < share)


class Distillation:
  """One distillation run's models, data and compiled step (a `loop.Trainer`).

  Construction checks the data and tokenizers, then loads the student (and the teacher when
  the method needs its weights).
  """

  def __init__(self, config: DistillConfig, student_tok, same_tokenizer: bool):
    c = self.config = config
    self.name = f"distill {c.method}"
    self.train, self.eval = c.train.load(), c.eval.load()
    self.mesh = sharding_lib.make_mesh(dict(c.mesh))
    self.rules = tuple(tuple(r) for r in c.rules) or sharding_lib.DEFAULT_RULES
    self.student_tok, self.same_tokenizer = student_tok, same_tokenizer
    self.share, beta = c.knobs
    self.student = resolve.load_student(c.student, c.student_keep, c.dtype, self.mesh,
                                        self.rules)
    self.teacher = None
    if c.method != "sft":
      self.teacher, _ = resolve.load_trained(c.teacher, c.dtype, self.mesh, self.rules)
    task, records = self.train
    self.prompt_ids = [student_tok.encode_prompt(task.prompt(r), chat=c.chat) for r in records]
    self.prompt_slots = max(len(p) for p in self.prompt_ids)
    check_positions(self.student.config, self.prompt_slots, c.max_new_tokens, "student")
    self.row_multiple = batch_divisor(self.mesh, self.rules)
    self.lcfg = c.lora.config()
    self.lossc = LossConfig("ce" if c.method == "sft" else "jsd", beta, float(c.temperature),
                            int(c.chunk), c.execution())
    self.optimizer = c.optimizer.make(c.steps)
    self.sampling = SamplingConfig(c.temperature, c.top_k, c.top_p)
    self.batch_sampler = Sampler.for_tokenizer(self.student.config, student_tok, mesh=self.mesh,
                                               rules=self.rules, prompt_slots=self.prompt_slots)
    self.eval_sampler = Sampler.for_tokenizer(self.student.config, student_tok, mesh=self.mesh,
                                              rules=self.rules)
    self.cache = None
    self.keep = None  # train rows with a correct teacher sample (filter_correct)
    self.train_step = None

  def teacher_samples(self, workdir: Path, progress: bool) -> samples_lib.TeacherSamples:
    """The run's teacher samples: read from the cache, or sampled once and written there."""
    c = self.config
    path = Path(c.samples_cache) if c.samples_cache else workdir / "teacher_samples.parquet"
    if c.teacher == REFERENCE:
      task, records = self.train
      return reference_samples(self.student_tok, task.name, records, c.chat)
    meta = samples_lib.cache_meta(c, resolve.workdir_step(c.teacher))
    found = samples_lib.read(path, meta)
    if found is not None:
      return found.retokenized(self.student_tok, self.same_tokenizer, chat=c.chat)
    if self.teacher is None:
      self.teacher, _ = resolve.load_trained(c.teacher, c.dtype, self.mesh, self.rules)
    task, records = self.train
    teacher_tok = resolve.load_trained_tokenizer(c.teacher)
    prompts = [teacher_tok.encode_prompt(task.prompt(r), chat=c.chat) for r in records]
    out = samples_lib.sample(self.teacher.params, self.teacher.config, teacher_tok, prompts, c,
                             mesh=self.mesh, rules=self.rules, progress=progress)
    samples_lib.write(path, out, meta)
    return out.retokenized(self.student_tok, self.same_tokenizer, chat=c.chat)

  def initial_state(self) -> DistillState:
    """Step 0: the student's weights (or zero-init adapters over them), committed to the mesh;
    also compiles `train_step` for this state's shardings."""
    base = self.student.params
    if self.lcfg is None:
      trainable = jax.tree_util.tree_map(jnp.copy, base)  # donated each step; base stays loaded
      frozen = {}
    else:
      shapes = jax.eval_shape(lambda: base)
      shardings = sharding_lib.shardings_for(
          jax.eval_shape(lambda: init_lora(shapes, self.lcfg, jax.random.PRNGKey(0))),
          lora_axes(param_axes(self.student.config), self.lcfg), self.mesh, self.rules)
      key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), 1)
      trainable = jax.jit(lambda k: init_lora(shapes, self.lcfg, k),
                          out_shardings=shardings)(key)
      frozen = base
    opt_state = settle(jax.jit(self.optimizer.init)(trainable))
    teacher = self.teacher.params if (self.teacher is not None and
                                      self.lossc.loss == "jsd") else {}
    state = commit(DistillState(step=replicate(jnp.zeros((), jnp.int32), self.mesh),
                                params=trainable, opt_state=opt_state, base=frozen,
                                teacher=teacher), self.mesh)
    self.train_step = make_train_step(
        self.student.config, self.teacher.config if self.teacher is not None else None,
        self.lcfg, self.lossc, self.optimizer, self.mesh, self.rules,
        state_shardings=shardings_of(state))
    return state

  def _weights(self, state: DistillState) -> dict:
    if self.lcfg is None:
      return state.params
    return adapted(state.base, state.params, self.lcfg)

  def _batch(self, state: DistillState, step: int, key: jax.Array) -> tuple[dict, dict]:
    """The device batch of `step` and host info (on-policy flag, lengths)."""
    c = self.config
    if self.keep is None:
      idx = batch_lib.data_indices(step, c.prompts_per_step, len(self.prompt_ids), c.seed)
    else:
      idx = self.keep[batch_lib.data_indices(step, c.prompts_per_step, len(self.keep), c.seed)]
    ids = [self.prompt_ids[int(i)] for i in idx]
    on_policy = on_policy_at(c, step)
    if on_policy:
      gen = self.batch_sampler(self._weights(state), ids, n=c.samples_per_prompt,
                               max_new_tokens=c.max_new_tokens, sampling=self.sampling, key=key,
                               prompt_ids=idx)
    else:
      gen = self.cache.generation(idx, c.samples_per_prompt, c.max_new_tokens)
    ro = batch_lib.layout(ids, gen, self.student_tok, self.row_multiple, self.prompt_slots,
                          c.max_new_tokens)
    batch = batch_lib.to_device(ro.arrays, self.mesh, self.rules)
    return batch, {"on_policy": on_policy, "lengths": ro.lengths}

  def step(self, state: DistillState, step: int, key: jax.Array):
    t0 = time.perf_counter()
    batch, info = self._batch(state, step, key)
    t_batch = time.perf_counter() - t0
    state, m = settle(self.train_step(state, batch))
    m = {f"train/{k}": float(v) for k, v in jax.device_get(m).items()}
    dt = time.perf_counter() - t0
    m.update({"batch/on_policy": float(info["on_policy"]),
              "batch/completion_tokens": float(np.mean(info["lengths"])),
              "time/step_s": dt, "time/batch_s": t_batch,
              "throughput/tokens_per_s": float(np.sum(info["lengths"])) / dt})
    return state, m, None

  def evaluate(self, state: DistillState, aux=None) -> dict[str, float]:
    """Greedy held-out accuracy of the student."""
    del aux
    c = self.config
    task, records = self.eval
    ids = [self.student_tok.encode_prompt(task.prompt(r), chat=c.chat) for r in records]
    gen = self.eval_sampler(self._weights(state), ids, n=1,
                            max_new_tokens=c.eval.max_new_tokens or c.max_new_tokens,
                            sampling=SamplingConfig(0.0))
    texts = [self.student_tok.decode(gen.row_tokens(r)) for r in range(len(records))]
    return {"eval/accuracy": float(np.mean([task.is_correct(t, r)
                                           for t, r in zip(texts, records)]))}

  def saved(self, state: DistillState) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}

  def postfix(self, m) -> dict[str, str]:
    return {"loss": f"{m['train/loss']:.3g}"}


def correct_rows(samples: samples_lib.TeacherSamples, task, records) -> np.ndarray:
  """The train rows whose (one) teacher sample the task's verifier marks correct.

  Raises:
    ConfigError: no sample is correct, so a filtered run has nothing to learn from.
  """
  keep = samples_lib.correct_indices(samples.texts, task, records)
  if keep.size == 0:
    raise ConfigError(f"config.filter_correct: none of the teacher's {len(records)} samples is "
                      "correct, so nothing is left to learn from. Use more train prompts "
                      "(config.train.limit) or turn the filter off.")
  return keep


def run(config: DistillConfig, workdir: str | Path, progress: bool = True,
        stop_after: int | None = None) -> dict:
  """Runs (or resumes) a distillation in `workdir`.

  Args:
    config: a checked config (`kdknob_jax.distillation.config.build`).
    workdir: checkpoints, metrics, `run.json` and (by default) the teacher samples go here.
    progress: show progress bars.
    stop_after: end after this many steps of this process (tests of resuming).

  Returns:
    {"step": last step, "metrics": its metrics, "workdir": path}.
  """
  workdir = Path(workdir)
  student_tok, same = check_tokenizers(config)
  config.train.load(), config.eval.load()  # bad data fails before the workdir is bound
  if config.teacher == REFERENCE:
    reference_field(get_task(config.train.task).name)
  with loop.open_workdir(workdir, config.identity(), config.keep_checkpoints) as ckpt:
    trainer = Distillation(config, student_tok, same)
    if trainer.share < 1.0:
      trainer.cache = trainer.teacher_samples(workdir, progress)
      if config.method == "sft":
        trainer.teacher = None  # SFT needs only the samples: free the teacher's memory
      if config.filter_correct:
        trainer.keep = correct_rows(trainer.cache, *trainer.train)
    state = trainer.initial_state()
    return loop.run(trainer, state, ckpt, config.loop(), workdir, trainer.mesh,
                    settings_lib.flat(config), progress=progress, stop_after=stop_after)
