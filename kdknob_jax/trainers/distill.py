"""The distillation loop: a student learns from a (possibly calibrated) teacher.

Each step takes P train prompts (a seeded per-epoch order, as in calibration) with G
completions each: the teacher's, read from a samples cache written once per run (SFT and
off-policy GKD), or the student's own, sampled now (on-policy GKD; a seeded draw per step picks
which with probability `on_policy_share`). The step then minimizes the method's loss over the
completion tokens (`distill_step`). Checkpoints, metrics and resuming work as in calibration:
every key and data position derives from (seed, step), so a resumed run ends where an
uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from kdknob_jax import metrics as metrics_lib
from kdknob_jax import sharding as sharding_lib
from kdknob_jax.checkpoint import RunCheckpoints, read_identity
from kdknob_jax.decode import SamplingConfig
from kdknob_jax.decode.engine import _batch_divisor, generate_ids
from kdknob_jax.errors import ConfigError
from kdknob_jax.hf import LoadedModel, load_model, load_tokenizer
from kdknob_jax.models import param_axes
from kdknob_jax.models.derive import keep_layers
from kdknob_jax.rl.lora import LoraConfig, init_lora, lora_axes, targets_from_names
from kdknob_jax.trainers import distill_config as config_lib
from kdknob_jax.trainers import resolve
from kdknob_jax.trainers import rollouts as rollouts_lib
from kdknob_jax.trainers import samples as samples_lib
from kdknob_jax.trainers import step as step_lib
from kdknob_jax.trainers.calibration import _pad_id, _records, _settle, replicate, resume
from kdknob_jax.trainers.distill_step import DistillState, LossConfig, make_train_step

_PROBE = "Distil 12,345 tokens: naïve café — ∑ ok?"


@dataclasses.dataclass
class Setup:
  """Everything a run needs besides its state."""
  config: object
  mesh: object
  rules: tuple
  student: LoadedModel
  student_tok: object
  teacher: LoadedModel | None
  same_tokenizer: bool
  train: tuple
  eval: tuple
  lcfg: LoraConfig | None
  lossc: LossConfig
  share: float
  optimizer: object
  prompt_ids: list
  prompt_slots: int
  row_multiple: int
  train_step: object = None


def load_student(config, mesh=None, rules=sharding_lib.DEFAULT_RULES) -> LoadedModel:
  """The student's starting weights: `config.student`, cut to `config.student_keep`."""
  model = load_model(config.student, dtype=config.dtype)
  keep = config_lib.parse_keep(config.student_keep, model.config.num_layers)
  if keep != tuple(range(model.config.num_layers)):
    params, cfg = keep_layers(model.params, model.config, keep)
    params = jax.tree_util.tree_map(jnp.array, params)  # own the sliced layers
    model = dataclasses.replace(model, params=params, config=cfg)
  if mesh is not None:
    shardings = sharding_lib.shardings_for(jax.eval_shape(lambda: model.params),
                                           param_axes(model.config), mesh, rules)
    model = dataclasses.replace(model, params=jax.device_put(model.params, shardings))
  return model


def _lora(config) -> LoraConfig | None:
  if not config.lora.rank:
    return None
  return LoraConfig(int(config.lora.rank), float(config.lora.alpha or config.lora.rank),
                    targets_from_names(config.lora.targets))


def check_tokenizers(config):
  """(student tokenizer, whether the teacher's is the same); raises for a token-level method
  across two tokenizers. Reads tokenizers only, so it runs before anything is written."""
  student_tok = load_tokenizer(config.student)
  teacher_tok = resolve.load_trained_tokenizer(config.teacher)
  same = (teacher_tok.vocab_size == student_tok.vocab_size
          and teacher_tok.encode(_PROBE) == student_tok.encode(_PROBE))
  if config.method != "sft" and not same:
    raise ConfigError(f"The teacher ({config.teacher}) and the student ({config.student}) have "
                      f"different tokenizers, so token-level losses ({config.method}) have no "
                      "common vocabulary. Use method 'sft', which learns from the teacher's "
                      "text, or a student that shares the teacher's tokenizer.")
  return student_tok, same


def setup(config, need_teacher: bool = True) -> Setup:
  """Checks the config, data and tokenizers, then loads the student (and the teacher)."""
  config_lib.check(config)
  train, evaluation = _records(config.train), _records(config.eval)
  mesh = sharding_lib.make_mesh(dict(config.mesh))
  rules = tuple(tuple(r) for r in config.rules) or sharding_lib.DEFAULT_RULES
  student_tok, same = check_tokenizers(config)
  share, beta = config_lib.knobs(config)
  student = load_student(config, mesh, rules)
  teacher = None
  if need_teacher:
    teacher, _ = resolve.load_trained(config.teacher, config.dtype, mesh, rules)
  task, records = train
  prompt_ids = [student_tok.encode_prompt(task.prompt(r), chat=config.chat) for r in records]
  lossc = LossConfig("ce" if config.method == "sft" else "jsd", beta, float(config.temperature),
                     int(config.chunk))
  o = config.optimizer
  optimizer = step_lib.make_optimizer(o.lr, o.warmup_steps, o.clip, o.weight_decay, o.b1, o.b2)
  return Setup(config, mesh, rules, student, student_tok, teacher, same,
               train, evaluation, _lora(config), lossc, share, optimizer, prompt_ids,
               max(len(p) for p in prompt_ids), _batch_divisor(mesh, rules))


def initial_state(s: Setup) -> DistillState:
  """Step 0: the student's weights (or zero-init adapters over them), committed to the mesh;
  also compiles `s.train_step` for this state's shardings."""
  c = s.config
  base = s.student.params
  if s.lcfg is None:
    trainable = jax.tree_util.tree_map(jnp.copy, base)  # donated each step; base stays loaded
    frozen = {}
  else:
    shapes = jax.eval_shape(lambda: base)
    shardings = sharding_lib.shardings_for(
        jax.eval_shape(lambda: init_lora(shapes, s.lcfg, jax.random.PRNGKey(0))),
        lora_axes(param_axes(s.student.config), s.lcfg), s.mesh, s.rules)
    key = jax.random.fold_in(jax.random.PRNGKey(c.seed), 1)
    trainable = jax.jit(lambda k: init_lora(shapes, s.lcfg, k), out_shardings=shardings)(key)
    frozen = base
  opt_state = _settle(jax.jit(s.optimizer.init)(trainable))
  teacher = s.teacher.params if (s.teacher is not None and s.lossc.loss == "jsd") else {}
  state = DistillState(step=replicate(jnp.zeros((), jnp.int32), s.mesh), params=trainable,
                       opt_state=opt_state, base=frozen, teacher=teacher)
  devices = set(s.mesh.devices.flat)
  state = jax.tree_util.tree_map(
      lambda x: x if x.committed and x.sharding.device_set == devices else replicate(x, s.mesh),
      state)
  s.train_step = make_train_step(
      s.student.config, s.teacher.config if s.teacher is not None else None, s.lcfg, s.lossc,
      s.optimizer, s.mesh, s.rules, state_shardings=jax.tree_util.tree_map(lambda x: x.sharding,
                                                                           state))
  return state


def identity(config) -> dict:
  """The settings a workdir is bound to."""
  d = config.to_dict()
  return dict({k: d[k] for k in config_lib.IDENTITY_KEYS}, run_kind=resolve.DISTILL_KIND)


def _weights(s: Setup, state: DistillState) -> dict:
  if s.lcfg is None:
    return state.params
  return _settle(step_lib.merged_params(state.base, state.params, cfg=s.student.config,
                                        lcfg=s.lcfg, mesh=s.mesh, rules=s.rules))


def on_policy_at(config, step: int, share: float) -> bool:
  """Whether `step` trains on the student's own samples (a seeded draw per step)."""
  if share <= 0.0 or share >= 1.0:
    return share >= 1.0
  return bool(np.random.default_rng([config.seed, step, 7]).random() < share)


def batch_at(s: Setup, state: DistillState, step: int, key: jax.Array,
             cache: samples_lib.TeacherSamples | None) -> tuple[dict, dict]:
  """The device batch of `step` and host info (on-policy flag, lengths)."""
  c = s.config
  idx = rollouts_lib.data_indices(step, c.prompts_per_step, len(s.prompt_ids), c.seed)
  ids = [s.prompt_ids[int(i)] for i in idx]
  on_policy = on_policy_at(c, step, s.share)
  if on_policy:
    gen = generate_ids(_weights(s, state), s.student.config, ids, n=c.samples_per_prompt,
                       max_new_tokens=c.max_new_tokens,
                       sampling=SamplingConfig(c.temperature, c.top_k, c.top_p),
                       stop_ids=s.student_tok.eos_ids, key=key, prompt_ids=idx,
                       pad_id=_pad_id(s.student_tok), prompt_slots=s.prompt_slots,
                       mesh=s.mesh, rules=s.rules)
  else:
    gen = cache.generation(idx, c.samples_per_prompt, c.max_new_tokens)
  ro = rollouts_lib.layout(ids, gen, s.student_tok, s.row_multiple, s.prompt_slots,
                           c.max_new_tokens)
  batch = step_lib.to_device(ro.arrays, s.mesh, s.rules)
  return batch, {"on_policy": on_policy, "lengths": ro.lengths}


def evaluate(s: Setup, state: DistillState) -> dict[str, float]:
  """Greedy held-out accuracy of the student."""
  c = s.config
  task, records = s.eval
  ids = [s.student_tok.encode_prompt(task.prompt(r), chat=c.chat) for r in records]
  gen = generate_ids(_weights(s, state), s.student.config, ids, n=1,
                     max_new_tokens=c.eval.max_new_tokens or c.max_new_tokens,
                     sampling=SamplingConfig(0.0), stop_ids=s.student_tok.eos_ids,
                     pad_id=_pad_id(s.student_tok), mesh=s.mesh, rules=s.rules)
  texts = [s.student_tok.decode(gen.row_tokens(r)) for r in range(len(records))]
  return {"eval/accuracy": float(np.mean([task.is_correct(t, r)
                                         for t, r in zip(texts, records)]))}


def _saved(state: DistillState, rng: jax.Array) -> dict:
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "rng": rng}


def teacher_samples(s: Setup, workdir: Path, progress: bool) -> samples_lib.TeacherSamples:
  """The run's teacher samples: read from the cache, or sampled once and written there."""
  c = s.config
  path = Path(c.samples_cache) if c.samples_cache else workdir / "teacher_samples.parquet"
  meta = samples_lib.cache_meta(c, resolve.workdir_step(c.teacher))
  found = samples_lib.read(path, meta)
  if found is not None:
    return found.retokenized(s.student_tok, s.same_tokenizer)
  if s.teacher is None:
    s.teacher, _ = resolve.load_trained(c.teacher, c.dtype, s.mesh, s.rules)
  task, records = s.train
  teacher_tok = resolve.load_trained_tokenizer(c.teacher)
  prompts = [teacher_tok.encode_prompt(task.prompt(r), chat=c.chat) for r in records]
  out = samples_lib.sample(s.teacher.params, s.teacher.config, teacher_tok, prompts, c,
                           mesh=s.mesh, rules=s.rules, progress=progress)
  samples_lib.write(path, out, meta)
  return out.retokenized(s.student_tok, s.same_tokenizer)


def run(config, workdir: str | Path, progress: bool = True, stop_after: int | None = None
        ) -> dict:
  """Runs (or resumes) a distillation in `workdir`.

  Args:
    config: a ConfigDict (see `distill_config.base_config`).
    workdir: checkpoints, metrics, `run.json` and (by default) the teacher samples go here.
    progress: show progress bars.
    stop_after: end after this many steps of this process (tests of resuming).

  Returns:
    {"step": last step, "metrics": its metrics, "workdir": path}.
  """
  workdir = Path(workdir)
  config_lib.check(config)
  check_tokenizers(config)
  _records(config.train), _records(config.eval)  # bad data fails before the workdir is bound
  ckpt = RunCheckpoints(workdir, identity(config), keep=config.keep_checkpoints)
  s = setup(config, need_teacher=config.method != "sft")
  cache = None
  if s.share < 1.0:
    cache = teacher_samples(s, workdir, progress)
    if config.method == "sft":
      s.teacher = None  # SFT needs only the samples: free the teacher's memory
  state = initial_state(s)
  writer = metrics_lib.Writer(workdir, console=not progress)
  state, root, start = resume(ckpt, writer, state, _saved, config, s.mesh)
  bar = tqdm(total=config.steps, initial=start, desc=f"distill {config.method}", unit="step",
             disable=not progress or jax.process_index() != 0)
  last, done_here = {}, 0
  for step in range(start, config.steps):
    t0 = time.perf_counter()
    batch, info = batch_at(s, state, step, jax.random.fold_in(root, step), cache)
    t_batch = time.perf_counter() - t0
    state, m = _settle(s.train_step(state, batch))
    m = {f"train/{k}": float(v) for k, v in jax.device_get(m).items()}
    dt = time.perf_counter() - t0
    m.update({"batch/on_policy": float(info["on_policy"]),
              "batch/completion_tokens": float(np.mean(info["lengths"])),
              "time/step_s": dt, "time/batch_s": t_batch,
              "throughput/tokens_per_s": float(np.sum(info["lengths"])) / dt})
    done = step + 1
    if (config.eval_every and done % config.eval_every == 0) or done == config.steps:
      m.update(evaluate(s, state))
    if done % config.log_every == 0 or done == config.steps:
      writer.write_scalars(done, m)
    if done % config.checkpoint_every == 0 or done == config.steps:
      ckpt.save(done, _saved(state, root), {"step": done, "seed": config.seed,
                                            "data_position": done * config.prompts_per_step})
    bar.update(1)
    bar.set_postfix(loss=f"{m['train/loss']:.3g}")
    last = dict(step=done, metrics=m)
    done_here += 1
    if stop_after is not None and done_here >= stop_after:
      break
  bar.close()
  ckpt.close()
  writer.close()
  if not last:
    rows = metrics_lib.read_jsonl(workdir / "metrics.jsonl")
    if rows:
      last = dict(step=rows[-1]["step"], metrics=rows[-1])
  return dict(last, workdir=str(workdir))


def trained_student(workdir: str | Path, dtype: str | None = None, mesh=None,
                    rules=sharding_lib.DEFAULT_RULES, step: int | None = None) -> LoadedModel:
  """A distillation run's student (adapters merged), from its latest (or `step`) checkpoint.

  Args:
    workdir: the run's --workdir.
    dtype: of the returned weights (default: the run's).
    mesh, rules: place the weights on this mesh.
    step: the checkpoint (default: the latest).
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict(read_identity(workdir))
  model = load_student(c)  # in the run's dtype, which is what the checkpoint holds
  lcfg = _lora(c)
  shapes = jax.eval_shape(lambda: model.params)
  trainable = shapes if lcfg is None else jax.eval_shape(
      lambda: init_lora(shapes, lcfg, jax.random.PRNGKey(0)))
  params = resolve.restore_trained(workdir, c.to_dict(), trainable, "params", step)
  if lcfg is not None:
    params = step_lib.merged_params(model.params, params, cfg=model.config, lcfg=lcfg)
  cfg = model.config
  if dtype and dtype != cfg.dtype:
    params = jax.tree_util.tree_map(lambda x: x.astype(dtype), params)
    cfg = dataclasses.replace(cfg, dtype=dtype)
  if mesh is not None:
    shardings = sharding_lib.shardings_for(jax.eval_shape(lambda: params), param_axes(cfg),
                                           mesh, rules)
    params = jax.device_put(params, shardings)
  return dataclasses.replace(model, params=params, config=cfg)
