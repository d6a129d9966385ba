"""A calibration run's compiled programs, ahead of time, against abstract shapes: no weight is
read or allocated. Each program is lowered under the run's mesh with the shardings the trainer
gives its arguments, compiled by the backend, and its per-device buffers read from XLA's memory
analysis.

The programs of one calibration step: sampling (prefill and the decode loop with its KV cache),
rollout scoring (the base model's log-probs for the KL anchor; the sampling policy's too when
off policy), target scoring (the target's log-probs of the text, at most `rows_per_call` rows a call)
and the train step.

Shapes: P prompts, G rollouts per prompt, N = P·G rows, S prompt slots, T new tokens.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from kdknob_jax import sharding as sharding_lib
from kdknob_jax.calibration import step as step_lib
from kdknob_jax.calibration.config import CalibConfig
from kdknob_jax.decode import SamplingConfig
from kdknob_jax.decode.engine import batch_divisor, bucket, decode_layout, decode_program
from kdknob_jax.hf.load import config_of
from kdknob_jax.models import ModelConfig, abstract_params, head_of, param_axes
from kdknob_jax.models.lora import adapted, init_lora, lora_axes
from kdknob_jax.models.scoring import (call_rows, predictor_hidden, prompt_slot_count,
                                       realized_from_hidden, round_up)
from kdknob_jax.ops.head import auto_chunk
from kdknob_jax.train.batch import batch_sharding

PROGRAMS = ("sampling", "rollout_scoring", "target_scoring", "train_step")
# Every accelerator backend shares one chunk rule in `auto_chunk`; the plan is for one of them.
ACCELERATOR = "gpu"
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
  """Per-device bytes of one compiled program.

  Attributes:
    name: one of `PROGRAMS`.
    argument: its inputs (weights, adapters, optimizer state, batch, cache).
    output: its outputs.
    alias: outputs that reuse donated inputs' buffers.
    temp: XLA's temporaries (activations, saved residuals, gathered FSDP weights).
    resident_other: persistent arrays that are not its inputs but stay on the device while it
      runs (the other model's weights, the optimizer state).
  """
  name: str
  argument: int
  output: int
  alias: int
  temp: int
  resident_other: int

  @property
  def peak(self) -> int:
    """Everything live at once: inputs, temporaries, new outputs, the rest of the run."""
    return self.argument + self.temp + self.output - self.alias + self.resident_other

  def as_dict(self) -> dict[str, float]:
    gib = lambda b: round(b / GIB, 3)  # pylint: disable=unnecessary-lambda-assignment
    return {"argument_gib": gib(self.argument), "output_gib": gib(self.output),
            "alias_gib": gib(self.alias), "temp_gib": gib(self.temp),
            "resident_other_gib": gib(self.resident_other), "peak_gib": gib(self.peak)}




def device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
  total = 0
  for x in jax.tree_util.tree_leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
  return total


def _with(tree, shardings):
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _replicated(mesh, tree):
  rep = NamedSharding(mesh, PartitionSpec())
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                                tree)


@dataclasses.dataclass
class Plan:
  """The abstract state of one calibration run on a mesh, and its programs' memory.

  Build with `Plan.build(config, mesh)`; `prompts_per_step` may be overridden to plan another
  rollout batch.
  """
  config: CalibConfig
  mesh: Any
  rules: tuple
  teacher: ModelConfig
  target: ModelConfig
  prompt_slots: int
  state: step_lib.CalibState
  target_params: dict

  @classmethod
  def build(cls, config: CalibConfig, mesh, prompt_slots: int = 256) -> "Plan":
    rules = tuple(tuple(r) for r in config.rules) or sharding_lib.DEFAULT_RULES
    t_cfg = config_of(config.teacher, config.dtype)
    g_cfg = config_of(config.target, config.dtype)

    def sharded_params(cfg):
      shapes = abstract_params(cfg)
      return _with(shapes, sharding_lib.shardings_for(shapes, param_axes(cfg), mesh, rules))

    base = sharded_params(t_cfg)
    lcfg = config.lora.config()
    lora_shapes = jax.eval_shape(lambda: init_lora(base, lcfg, jax.random.PRNGKey(0)))
    lora = _with(lora_shapes, sharding_lib.shardings_for(
        lora_shapes, lora_axes(param_axes(t_cfg), lcfg), mesh, rules))
    opt = config.optimizer.make(config.steps * config.inner_updates)
    # Adam's moments take the adapters' shardings through propagation, as in the trainer.
    init = jax.jit(opt.init).lower(lora).compile()
    opt_state = _with(jax.eval_shape(opt.init, lora), init.output_shardings)
    opt_state = jax.tree_util.tree_map(
        lambda x: x if x.sharding.device_set == set(mesh.devices.flat)
        else _replicated(mesh, x), opt_state)
    step = _replicated(mesh, jax.ShapeDtypeStruct((), jnp.int32))
    state = step_lib.CalibState(step=step, lora=lora, opt_state=opt_state, base=base)
    return cls(config, mesh, rules, t_cfg, g_cfg, prompt_slots, state, sharded_params(g_cfg))

  def step_config(self, prompts_per_step: int | None = None) -> step_lib.StepConfig:
    """The trainer's step settings, with the head's chunk an accelerator would pick for this
    batch (the planner runs on the host CPU, whose own chunk rule differs: `auto_chunk`)."""
    c = step_lib.StepConfig.of(self.config)
    _, n = self.rows(prompts_per_step)
    rows = n * self.completion_slots
    return dataclasses.replace(c, chunk=c.chunk or auto_chunk(rows, self.teacher.vocab_size,
                                                              ACCELERATOR))

  @property
  def completion_slots(self) -> int:
    """T of the step's arrays, as `train.batch.layout` pads the new tokens."""
    return round_up(self.config.max_new_tokens, 16)

  def rows(self, prompts_per_step: int | None = None) -> tuple[int, int]:
    """(padded prompts, padded rows) of a step, as the trainer pads them."""
    p = prompts_per_step or self.config.prompts_per_step
    div = batch_divisor(self.mesh, self.rules)
    return round_up(p, div), round_up(p * self.config.group_size, div)

  def batch(self, prompts_per_step: int | None = None) -> dict:
    """The train step's abstract batch, rows over the batch axes."""
    p, n = self.rows(prompts_per_step)
    s = prompt_slot_count(self.prompt_slots, self.prompt_slots)  # a run's fixed slots
    t = self.completion_slots
    i32, f32 = jnp.int32, jnp.float32
    shapes = dict(prompts=((p, s), i32), prompt_pos=((p, s), i32), owner=((n,), i32),
                  completions=((n, t), i32), completion_pos=((n, t), i32), mask=((n, t), f32),
                  advantages=((n,), f32), old_logp=((n, t), f32), ref_logp=((n, t), f32))
    sh = batch_sharding(self.mesh, self.rules)
    return {k: jax.ShapeDtypeStruct(shape, dt, sharding=sh) for k, (shape, dt) in shapes.items()}

  def lowered(self, name: str, prompts_per_step: int | None = None):
    """(the lowered program `name`, the bytes of run state it does not take as input)."""
    return _LOWER[name](self, prompts_per_step)

  def memory(self, name: str, prompts_per_step: int | None = None) -> ProgramMemory:
    """Compiles program `name` and reads its per-device memory."""
    lowered, other = self.lowered(name, prompts_per_step)
    m = lowered.compile().memory_analysis()
    return ProgramMemory(name, int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                         int(m.alias_size_in_bytes), int(m.temp_size_in_bytes), other)


def _sampling(plan: Plan, prompts_per_step: int | None):
  c = plan.config
  p = bucket(prompts_per_step or c.prompts_per_step,
             multiple=batch_divisor(plan.mesh, plan.rules))
  s = bucket(plan.prompt_slots, 16)
  sds = lambda shape, dt: _replicated(plan.mesh, jax.ShapeDtypeStruct(shape, dt))  # pylint: disable=unnecessary-lambda-assignment
  params = adapted(plan.state.base, plan.state.lora, c.lora.config())
  lowered = decode_program().lower(
      params, sds((p, s), jnp.int32), sds((p,), jnp.int32), sds((p,), bool),
      sds((p,), jnp.int32), jax.eval_shape(lambda: jax.random.PRNGKey(0)), cfg=plan.teacher,
      n=c.group_size, max_new=c.max_new_tokens,
      sampling=SamplingConfig(c.temperature, c.top_k, c.top_p), stop_ids=(0,), pad_id=0,
      mesh=plan.mesh, rules=plan.rules, layout=decode_layout("auto", plan.mesh, plan.rules))
  return lowered, device_bytes((plan.target_params, plan.state.opt_state))


def _rollout_scoring(plan: Plan, prompts_per_step: int | None):
  lowered = jax.jit(step_lib.score_rollouts, static_argnames=(
      "cfg", "lcfg", "scfg", "mesh", "rules")).lower(
          plan.state, plan.batch(prompts_per_step), cfg=plan.teacher,
          lcfg=plan.config.lora.config(), scfg=plan.step_config(prompts_per_step), mesh=plan.mesh,
          rules=plan.rules)
  return lowered, device_bytes(plan.target_params)


def _target_scoring(plan: Plan, prompts_per_step: int | None):
  c, cfg = plan.config, plan.target
  # The trainer's calls: the step's P·G completions, at most `rows_per_call` a call.
  r = call_rows((prompts_per_step or c.prompts_per_step) * c.group_size, c.rows_per_call)
  p = 1 << (r - 1).bit_length()  # at most one prompt a row
  s = prompt_slot_count(plan.prompt_slots, plan.prompt_slots)
  t = plan.completion_slots
  def score(params, prompts, prompt_pos, owner, comps, comp_pos):
    hidden = predictor_hidden(params, cfg, prompts, prompt_pos, owner, comps, comp_pos)
    weight, spec = head_of(params, cfg)
    return realized_from_hidden(hidden.reshape(-1, cfg.hidden_size), weight,
                                comps.reshape(-1), spec=spec,
                                chunk=auto_chunk(r * t, cfg.vocab_size, ACCELERATOR))

  i32 = jnp.int32
  sds = jax.ShapeDtypeStruct
  lowered = jax.jit(score).lower(plan.target_params, sds((p, s), i32), sds((p, s), i32),
                                 sds((r,), i32), sds((r, t), i32), sds((r, t), i32))
  return lowered, device_bytes((plan.state.base, plan.state.lora, plan.state.opt_state))


def _train_step(plan: Plan, prompts_per_step: int | None):
  c = plan.config
  shardings = jax.tree_util.tree_map(lambda x: x.sharding, plan.state)
  opt = c.optimizer.make(c.steps * c.inner_updates)
  step = step_lib.make_train_step(plan.teacher, c.lora.config(),
                                  plan.step_config(prompts_per_step), opt, plan.mesh,
                                  plan.rules, state_shardings=shardings)
  key = _replicated(plan.mesh, jax.eval_shape(lambda: jax.random.PRNGKey(0)))
  lowered = step.lower(plan.state, plan.batch(prompts_per_step), key)
  return lowered, device_bytes(plan.target_params)


_LOWER: dict[str, Callable] = {"sampling": _sampling, "rollout_scoring": _rollout_scoring,
                               "target_scoring": _target_scoring, "train_step": _train_step}
