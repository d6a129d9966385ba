"""The calibration loop: reinforcement fine-tuning of the teacher's LoRA adapters.

Each step: sample G rollouts per prompt from the adapted teacher (our decoder), grade them,
score them under the adapted teacher and the base (jitted, on the mesh) and their text under
the target (its own tokenizer), combine the group-normalized rewards into advantages, and take
μ optimizer steps on the clipped surrogate. Every `checkpoint_every` steps the adapters,
optimizer state, step, data position and RNG go to the workdir; a restart with the same
command resumes there, and since the data order and every key derive from (seed, step), it
ends with the same metrics as an uninterrupted run.
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
from kdknob_jax.checkpoint import RunCheckpoints
from kdknob_jax.data import get_task, load_records
from kdknob_jax.decode import SamplingConfig
from kdknob_jax.decode.engine import _batch_divisor, generate_ids
from kdknob_jax.diagnostics.summary import wrong_trace_preference
from kdknob_jax.diagnostics.traps import score_sequences
from kdknob_jax.errors import ConfigError
from kdknob_jax.hf import load_config, load_model, load_tokenizer
from kdknob_jax.models import param_axes, param_count
from kdknob_jax.rl.lora import LoraConfig, init_lora, lora_axes, targets_from_names
from kdknob_jax.rl.objective import combine_advantages
from kdknob_jax.trainers import config as config_lib
from kdknob_jax.trainers import rollouts as rollouts_lib
from kdknob_jax.trainers import step as step_lib

_PROBE = "Calibrate 12,345 tokens: naïve café — ∑ ok?"


@dataclasses.dataclass
class Setup:
  """Everything a run needs besides its state: models, tokenizers, data, compiled functions."""
  config: object
  mesh: object
  rules: tuple
  teacher: object
  target: object
  teacher_tok: object
  target_tok: object
  same_vocab: bool
  train: tuple
  eval: tuple
  lcfg: LoraConfig
  scfg: step_lib.StepConfig
  optimizer: object
  train_step: object
  row_multiple: int
  prompt_slots: int
  target_prompt_slots: int


def _records(d):
  records = load_records(d.source, d.split or None, d.limit or None, d.offset)
  task = get_task(d.task)
  task.check_records(records, d.offset)
  if not records:
    raise ConfigError(f"{d.source} (offset {d.offset}) has no rows; fix the config's data.")
  return task, records


def setup(config) -> Setup:
  """Checks the config, data and tokenizers, then loads both models onto the mesh."""
  config_lib.check(config)
  train, evaluation = _records(config.train), _records(config.eval)
  mesh = sharding_lib.make_mesh(dict(config.mesh))
  rules = tuple(tuple(r) for r in config.rules) or sharding_lib.DEFAULT_RULES
  teacher_tok, target_tok = load_tokenizer(config.teacher), load_tokenizer(config.target)
  t_cfg, g_cfg = load_config(config.teacher), load_config(config.target)
  same_vocab = (t_cfg.vocab_size == g_cfg.vocab_size
                and teacher_tok.encode(_PROBE) == target_tok.encode(_PROBE))
  lcfg = LoraConfig(int(config.lora.rank), float(config.lora.alpha),
                    targets_from_names(config.lora.targets))
  scfg = step_lib.StepConfig(float(config.beta), float(config.epsilon),
                             float(config.epsilon_high), config.aggregation, int(config.chunk),
                             on_policy=config.inner_updates == 1)
  o = config.optimizer
  optimizer = step_lib.make_optimizer(o.lr, o.warmup_steps, o.clip, o.weight_decay, o.b1, o.b2)
  teacher = load_model(config.teacher, dtype=config.dtype, mesh=mesh, rules=rules)
  target = load_model(config.target, dtype=config.dtype, mesh=mesh, rules=rules)
  train_step = None  # compiled against the initial state's shardings (see `run`)
  row_multiple = _batch_divisor(mesh, rules)  # the decoder pads its rows the same way
  # Every step pads to the longest train prompt, so each program compiles once per run.
  task, records = train
  longest = max(len(teacher_tok.encode_prompt(task.prompt(r), chat=config.chat))
                for r in records)
  longest_target = max(len(target_tok.encode_prompt(task.prompt(r), chat=config.target_chat))
                       for r in records)
  return Setup(config, mesh, rules, teacher, target, teacher_tok, target_tok, same_vocab,
               train, evaluation, lcfg, scfg, optimizer, train_step, row_multiple,
               longest, longest_target)


def initial_state(s: Setup) -> step_lib.CalibState:
  """Step 0: zero-init adapters (the teacher is exactly the base) sharded like their weights;
  also compiles `s.train_step` for this state's shardings."""
  base = s.teacher.params
  shapes = jax.eval_shape(lambda: base)  # init reads shapes only; never capture the weights
  shardings = sharding_lib.shardings_for(
      jax.eval_shape(lambda: init_lora(shapes, s.lcfg, jax.random.PRNGKey(0))),
      lora_axes(param_axes(s.teacher.config), s.lcfg), s.mesh, s.rules)
  key = jax.random.fold_in(jax.random.PRNGKey(s.config.seed), 1)
  lora = _settle(jax.jit(lambda k: init_lora(shapes, s.lcfg, k), out_shardings=shardings)(key))
  opt_state = _settle(jax.jit(s.optimizer.init)(lora))
  state = step_lib.CalibState(step=replicate(jnp.zeros((), jnp.int32), s.mesh), lora=lora,
                              opt_state=opt_state, base=base)
  # Every leaf committed to the mesh: jit caches on committedness, and optax's step counters
  # come out of `init` on a single device.
  devices = set(s.mesh.devices.flat)
  state = jax.tree_util.tree_map(
      lambda x: x if x.committed and x.sharding.device_set == devices else replicate(x, s.mesh),
      state)
  # Pinning the step's output shardings to its inputs' keeps one compiled program for the run.
  s.train_step = step_lib.make_train_step(
      s.teacher.config, s.lcfg, s.scfg, s.optimizer, s.mesh, s.rules,
      state_shardings=jax.tree_util.tree_map(lambda x: x.sharding, state))
  return state


def replicate(x: jax.Array, mesh) -> jax.Array:
  """x on every device of the mesh (small values: step counters, keys)."""
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  sharding = NamedSharding(mesh, PartitionSpec())
  host = np.asarray(jax.device_get(x))
  return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def resume(ckpt: RunCheckpoints, writer, state, saved, config, mesh):
  """(state, root key, first step): restored from the workdir's latest checkpoint (metrics
  past it dropped), or the initial state and a fresh key (hparams written). Every key of the
  run derives from the root key and the step. `saved(state, root)` is the checkpoint tree."""
  root = replicate(jax.random.PRNGKey(config.seed), mesh)
  if ckpt.latest_step() is None:
    writer.write_hparams(config_lib.flat_hparams(config))
    return state, root, 0
  restored, meta = ckpt.restore(saved(state, root))
  root = restored.pop("rng")
  start = int(meta["step"])
  writer.truncate_after(start)
  return state.replace(**restored), root, start


def _saved(state: step_lib.CalibState, rng: jax.Array) -> dict:
  return {"step": state.step, "lora": state.lora, "opt_state": state.opt_state, "rng": rng}


def identity(config) -> dict:
  """The settings a workdir is bound to (see `config.IDENTITY_KEYS`)."""
  d = config.to_dict()
  return {k: d[k] for k in config_lib.IDENTITY_KEYS}


def rollout_step(s: Setup, state: step_lib.CalibState, step: int, key: jax.Array):
  """Samples, grades and scores one step's rollouts.

  Returns:
    (device batch for the train step, host info dict with rewards and texts).
  """
  c = s.config
  task, records = s.train
  idx = rollouts_lib.data_indices(step, c.prompts_per_step, len(records), c.seed)
  recs = [records[int(i)] for i in idx]
  prompts = [task.prompt(r) for r in recs]
  ids = [s.teacher_tok.encode_prompt(p, chat=c.chat) for p in prompts]
  params = _settle(step_lib.merged_params(state.base, state.lora, cfg=s.teacher.config,
                                          lcfg=s.lcfg, mesh=s.mesh, rules=s.rules))
  gen = generate_ids(params, s.teacher.config, ids, n=c.group_size,
                     max_new_tokens=c.max_new_tokens,
                     sampling=SamplingConfig(c.temperature, c.top_k, c.top_p),
                     stop_ids=s.teacher_tok.eos_ids if c.stop_at_eos else (), key=key,
                     prompt_ids=idx, pad_id=_pad_id(s.teacher_tok), prompt_slots=s.prompt_slots,
                     mesh=s.mesh, rules=s.rules)
  del params
  ro = rollouts_lib.layout(ids, gen, s.teacher_tok, s.row_multiple, s.prompt_slots,
                           c.max_new_tokens)
  n = len(ro.texts)
  correct = np.array([task.is_correct(ro.texts[r], recs[int(ro.prompt_of[r])])
                      for r in range(n)], bool)
  host = dict(ro.arrays)
  zeros = np.zeros(host["mask"].shape, np.float32)
  host.update(advantages=np.zeros(host["mask"].shape[0], np.float32), old_logp=zeros,
              ref_logp=zeros)
  batch = step_lib.to_device(host, s.mesh, s.rules)
  old, ref = _settle(step_lib.score_rollouts(state, batch, cfg=s.teacher.config, lcfg=s.lcfg,
                                             scfg=s.scfg, mesh=s.mesh, rules=s.rules))
  if s.scfg.on_policy:  # the decoder's untempered log-probs of the tokens it sampled
    logp_teacher = np.array([gen.model_logprobs[r, :int(gen.lengths[r])].astype(np.float64).sum()
                             for r in range(n)])
  else:
    old_host = np.asarray(jax.device_get(old) if old.is_fully_addressable else
                          _allgather(old), np.float64)
    logp_teacher = (old_host * host["mask"]).sum(axis=1)[:n]
  if c.lam:
    logp_target = rollouts_lib.target_logprobs(
        (s.target.params, s.target.config), s.target_tok, prompts, ro, c.target_chat,
        c.rows_per_call, s.target_prompt_slots, c.max_new_tokens)
  else:  # λ = 0: plain task RL, the target is only scored at evaluations
    logp_target = logp_teacher.copy()
  r_task = correct.astype(np.float64)
  r_cal = logp_target - logp_teacher
  adv = np.asarray(combine_advantages(
      {"task": r_task, "cal": r_cal}, {"task": c.task_weight, "cal": c.lam}, c.group_size,
      c.renormalize))
  full_adv = np.zeros(host["mask"].shape[0], np.float32)
  full_adv[:n] = adv
  batch.update(step_lib.to_device({"advantages": full_adv}, s.mesh, s.rules))
  batch.update(old_logp=old, ref_logp=ref)
  info = dict(correct=correct, r_task=r_task, r_cal=r_cal, adv=adv, logp_teacher=logp_teacher,
              logp_target=logp_target, lengths=ro.lengths, stopped=ro.stopped,
              prompt_of=ro.prompt_of, texts=ro.texts, prompts=prompts, ids=ids, gen=gen)
  return batch, info


def _pad_id(tok) -> int:
  return tok.pad_id if tok.pad_id is not None else tok.eos_ids[0]


def _settle(x):
  """Waits for x. One sharded program at a time: on XLA:CPU, two programs in flight whose
  collectives span the same simulated devices can starve each other's threads on a few cores
  (a deadlock we hit with 8 devices on 2 cores); the cost is a little host/device overlap."""
  return jax.block_until_ready(x)


def _allgather(x):
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(x, tiled=True)


def rollout_metrics(info: dict) -> dict[str, float]:
  """Per-step scalars of the rewards and the trap metrics against the target."""
  pref = wrong_trace_preference(info["r_cal"], info["correct"], info["prompt_of"])
  seq_rkl = info["logp_teacher"] - info["logp_target"]
  return {
      "reward/task": float(np.mean(info["r_task"])),
      "reward/cal": float(np.mean(info["r_cal"])),
      "reward/cal_std": float(np.std(info["r_cal"])),
      "advantage/mean": float(np.mean(info["adv"])),
      "advantage/std": float(np.std(info["adv"])),
      "advantage/abs_max": float(np.max(np.abs(info["adv"]))),
      "logp/teacher": float(np.mean(info["logp_teacher"])),
      "logp/target": float(np.mean(info["logp_target"])),
      # On the teacher's samples: the k1 estimate of KL(teacher‖target) per sequence.
      "trap/seq_kl_teacher_target": float(np.mean(seq_rkl)),
      "trap/wrong_trace_preference": pref["share"],
      "trap/wrong_trace_pairs": float(pref["pairs"]),
      "rollout/completion_tokens": float(np.mean(info["lengths"])),
      "rollout/stopped": float(np.mean(info["stopped"])),
  }


def evaluate(s: Setup, state: step_lib.CalibState, info: dict | None) -> dict[str, float]:
  """Greedy held-out accuracy of the adapted teacher and, when the target shares its
  tokenizer, the token-level KL(target‖teacher) per token on the step's rollouts."""
  c = s.config
  task, records = s.eval
  params = _settle(step_lib.merged_params(state.base, state.lora, cfg=s.teacher.config,
                                          lcfg=s.lcfg, mesh=s.mesh, rules=s.rules))
  ids = [s.teacher_tok.encode_prompt(task.prompt(r), chat=c.chat) for r in records]
  gen = generate_ids(params, s.teacher.config, ids, n=1,
                     max_new_tokens=c.eval.max_new_tokens or c.max_new_tokens,
                     sampling=SamplingConfig(0.0), stop_ids=s.teacher_tok.eos_ids,
                     pad_id=_pad_id(s.teacher_tok),
                     mesh=s.mesh, rules=s.rules)
  texts = [s.teacher_tok.decode(gen.row_tokens(r)) for r in range(len(records))]
  out = {"eval/accuracy": float(np.mean([task.is_correct(t, r)
                                         for t, r in zip(texts, records)]))}
  if s.same_vocab and info is not None:
    gen_r = info["gen"]
    seqs = [(info["ids"][int(gen_r.prompt_index[r])], gen_r.row_tokens(r))
            for r in range(gen_r.tokens.shape[0])]
    scores = score_sequences((s.target.params, s.target.config), (params, s.teacher.config),
                             seqs, ks=(1,), direction="rkl", rows_per_call=c.rows_per_call)
    out["trap/token_kl_target_teacher"] = float(scores.rkl.sum() / max(scores.lengths.sum(), 1))
  return out


def step_flops(s: Setup, info: dict) -> float:
  """Matmul FLOPs of one step (sampling, scoring, target scoring, μ updates), for MFU."""
  c, tc, gc = s.config, s.teacher.config, s.target.config
  n_t = param_count(tc) - tc.vocab_size * tc.hidden_size  # the embedding lookup is no matmul
  n_g = param_count(gc) - gc.vocab_size * gc.hidden_size
  if tc.tie_embeddings:
    n_t += tc.vocab_size * tc.hidden_size
  if gc.tie_embeddings:
    n_g += gc.vocab_size * gc.hidden_size
  comp = float(np.sum(info["lengths"]))
  prompt = float(sum(len(p) for p in info["ids"]))
  ctx = float(np.mean([len(p) for p in info["ids"]])) + c.max_new_tokens / 2
  fwd = metrics_lib.decoder_flops_per_token(n_t, tc.num_layers, tc.hidden_size, ctx)
  # The step differentiates through the merged weights W + (α/r)·A·B, so it computes the full
  # weight gradient dW (then projects it onto A and B): a backward with weight gradients.
  bwd = metrics_lib.decoder_flops_per_token(n_t, tc.num_layers, tc.hidden_size, ctx,
                                            backward=True, weight_grads=True)
  tgt = metrics_lib.decoder_flops_per_token(n_g, gc.num_layers, gc.hidden_size, ctx)
  # Scoring: the base for the KL anchor, and the sampling policy only off policy (μ > 1).
  scored = int(bool(c.beta)) + int(c.inner_updates > 1)
  return ((prompt + comp) * fwd + (prompt + comp) * fwd * scored
          + (prompt + comp) * bwd * c.inner_updates + (prompt + comp) * tgt * bool(c.lam))


def run(config, workdir: str | Path, progress: bool = True, stop_after: int | None = None
        ) -> dict:
  """Runs (or resumes) a calibration in `workdir`.

  Args:
    config: a ConfigDict from `configs/*distill.py`.
    workdir: checkpoints, metrics (`metrics.jsonl`, TensorBoard) and `run.json` go here.
    progress: show a progress bar.
    stop_after: end after this many steps of this process, as if killed right after that
      step's checkpoint was written (for tests of resuming).

  Returns:
    {"step": last step, "metrics": its metrics, "workdir": path}.
  """
  workdir = Path(workdir)
  config_lib.check(config)
  ckpt = RunCheckpoints(workdir, identity(config), keep=config.keep_checkpoints)
  s = setup(config)
  state = initial_state(s)
  writer = metrics_lib.Writer(workdir, console=not progress)
  state, root, start = resume(ckpt, writer, state, _saved, config, s.mesh)
  peak = config.peak_flops or metrics_lib.device_peak_flops()
  n_dev = len(s.mesh.devices.flat)
  bar = tqdm(total=config.steps, initial=start, desc="calibrate", unit="step",
             disable=not progress or jax.process_index() != 0)
  last = {}
  done_here = 0
  for step in range(start, config.steps):
    t0 = time.perf_counter()
    key = jax.random.fold_in(root, step)
    batch, info = rollout_step(s, state, step, jax.random.fold_in(key, 0))
    t_roll = time.perf_counter() - t0
    for inner in range(config.inner_updates):
      state, m = _settle(s.train_step(state, batch, jax.random.fold_in(key, 1 + inner)))
    m = {f"train/{k}": float(v) for k, v in jax.device_get(m).items()}
    dt = time.perf_counter() - t0
    m.update(rollout_metrics(info))
    m.update({"time/step_s": dt, "time/rollout_s": t_roll,
              "throughput/tokens_per_s": float(np.sum(info["lengths"])) / dt})
    if peak:
      m["throughput/mfu"] = step_flops(s, info) / (dt * n_dev * peak)
    done = step + 1
    if (config.eval_every and done % config.eval_every == 0) or done == config.steps:
      m.update(evaluate(s, state, info))
    if done % config.log_every == 0 or done == config.steps:
      writer.write_scalars(done, m)
    if done % config.checkpoint_every == 0 or done == config.steps:
      ckpt.save(done, _saved(state, root), {"step": done, "data_position": done *
                                      config.prompts_per_step, "seed": config.seed})
    bar.update(1)
    bar.set_postfix(acc=f"{m['reward/task']:.2f}", r_cal=f"{m['reward/cal']:.2f}",
                    kl=f"{m['train/kl']:.3g}")
    last = dict(step=done, metrics=m)
    done_here += 1
    if stop_after is not None and done_here >= stop_after:
      break
  bar.close()
  ckpt.close()
  writer.close()
  if not last:  # the workdir's run had already reached config.steps: report where it ended
    rows = metrics_lib.read_jsonl(workdir / "metrics.jsonl")
    if rows:
      last = dict(step=rows[-1]["step"], metrics=rows[-1])
  return dict(last, workdir=str(workdir))
